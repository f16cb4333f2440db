//! DATA PLANE: accept loops. Each accepted connection takes a permit of the connection
//! limit, gets its own task, and is served HTTP/1.1 or HTTP/2 (prior knowledge) by hyper.
//! On shutdown the loop stops accepting and every connection is asked to finish gracefully;
//! when a pool drains, open connections are closed gradually (see [`Acceptor::serve_io`]).
//!
//! A plain HTTP/1.1 connection that stays idle is parked ([`Acceptor::serve_plain`]): the
//! codec, with its read and write buffers, is dropped and the task keeps only the socket
//! until the client sends again. Ten thousand idle keep-alive clients then cost little
//! more than their sockets.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::Rejection;
use crate::proxy::edge::record::TracedBody;
use crate::proxy::edge::ListenerIndex;
use crate::proxy::service::{handle, Conn, PlainIo, Shared, Upgrades};
use crate::proxy::sniff::{FramingVerdict, SniffIo};
use crate::proxy::tls::TlsTerminator;

/// Everything an accept loop needs, shared by all listeners of one proxy.
pub struct Acceptor {
    pub shared: Arc<Shared>,
    pub builder: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 on plain TCP, where idle connections are parked.
    pub h1: http1::Builder,
    /// `proxy.timeouts.header_read`: the first request head of a connection.
    pub header_read: Duration,
    /// `proxy.timeouts.idle`: an HTTP/1.1 keep-alive connection between requests.
    pub idle: Duration,
    pub limit: Arc<Semaphore>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// `shutdown` as a watch (true once cancelled; see [`stop_signal`]): what connections
    /// wait on, since it can be checked with an atomic load (the token takes a mutex).
    pub stopping: watch::Receiver<bool>,
}

/// A watch that turns true once `shutdown` is cancelled. Its sender lives in a task that
/// waits on the token once, for all connections.
pub fn stop_signal(shutdown: &CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {
                tx.send_replace(true);
                // Kept open until the proxy is gone, so that receivers see the change
                // and not a closed channel.
                tx.closed().await;
            }
            _ = tx.closed() => {}
        }
    });
    rx
}

pin_project! {
    /// A wake-up signal that a busy connection's task polls only when it may have fired.
    ///
    /// Polling a registered `Notified` (what `watch::Receiver::changed` and
    /// `CancellationToken::cancelled` wait on) takes the mutex of a `Notify` that every
    /// connection shares, and a busy connection's task is woken several times per request.
    /// The first poll registers the task's waker; after that the inner future is polled only
    /// when `fired()` (an atomic load) says so. The task's waker does not change between
    /// polls, so the registration stays valid.
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

/// The hyper server settings from the config: limits, header timeout, HTTP/2 keep-alive.
pub fn server_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &cfg.proxy.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own ceilings sit above ours so that the proxy, not the codec, answers most
    // oversize heads (with the constitutional hash header and a counted reason).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.proxy.timeouts.header_read)
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
        .max_headers(limits.max_headers * 2)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(cfg.proxy.timeouts.idle / 2))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// The hyper HTTP/1.1 settings for plain-TCP connections: the HTTP/1.1 half of
/// [`server_builder`], except that the connection task keeps the header deadline (hyper's
/// would arm a timer per request) and hands upgrades over.
pub fn h1_builder(cfg: &Config) -> http1::Builder {
    let limits = &cfg.proxy.limits;
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
        .max_headers(limits.max_headers * 2)
        .keep_alive(true);
    builder
}

impl Acceptor {
    /// Accepts plain-TCP connections until shutdown.
    pub async fn run_plain(self: Arc<Self>, listener: TcpListener) {
        // The connection's future is `serve_plain`'s own, with no wrapper around it: every
        // async layer keeps its own copy of the arguments, and this future is held by
        // every idle connection.
        self.accept_loop(listener, |this, stream, peer| {
            this.serve_plain(stream, peer)
        })
        .await;
    }

