//! DATA PLANE: a connection's life, in the order it lives it.
//!
//! ```text
//! accept       Acceptor::run_plain / run_tls: a permit of the connection limit, a task per
//!              connection, accept errors backed off; TLS: the handshake, under its deadline
//! sniff, park  the raw stream watched by proxy::sniff (framing, idleness, the header
//!              deadline); idle HTTP/1.1 connections, plain or TLS, parked without a
//!              codec (h1)
//! serve        hyper: HTTP/1.1 (h1); HTTP/2 by ALPN or after a preface, served by the
//!              auto builder with upgrades (serve); every request goes to
//!              proxy::service::handle (request_service)
//! close        one closing phase for both (closing): on shutdown or a pool drain,
//!              `Connection: close` then close, or GOAWAY
//! ```

mod closing;
mod h1;
mod serve;

pub use closing::LINGER;
pub use h1::PARK_AFTER;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::{Metrics, Rejection};
use crate::proxy::edge::record::TracedBody;
use crate::proxy::edge::ListenerIndex;
use crate::proxy::service::{handle, Conn, Shared};
use crate::proxy::sniff::{FramingVerdict, SniffIo};
use crate::proxy::tls::TlsTerminator;

/// Everything an accept loop needs, shared by all listeners of one proxy.
pub struct Acceptor {
    pub shared: Arc<Shared>,
    pub builder: auto::Builder<TokioExecutor>,
    /// HTTP/1.1, plain or TLS, where idle connections are parked.
    pub h1: http1::Builder,
    /// `proxy.timeouts.header_read`: the first request head of a connection.
    pub header_read: Duration,
    /// `proxy.timeouts.idle`: a keep-alive connection with no request open (HTTP/1.1
    /// between requests, HTTP/2 with no stream open).
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

/// The hyper HTTP/1.1 settings for HTTP/1.1 connections: the HTTP/1.1 half of
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
        // The connection's future is `serve_h1`'s own, with no wrapper around it: every
        // async layer keeps its own copy of the arguments, and this future is held by
        // every idle connection.
        self.accept_loop(listener, |this, stream, peer| {
            this.serve_h1(stream, peer, "http", 0)
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
                let handshake =
                    tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await;
                match handshake {
                    // ALPN chose HTTP/2: the auto builder, boxed so that an HTTP/1.1
                    // connection's task has no room for it.
                    Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                        let framing = FramingVerdict::new();
                        let _active = ActiveConn::new(&this.shared.metrics);
                        let io = SniffIo::new(stream, framing.clone());
                        Box::pin(this.serve_io(io, framing, peer, "https", index)).await;
                    }
                    // HTTP/1.1, by ALPN or by default (its first bytes may still be an
                    // HTTP/2 preface).
                    Ok(Ok(stream)) => this.serve_h1(stream, peer, "https", index).await,
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
                    // Responses go out as soon as they are written (TLS: the handshake too).
                    let _ = stream.set_nodelay(true);
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
}

/// The request service of one connection: [`handle`] (which also says `Connection: close`
/// on HTTP/1.1 responses once the connection is closing).
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
        if req.version() == Version::HTTP_2 {
            conn.close.h2.store(true, Ordering::Relaxed);
        }
        handle(conn.clone(), req)
    })
}

/// Records how a connection ended with an error.
fn end_with_error(
    metrics: &Metrics,
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
struct ActiveConn<'a>(&'a Metrics);

impl<'a> ActiveConn<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.connections_active.increment(1.0);
        ActiveConn(metrics)
    }
}

impl Drop for ActiveConn<'_> {
    fn drop(&mut self) {
        self.0.connections_active.decrement(1.0);
    }
}
