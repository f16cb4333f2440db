//! DATA PLANE: how a connection closes, on shutdown or when a pool drains. One type,
//! [`Closing`], for both the parked HTTP/1.1 path ([`super::h1`]) and the hyper path
//! ([`super::serve`]).
//!
//! The way out is gentle, so that no request is lost to a keep-alive race: a drain first
//! waits a random share of `proxy.drain_window` (connections close spread out, not all at
//! once), shutdown waits for nothing; then an HTTP/2 connection gets GOAWAY, and an
//! HTTP/1.1 connection answers its current or next request with `Connection: close` and is
//! closed after it, or after [`LINGER`] if it stays idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::route::DrainSignal;
use crate::proxy::service::CloseFlags;

/// How long an HTTP/1.1 connection that is being closed may stay idle waiting for one more
/// request (answered with `Connection: close`) before it is closed while idle.
pub const LINGER: Duration = Duration::from_secs(1);

/// Where a connection is on its way out.
#[derive(Clone, Copy)]
enum Phase {
    Serving,
    /// Asked to close; starts closing at this instant.
    Waiting(Instant),
    /// Responses carry `Connection: close`; closed when idle from this instant.
    Lingering(Instant),
    /// Closing for good: hyper's graceful shutdown is under way, or an HTTP/1.1
    /// connection closes as soon as it is idle.
    Graceful,
}

/// What woke a connection waiting on [`Closing::signal`].
pub(super) enum Signal {
    /// The proxy is shutting down.
    Stop,
    /// A pool drains (`Ok`), or the drain channel closed (`Err`).
    Drain(Result<(), watch::error::RecvError>),
}

/// A connection's closing phase and the two signals that start it: shutdown and drains.
pub(super) struct Closing {
    phase: Phase,
    stop: watch::Receiver<bool>,
    /// A clone of `stop`, only asked whether a change is pending (see [`Gated`]).
    stop_probe: watch::Receiver<bool>,
    stopping: bool,
    drains: watch::Receiver<DrainSignal>,
    drains_probe: watch::Receiver<DrainSignal>,
    drains_open: bool,
}

impl Closing {
    pub(super) fn new(stop: watch::Receiver<bool>, drains: watch::Receiver<DrainSignal>) -> Self {
        Closing {
            phase: Phase::Serving,
            stop_probe: stop.clone(),
            stop,
            stopping: false,
            drains_probe: drains.clone(),
            drains,
            drains_open: true,
        }
    }

    /// Closing for good: nothing more is served once idle.
    pub(super) fn graceful(&self) -> bool {
        matches!(self.phase, Phase::Graceful)
    }

    /// When the phase moves on by itself.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting(t) | Phase::Lingering(t) => Some(t),
            Phase::Serving | Phase::Graceful => None,
        }
    }

    /// Waits for shutdown or a drain, for as long as either can still change the phase.
    /// A busy connection's task is woken several times per request: the signals are
    /// polled only when an atomic load says they may have fired (see [`Gated`]).
    pub(super) async fn signal(&mut self) -> Signal {
        let Closing {
            phase,
            stop,
            stop_probe,
            stopping,
            drains,
            drains_probe,
            drains_open,
        } = self;
        let serving = matches!(phase, Phase::Serving);
        tokio::select! {
            // In order: no random start, which would cost a draw per poll.
            biased;
            _ = Gated::new(stop.changed(), || stop_probe.has_changed().unwrap_or(true)),
                if !*stopping => Signal::Stop,
            changed = Gated::new(drains.changed(), || drains_probe.has_changed().unwrap_or(true)),
                if *drains_open && serving => Signal::Drain(changed),
            // Neither can change the phase any more.
            else => std::future::pending().await,
        }
    }

    /// Takes in what [`Closing::signal`] returned.
    pub(super) fn seen(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Stop => self.stop_now(now),
            Signal::Drain(Ok(())) => self.drain(now),
            Signal::Drain(Err(_)) => self.drains_open = false,
        }
    }

    /// Looks for a pending signal without waiting (a busy HTTP/1.1 connection does this
    /// at its periodic check instead of waiting on the signals).
    pub(super) fn look(&mut self, now: Instant) {
        if !self.stopping && self.stop.has_changed().unwrap_or(true) {
            self.stop_now(now);
        }
        if self.drains_open && matches!(self.phase, Phase::Serving) {
            match self.drains.has_changed() {
                Ok(true) => self.drain(now),
                Ok(false) => {}
                Err(_) => self.drains_open = false,
            }
        }
    }

    /// Shutdown: closing starts now, unless it is already under way.
    fn stop_now(&mut self, now: Instant) {
        self.stopping = true;
        if matches!(self.phase, Phase::Serving | Phase::Waiting(_)) {
            self.phase = Phase::Waiting(now);
        }
    }

    /// A drain: closing starts at a random moment within its window.
    fn drain(&mut self, now: Instant) {
        let window = self.drains.borrow_and_update().window;
        self.phase = Phase::Waiting(now + window.mul_f64(fastrand::f64()));
    }

    /// Whether the phase's deadline has come.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|t| now >= t)
    }

    /// Moves to the next phase (its deadline has come): responses start to carry
    /// `Connection: close`, then the connection closes. Returns true when it has just
    /// become [`Phase::Graceful`], for the caller to start hyper's graceful shutdown.
    pub(super) fn advance(&mut self, now: Instant, flags: &CloseFlags) -> bool {
        self.phase = match self.phase {
            Phase::Waiting(_) => {
                flags.closing.store(true, Ordering::Relaxed);
                if flags.h2.load(Ordering::Relaxed) {
                    Phase::Graceful
                } else {
                    Phase::Lingering(now + LINGER)
                }
            }
            Phase::Lingering(_) => Phase::Graceful,
            Phase::Serving | Phase::Graceful => return false,
        };
        self.graceful()
    }
}

pin_project! {
    /// A wake-up signal that a busy connection's task polls only when it may have fired.
    ///
    /// Polling a registered `Notified` (what `watch::Receiver::changed` waits on) takes the
    /// mutex of a `Notify` that every connection shares, and a busy connection's task is
    /// woken several times per request. The first poll registers the task's waker; after
    /// that the inner future is polled only when `fired()` (an atomic load) says so. The
    /// task's waker does not change between polls, so the registration stays valid.
    struct Gated<F, C> {
        #[pin]
        inner: F,
        fired: C,
        registered: bool,
    }
}

impl<F, C> Gated<F, C> {
    fn new(inner: F, fired: C) -> Self {
        Gated {
            inner,
            fired,
            registered: false,
        }
    }
}

impl<F: Future, C: Fn() -> bool> Future for Gated<F, C> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if *this.registered && !(this.fired)() {
            return Poll::Pending;
        }
        *this.registered = true;
        this.inner.poll(cx)
    }
}