    /// Accepts TLS connections until shutdown; the handshake has its own deadline.
    /// `index` is the listener's [`ListenerIndex`] (its `[[proxy.tls]]` position + 1).
    pub async fn run_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<TlsTerminator>,
        index: ListenerIndex,
    ) {
        self.accept_loop(listener, move |this, stream, peer| {
            let tls = tls.clone();
            async move {
                let _ = stream.set_nodelay(true);
                let handshake =
                    tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        let framing = FramingVerdict::new();
                        let _active = ActiveConn::new(&this.shared.metrics);
                        this.serve_io(
                            SniffIo::new(stream, framing.clone()),
                            framing,
                            peer,
                            "https",
                            index,
                        )
                        .await;
                    }
                    Ok(Err(e)) => warn!(client.addr = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(client.addr = %peer, "TLS handshake timed out"),
                }
            }
        })
        .await;
    }

    /// The accept loop: a connection permit first, then accept, then a task per connection.
    async fn accept_loop<F, Fut>(self: Arc<Self>, listener: TcpListener, per_conn: F)
    where
        F: Fn(Arc<Self>, TcpStream, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return, // semaphore closed: shutting down
                },
                _ = self.shutdown.cancelled() => return,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = self.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    // `map`, not `async move { work.await; .. }`: an async block keeps the
                    // future it captured and the one it awaits in separate slots, which
                    // doubled every connection task (tests/idle_memory.rs).
                    let work = per_conn(self.clone(), stream, peer).map(move |()| drop(permit));
                    self.tracker.spawn(work);
                }
                Err(e) => {
                    // EMFILE and friends: wait rather than spin; the backlog holds the clients.
                    self.shared.metrics.accept_errors.increment(1);
                    warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Serves a plain HTTP/1.1 connection to its end, parking it whenever it is idle.
    ///
    /// A check runs every [`PARK_AFTER`] (or a quarter of `header_read` or `idle`, if
    /// shorter); it notices shutdown while the codec runs (a parked connection is woken by
    /// it), and it closes a connection whose request head stays incomplete for
    /// `header_read` (counted as `header_timeout`, like the codec's own timer). When
    /// nothing was read since the previous check and the connection is idle (between
    /// requests, every response finished, nothing left to write: [`FramingVerdict::is_idle`]),
    /// the codec's next read reports end of stream; an idle codec takes that as a quiet
    /// close and returns the socket (`without_shutdown`) with any bytes it read but did not
    /// use. The task then holds just the socket until it is readable, and starts a new codec
    /// on it. A connection idle for `proxy.timeouts.idle` in all is closed. Nothing is
    /// written while parking, so a client never sees the difference. (The codec's own
    /// `header_read` timer never sees an idle connection: it is parked well before.)
    ///
    /// A new connection starts parked: no buffer until its first bytes, which must come
    /// within `header_read`. If they begin a prior-knowledge HTTP/2 preface, the connection
    /// goes to [`Acceptor::serve_io`] instead.
    ///
    /// The codec runs without upgrade support: a switched-protocol response leaves a
    /// channel in the connection ([`Upgrades::Manual`]), and the stream goes down it to
    /// the tunnel when the codec hands it back.
    async fn serve_plain(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let proto = "http";
        let _ = stream.set_nodelay(true);
        let _active = ActiveConn::new(&self.shared.metrics);
        let metrics = &self.shared.metrics;
        let accepted = Instant::now();
        let framing = FramingVerdict::new();
        let conn = Arc::new(Conn::new(
            self.shared.clone(),
            framing.clone(),
            peer,
            proto,
            0,
            Upgrades::Manual(Mutex::new(None)),
        ));
        let service = request_service(conn.clone());
        let check_every = (self.header_read.min(self.idle) / 4).min(PARK_AFTER);
        // The codec, boxed (dropped while parked); it ends with the stream, the bytes it
        // read but did not use put back in front.
        let start = |io: PlainIo| {
            Box::pin(
                self.h1
                    .serve_connection(TokioIo::new(io), service.clone())
                    .without_shutdown()
                    .map(|ended| {
                        ended.map(|parts| {
                            let mut io = parts.io.into_inner();
                            io.put_back(parts.read_buf);
                            io
                        })
                    }),
            )
        };
        let mut parked = Some(SniffIo::new(stream, framing.clone()));
        let mut served = nothing_from(&start);
        // No request has started yet: the first bytes are due within `header_read`, and
        // they may be an HTTP/2 preface.
        let mut fresh = true;
        // The partial request head the checks are timing: (complete heads before it, seen at).
        let mut head_since: Option<(u64, Instant)> = None;
        let mut drains = self.shared.routes.drain_signals();
        let mut drains_open = true;
        let mut stop = self.stopping.clone();
        let mut stopping = false;
        let mut phase = Phase::Serving;
        let mut reads = framing.reads();
        let mut active_at = accepted;
        let tick = tokio::time::sleep(check_every);
        tokio::pin!(tick);
        // The loop's value says what is left to do with the stream (a FIN, the HTTP/2
        // path); that is awaited after it, so the loop's own values need no room meanwhile.
        let end = loop {
            let event = if let Some(codec) = served.as_mut() {
                // No shutdown arm here: this select is polled on every wake of a busy
                // connection, and each poll of a registered signal takes a mutex shared
                // by all connections (see `Gated`). The check below reads the signal
                // instead, at most `check_every` late.
                tokio::select! {
                    r = codec.as_mut() => PlainEvent::Ended(r),
                    _ = tick.as_mut() => PlainEvent::Check,
                }
            } else if let Some(io) = parked.as_ref().filter(|io| !io.has_unread()) {
                tokio::select! {
                    // `poll_read_ready` keeps its waker in the socket's registration;
                    // `readable()` would hold a waiter node in this (long-lived) future.
                    r = std::future::poll_fn(|cx| io.get_ref().poll_read_ready(cx)) => {
                        PlainEvent::Readable(r)
                    }
                    _ = tick.as_mut() => PlainEvent::Check,
                    _ = stop.changed(), if !stopping => PlainEvent::Stop,
                    changed = drains.changed(), if drains_open && matches!(phase, Phase::Serving) => {
                        drains_open = changed.is_ok();
                        PlainEvent::Check
                    }
                }
            } else {
                // Parked with bytes the codec read but did not use: serve them now.
                PlainEvent::Readable(Ok(()))
            };
            let now = Instant::now();
            let woken_by_stop = matches!(event, PlainEvent::Stop);
            match event {
                PlainEvent::Ended(Ok(io)) => {
                    served = None;
                    if let Some(tunnel) = conn.upgrades.take_pending() {
                        let _ = tunnel.send(io);
                        break PlainEnd::Close;
                    }
                    if !framing.take_eof() {
                        // The client closed, or the last response closed the connection:
                        // the codec has flushed it, and closing the socket sends the FIN
                        // after it (a `shutdown` first would be one more system call for
                        // the same FIN).
                        break PlainEnd::Close;
                    }
                    if matches!(phase, Phase::Graceful) {
                        break PlainEnd::Close;
                    }
                    metrics.connections_parked.increment(1.0);
                    parked = Some(io);
                    continue;
                }
                PlainEvent::Ended(Err(e)) => {
                    end_with_error(metrics, peer, e.into());
                    break PlainEnd::Close;
                }
                PlainEvent::Readable(Ok(())) if fresh => {
                    let Some(io) = parked.take() else {
                        break PlainEnd::Close;
                    };
                    let mut first = [0u8; H2_PREFACE.len()];
                    // Readable, so the peek does not wait; if it would (a spurious wake),
                    // the connection goes back to waiting.
                    match io.get_ref().peek(&mut first).now_or_never() {
                        None => parked = Some(io),
                        Some(Ok(0)) | Some(Err(_)) => break PlainEnd::Close, // closed before a request
                        Some(Ok(n)) if H2_PREFACE.starts_with(&first[..n]) => {
                            break PlainEnd::Http2(io);
                        }
                        Some(Ok(_)) => {
                            fresh = false;
                            served = Some(start(io));
                            tick.as_mut().reset(now + check_every);
                        }
                    }
                    continue;
                }
                PlainEvent::Readable(Ok(())) => {
                    if let Some(io) = parked.take() {
                        metrics.connections_parked.decrement(1.0);
                        served = Some(start(io));
                        tick.as_mut().reset(now + check_every);
                    }
                    continue;
                }
                PlainEvent::Readable(Err(_)) => break PlainEnd::Close,
                PlainEvent::Stop | PlainEvent::Check => {}
            }
            // A check: shutdown, activity, drains, the closing phases, parking and the
            // idle limit. Shutdown woke a parked connection (`changed` then marked it
            // seen), or a busy one finds it pending here.
            if !stopping && (woken_by_stop || stop.has_changed().unwrap_or(true)) {
                stopping = true;
                phase = Phase::Waiting(now);
            }
            let seen = framing.reads();
            if seen != reads {
                reads = seen;
                active_at = now;
            }
            if matches!(phase, Phase::Serving) && drains_open {
                match drains.has_changed() {
                    Ok(true) => {
                        let window = drains.borrow_and_update().window;
                        phase = Phase::Waiting(now + window.mul_f64(fastrand::f64()));
                    }
                    Ok(false) => {}
                    Err(_) => drains_open = false,
                }
            }
            match phase {
                Phase::Waiting(t) if now >= t => {
                    conn.close.closing.store(true, Ordering::Relaxed);
                    phase = Phase::Lingering(now + LINGER);
                }
                Phase::Lingering(t) if now >= t => phase = Phase::Graceful,
                _ => {}
            }
            // The header deadline: a head that has begun is complete within `header_read`
            // of the check that first saw it (so up to two checks late).
            match (framing.head_pending(), head_since) {
                (Some(heads), Some((seen, since))) if heads == seen => {
                    if served.is_some() && now >= since + self.header_read {
                        metrics.rejected(Rejection::HeaderTimeout);
                        debug!(client.addr = %peer, "request head not complete in time");
                        break PlainEnd::Close;
                    }
                }
                (Some(heads), _) => head_since = Some((heads, now)),
                (None, _) => head_since = None,
            }
            let graceful = matches!(phase, Phase::Graceful);
            let idle_until = if fresh {
                accepted + self.header_read
            } else {
                active_at + self.idle
            };
            if served.is_none() {
                if graceful || now >= idle_until {
                    break PlainEnd::Close;
                }
            } else if framing.is_idle() && (graceful || now >= active_at + check_every) {
                framing.set_eof(true); // the codec's next read ends it; see above
            }
            let mut next = now + check_every;
            if served.is_none() {
                next = idle_until;
            }
            if let Some(t) = phase.deadline() {
                next = next.min(t);
            }
            tick.as_mut().reset(next.max(now));
        };
        if parked.is_some() && !fresh {
            metrics.connections_parked.decrement(1.0);
        }
        match end {
            PlainEnd::Close => {}
            PlainEnd::Http2(io) => {
                // Boxed: the HTTP/2 state is large, and an HTTP/1.1 connection's task
                // should not carry room for it.
                Box::pin(self.serve_io(io, framing, peer, proto, 0)).await;
            }
        }
    }

    /// Serves one connection (plain or already TLS-terminated) to its end.
    ///
    /// Closing, on shutdown or when a pool drains ([`RouteHandle::signal_drain`]), is gentle
    /// so that no request is lost to a keep-alive race: a drain first waits a random share of
    /// `proxy.drain_window` (connections close spread out, not all at once); then an HTTP/2
    /// connection gets GOAWAY, and an HTTP/1.1 connection answers its current or next request
    /// with `Connection: close` and is closed after it, or after [`LINGER`] if it stays idle.
    ///
    /// [`RouteHandle::signal_drain`]: crate::proxy::route::RouteHandle::signal_drain
    pub async fn serve_io<I>(
        &self,
        io: I,
        framing: Arc<FramingVerdict>,
        peer: SocketAddr,
        proto: &'static str,
        listener: ListenerIndex,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = &self.shared.metrics;
        let conn = Arc::new(Conn::new(
            self.shared.clone(),
            framing,
            peer,
            proto,
            listener,
            Upgrades::Hyper,
        ));
        let service = request_service(conn.clone());
        let served = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(served);
        let mut drains = self.shared.routes.drain_signals();
        // Clones that are only asked whether a change is pending (see `Gated`).
        let drains_probe = drains.clone();
        let mut stop = self.stopping.clone();
        let stop_probe = self.stopping.clone();
        let mut drains_open = true;
        let mut stopping = false;
        let mut phase = Phase::Serving;
        let result = loop {
            let deadline = phase.deadline();
            let closing = matches!(phase, Phase::Lingering(_) | Phase::Graceful);
            let now = Instant::now();
            tokio::select! {
                r = served.as_mut() => break r,
                _ = Gated::new(stop.changed(), || stop_probe.has_changed().unwrap_or(true)),
                    if !closing && !stopping => {
                    // Once: the signal stays set, and the loop must reach the timer.
                    stopping = true;
                    phase = Phase::Waiting(now);
                }
                changed = Gated::new(drains.changed(), || drains_probe.has_changed().unwrap_or(true)),
                    if drains_open && matches!(phase, Phase::Serving) => match changed {
                    Ok(()) => {
                        let window = drains.borrow_and_update().window;
                        phase = Phase::Waiting(now + window.mul_f64(fastrand::f64()));
                    }
                    Err(_) => drains_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                    let now = Instant::now();
                    phase = match phase {
                        Phase::Waiting(_) => {
                            conn.close.closing.store(true, Ordering::Relaxed);
                            if conn.close.h2.load(Ordering::Relaxed) {
                                served.as_mut().graceful_shutdown();
                                Phase::Graceful
                            } else {
                                Phase::Lingering(now + LINGER)
                            }
                        }
                        Phase::Lingering(_) => {
                            served.as_mut().graceful_shutdown();
                            Phase::Graceful
                        }
                        p => p,
                    };
                }
            }
        };
        if let Err(e) = result {
            end_with_error(metrics, peer, e);
        }
    }
}

