//! DATA PLANE: accept loops. Each accepted connection takes a permit of the connection
//! limit, gets its own task, and is served HTTP/1.1 or HTTP/2 (prior knowledge) by hyper.
//! On shutdown the loop stops accepting and every connection is asked to finish gracefully;
//! when a pool drains, open connections are closed gradually (see [`Acceptor::serve_io`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::Rejection;
use crate::proxy::edge::ListenerIndex;
use crate::proxy::service::{handle, Conn, Shared};
use crate::proxy::sniff::{FramingVerdict, SniffIo};
use crate::proxy::tls::TlsTerminator;

/// Everything an accept loop needs, shared by all listeners of one proxy.
pub struct Acceptor {
    pub shared: Arc<Shared>,
    pub builder: auto::Builder<TokioExecutor>,
    pub limit: Arc<Semaphore>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
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

impl Acceptor {
    /// Accepts plain-TCP connections until shutdown.
    pub async fn run_plain(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, |this, stream, peer| async move {
            this.serve(stream, peer, "http").await
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
                    let work = per_conn(self.clone(), stream, peer);
                    self.tracker.spawn(async move {
                        work.await;
                        drop(permit);
                    });
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

    async fn serve(&self, stream: TcpStream, peer: SocketAddr, proto: &'static str) {
        let _ = stream.set_nodelay(true);
        let framing = FramingVerdict::new();
        self.serve_io(
            SniffIo::new(stream, framing.clone()),
            framing,
            peer,
            proto,
            0,
        )
        .await;
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
        metrics.connections_active.increment(1.0);
        let conn = Arc::new(Conn::new(
            self.shared.clone(),
            framing,
            peer,
            proto,
            listener,
        ));
        let flags = Arc::new(CloseFlags::default());
        let service_flags = flags.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let (conn, flags) = (conn.clone(), service_flags.clone());
            async move {
                let version = req.version();
                if version == Version::HTTP_2 {
                    flags.h2.store(true, Ordering::Relaxed);
                }
                let mut resp = handle(conn, req).await?;
                if version <= Version::HTTP_11
                    && flags.closing.load(Ordering::Relaxed)
                    && resp.status() != StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let served = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(served);
        let mut drains = self.shared.routes.drain_signals();
        let mut drains_open = true;
        let mut stopping = false;
        let mut phase = Phase::Serving;
        let result = loop {
            let deadline = match phase {
                Phase::Waiting(t) | Phase::Lingering(t) => Some(t),
                Phase::Serving | Phase::Graceful => None,
            };
            let closing = matches!(phase, Phase::Lingering(_) | Phase::Graceful);
            let now = Instant::now();
            tokio::select! {
                r = served.as_mut() => break r,
                _ = self.shutdown.cancelled(), if !closing && !stopping => {
                    // Once: a cancelled token stays ready, and the loop must reach the timer.
                    stopping = true;
                    phase = Phase::Waiting(now);
                }
                changed = drains.changed(), if drains_open && matches!(phase, Phase::Serving) => match changed {
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
                            flags.closing.store(true, Ordering::Relaxed);
                            if flags.h2.load(Ordering::Relaxed) {
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
            let timed_out = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if timed_out {
                // The codec closes a connection whose request head is not complete in
                // time (`proxy.timeouts.header_read`); it sends no 408 itself.
                metrics.rejected(Rejection::HeaderTimeout);
            }
            debug!(client.addr = %peer, error = %e, timed_out, "connection ended with an error");
        }
        metrics.connections_active.decrement(1.0);
    }
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

/// Shared between a connection's task and its request service.
#[derive(Default)]
struct CloseFlags {
    /// Responses from now on carry `Connection: close` (HTTP/1.1).
    closing: AtomicBool,
    /// The client speaks HTTP/2 (seen on its first request).
    h2: AtomicBool,
}
