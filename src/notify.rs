//! The daemon's life cycle, as the service manager and probes see it.
//!
//! [`Lifecycle`] holds the phase (starting → serving → draining) that `GET /ready` answers
//! from, and tells systemd the same through sd_notify(3) when `NOTIFY_SOCKET` is set
//! (`Type=notify`; without the variable every call is a no-op):
//!
//! - `READY=1` once every listener, the certificates, the restored state and the admin
//!   socket are up (after a `--takeover`, with `MAINPID=` of the new process, so that the
//!   unit follows it; the unit needs `NotifyAccess=all` for that);
//! - `RELOADING=1` (with `MONOTONIC_USEC=`) when a reload starts, `READY=1` when it ends,
//!   whatever its outcome (a failed reload keeps the old config: the daemon is ready);
//! - `STOPPING=1` when the drain starts (not in a daemon that handed over to a successor);
//! - `STATUS=` with the generation, green's share and the rollout phase, at ready and after
//!   every change of the route table;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` from a task on the daemon's own runtime: a
//!   runtime that stops polling its tasks stops the pings, and systemd restarts the unit.
//!
//! A daemon that handed its sockets over (`--takeover`) goes quiet: no STATUS, watchdog
//! pings or STOPPING from it, since its successor is the service now.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Binding, loading certificates and state.
    Starting,
    /// Every listener accepts.
    Serving,
    /// Shutting down: no new connections, in-flight requests finish.
    Draining,
}

/// The phase, shared by the daemon and its HTTP read API.
#[derive(Debug)]
pub struct Lifecycle {
    phase: AtomicU8,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Everything is up: `READY=1` with `status`; `took_over` adds `MAINPID=` of this process.
    pub fn serving(&self, status: &str, took_over: bool) {
        self.phase.store(Phase::Serving as u8, Ordering::Release);
        let pid = std::process::id();
        let mut states = vec![NotifyState::Ready, NotifyState::Status(status)];
        if took_over {
            states.insert(0, NotifyState::MainPid(pid));
        }
        send(&states);
    }

    /// The drain begins; `STOPPING=1` when `tell` (not after a hand-over: the successor
    /// is the service now).
    pub fn draining(&self, tell: bool) {
        self.phase.store(Phase::Draining as u8, Ordering::Release);
        if tell {
            send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        }
    }
}

/// `RELOADING=1` now, `READY=1` when dropped (the reload is over, applied or not).
pub struct Reloading(());

impl Reloading {
    pub fn begin() -> Reloading {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
        Reloading(())
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        send(&[NotifyState::Ready]);
    }
}

/// `STATUS=` text for a `status` reply: `generation 7, green 10%, rollout progressing`.
pub fn status_line(status: &Value) -> String {
    let generation = status["generation"].as_u64().unwrap_or(0);
    let green = status["green_percent"].as_f64().unwrap_or(0.0);
    let phase = status["rollout"]["phase"].as_str().unwrap_or("idle");
    format!("generation {generation}, green {green}%, rollout {phase}")
}

/// Sends `STATUS=` after every published change (route events) until `shutdown`.
pub async fn follow_status(
    control: std::sync::Arc<crate::control::Control>,
    shutdown: CancellationToken,
) {
    if !enabled() {
        return;
    }
    let mut events = control.subscribe();
    loop {
        tokio::select! {
            r = events.recv() => match r {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if control.superseded_by().is_some() {
                        // The successor speaks for the service now.
                        return;
                    }
                    let line = status_line(&control.status());
                    send(&[NotifyState::Status(&line)]);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Pings the watchdog every half `WATCHDOG_USEC` while the runtime runs; returns at once
/// when the service manager asked for no watchdog, and stops once this daemon handed over
/// (its pings would vouch for the successor, which pings for itself).
pub async fn watchdog(
    control: std::sync::Arc<crate::control::Control>,
    shutdown: CancellationToken,
) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (timeout / 2).max(Duration::from_millis(1));
    info!(
        timeout_ms = timeout.as_millis() as u64,
        "systemd watchdog on: pinging every half timeout"
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if control.superseded_by().is_some() {
                    return;
                }
                send(&[NotifyState::Watchdog]);
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    // Datagrams to a local socket: an error means nobody listens; the daemon goes on.
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}