/// The request service of one connection: [`handle`], plus `Connection: close` on
/// HTTP/1.1 responses once the connection is closing.
fn request_service(
    conn: Arc<Conn>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<TracedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<TracedBody>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        async move {
            let version = req.version();
            if version == Version::HTTP_2 {
                conn.close.h2.store(true, Ordering::Relaxed);
            }
            let mut resp = handle(conn.clone(), req).await?;
            if version <= Version::HTTP_11
                && conn.close.closing.load(Ordering::Relaxed)
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

/// `None` of the type `start` returns (a type that cannot be written out).
fn nothing_from<A, F>(_: &impl Fn(A) -> F) -> Option<F> {
    None
}

/// Records how a connection ended with an error.
fn end_with_error(
    metrics: &crate::metrics::Metrics,
    peer: SocketAddr,
    e: Box<dyn std::error::Error + Send + Sync>,
) {
    let hyper_error = e.downcast_ref::<hyper::Error>();
    let timed_out = hyper_error.is_some_and(hyper::Error::is_timeout);
    if timed_out {
        // The codec closes a connection whose request head is not complete in
        // time (`proxy.timeouts.header_read`); it sends no 408 itself.
        metrics.rejected(Rejection::HeaderTimeout);
    } else if let Some(why) = hyper_error.and_then(codec_refusal) {
        metrics.rejected(why);
    }
    debug!(client.addr = %peer, error = %e, timed_out, "connection ended with an error");
}

/// The reason to count for a request head the HTTP/1.1 codec refused with an answer of
/// its own (400, 414 or 431: hyper's `on_error`), so that every refusal is counted once.
/// A parse error that got no answer (an HTTP/2 preface where HTTP/1.1 was expected) is
/// not a refusal.
fn codec_refusal(e: &hyper::Error) -> Option<Rejection> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    if e.is_parse_too_large() {
        return Some(Rejection::HeaderTooLarge);
    }
    // The codec's own framing checks (a bad Content-Length or Transfer-Encoding); hyper
    // tells them apart only in its message.
    let text = e.to_string();
    if text.contains("content-length") || text.contains("transfer-encoding") {
        Some(Rejection::Smuggling)
    } else {
        Some(Rejection::BadRequest)
    }
}

/// Counts an open client connection in `switchyard_connections_active` while it lives.
struct ActiveConn<'a>(&'a crate::metrics::Metrics);

impl<'a> ActiveConn<'a> {
    fn new(metrics: &'a crate::metrics::Metrics) -> Self {
        metrics.connections_active.increment(1.0);
        ActiveConn(metrics)
    }
}

impl Drop for ActiveConn<'_> {
    fn drop(&mut self) {
        self.0.connections_active.decrement(1.0);
    }
}

/// The first bytes of a prior-knowledge HTTP/2 connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest time between idle checks of a plain HTTP/1.1 connection: it is parked after
/// one to two of these without a read.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What is left to do with a plain connection's stream once its loop has ended.
enum PlainEnd {
    /// Nothing: dropping it closes it.
    Close,
    /// It starts with an HTTP/2 preface.
    Http2(PlainIo),
}

/// What woke a plain HTTP/1.1 connection's task.
enum PlainEvent<T> {
    /// The codec finished: the client closed, the connection closed after a response,
    /// it was parked, or it switched protocols.
    Ended(hyper::Result<T>),
    /// A parked connection's socket has something to read.
    Readable(std::io::Result<()>),
    /// The periodic check, or a drain signal.
    Check,
    /// The proxy is shutting down.
    Stop,
}

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
    /// hyper's graceful shutdown is under way.
    Graceful,
}

impl Phase {
    /// When the phase moves on by itself.
    fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Waiting(t) | Phase::Lingering(t) => Some(t),
            Phase::Serving | Phase::Graceful => None,
        }
    }
}
