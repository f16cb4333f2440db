//! DATA PLANE: connections to backends. Each backend keeps its own pool of idle HTTP/1.1
//! connections in a lock-free queue: a request pops one (or connects), sends, and the
//! connection goes back when the response body has been read to its end. Because the
//! connection is established before the request is handed over, a connect failure leaves
//! the request untouched and free to be retried on another backend.
//!
//! A pool with `tls = true` speaks TLS to its backends (rustls, ring): the backend's
//! certificate is checked against `tls_ca` (or the system bundle) for the name `tls_sni`
//! (or the backend's host), ALPN `http/1.1`. A failed handshake is a connect failure: nothing
//! was sent, so it may be retried, and the client gets 502 naming the TLS error.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use futures_util::FutureExt;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::config::UpstreamTls;
use crate::proxy::body::LimitedBody;

/// The CA bundle used when a TLS pool names no `tls_ca`.
pub use crate::tls_client::SYSTEM_CA_BUNDLE;

/// The sending half of one upstream HTTP/1.1 connection.
pub type Sender = SendRequest<LimitedBody>;

/// Knobs of upstream connections, from `proxy.timeouts` and `pools.*`.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    /// TLS to the backends (`[pools.X] tls = true`).
    pub tls: Option<Arc<UpstreamTlsClient>>,
}

/// The client side of TLS to one pool's backends.
pub struct UpstreamTlsClient {
    connector: TlsConnector,
    /// `tls_sni`; otherwise each backend's host is the name.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsClient")
            .field("sni", &self.sni)
            .finish()
    }
}

impl UpstreamTlsClient {
    /// Trusts the CAs of `cfg.ca` (or [`SYSTEM_CA_BUNDLE`]); errors name the file.
    pub fn new(cfg: &UpstreamTls) -> Result<UpstreamTlsClient, String> {
        let client =
            crate::tls_client::trusting(cfg.ca.as_deref(), "tls_ca")?.with_no_client_auth();
        let connector = crate::tls_client::http1(client);
        let sni = match &cfg.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone()).map_err(|e| format!("tls_sni {name:?}: {e}"))?,
            ),
            None => None,
        };
        Ok(UpstreamTlsClient { connector, sni })
    }

    /// The name sent and checked for a backend `host:port`.
    fn server_name(&self, backend: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.sni {
            return Ok(n.clone());
        }
        let host = match backend.rsplit_once(':') {
            Some((h, _)) => h,
            None => backend,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("backend host {host:?} is not a TLS name: {e}"))
    }

    async fn handshake(
        &self,
        backend: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let name = self
            .server_name(backend)
            .map_err(|message| ConnectError::Tls {
                name: backend.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, message),
            })?;
        let shown = name.to_str().into_owned();
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                name: shown,
                source,
            })
    }
}

/// Why no connection could be had; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake failed (server name {name}): {source}")]
    Tls { name: String, source: io::Error },
}

/// A connection to a backend: plain TCP or TLS over it.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection to `host` (TLS when `tls` is set), the handshake included, within `timeout`.
pub async fn open(
    host: &str,
    addr: Option<SocketAddr>,
    timeout: Duration,
    tls: Option<&UpstreamTlsClient>,
) -> Result<UpstreamIo, ConnectError> {
    let start = Instant::now();
    let tcp = dial(host, addr, timeout).await?;
    match tls {
        None => Ok(UpstreamIo::Plain(tcp)),
        Some(t) => {
            let left = timeout.saturating_sub(start.elapsed());
            tokio::time::timeout(left, t.handshake(host, tcp))
                .await
                .map_err(|_| ConnectError::Timeout(timeout))?
                .map(|s| UpstreamIo::Tls(Box::new(s)))
        }
    }
}

/// A TCP connection to a backend (an IP literal skips the resolver), within `timeout`.
pub async fn dial(
    host: &str,
    addr: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match addr {
        Some(a) => tokio::time::timeout(timeout, TcpStream::connect(a)).await,
        None => tokio::time::timeout(timeout, TcpStream::connect(host)).await,
    }
    .map_err(|_| ConnectError::Timeout(timeout))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Idle connections to one backend.
pub struct ConnPool {
    idle: ArrayQueue<Idle>,
    opts: UpstreamOptions,
    /// False while the pool drains or is in maintenance: connections are not kept idle.
    keep_idle: AtomicBool,
    /// The last failed connect (TCP or TLS), for `status`; written only when one fails.
    last_error: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle.len())
            .finish()
    }
}

/// A connection ready to carry one request.
pub struct Checkout {
    pub tx: Sender,
    /// Taken from the idle pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
}

impl ConnPool {
    pub fn new(opts: UpstreamOptions) -> Self {
        ConnPool {
            idle: ArrayQueue::new(opts.max_idle_per_backend.max(1)),
            opts,
            keep_idle: AtomicBool::new(true),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// An idle connection that is still open, or a new one.
    pub async fn checkout(
        &self,
        host: &str,
        addr: Option<SocketAddr>,
    ) -> Result<Checkout, ConnectError> {
        while let Some(Idle { mut tx, since }) = self.idle.pop() {
            if tx.is_closed() || since.elapsed() > self.opts.idle_timeout {
                continue;
            }
            // Returned right after its last body ended: ready now or within a poll.
            if tx.ready().await.is_ok() {
                return Ok(Checkout { tx, reused: true });
            }
        }
        // Boxed: dialling and the TLS handshake make a large future, and inline it would
        // enlarge every request's future (moved into place per request) for a path that
        // pooled connections rarely take.
        Box::pin(self.connect(host, addr))
            .await
            .map(|tx| Checkout { tx, reused: false })
    }

    /// A new connection, never a pooled one.
    pub async fn connect(
        &self,
        host: &str,
        addr: Option<SocketAddr>,
    ) -> Result<Sender, ConnectError> {
        let stream = match open(
            host,
            addr,
            self.opts.connect_timeout,
            self.opts.tls.as_deref(),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                if matches!(e, ConnectError::Tls { .. }) {
                    // A certificate problem is a configuration problem: say it loudly.
                    warn!(backend = host, error = %e, "TLS to the backend failed");
                }
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                return Err(e);
            }
        };
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // `map` rather than an async block that awaits it: the block would hold the
        // connection twice (captured, and as the awaited future).
        tokio::spawn(conn.with_upgrades().map(|ended| {
            if let Err(e) = ended {
                debug!(error = %e, "upstream connection ended with an error");
            }
        }));
        Ok(tx)
    }

    /// Returns a connection whose last response has been read in full.
    pub fn checkin(&self, tx: Sender) {
        // `max_idle_per_backend = 0`: no connection is kept (the queue has one slot anyway).
        if !tx.is_closed()
            && self.keep_idle.load(Ordering::Relaxed)
            && self.opts.max_idle_per_backend > 0
        {
            // A full pool drops the connection: the cap bounds idle sockets per backend.
            let _ = self.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that have waited longer than the idle timeout or were
    /// closed by the backend meanwhile; checkouts skip those too, this closes them when no
    /// request comes. One turn of the queue: each entry is taken and the live ones put back
    /// in the order they had, so that the queue stays oldest first. Returns how many were
    /// closed.
    pub fn sweep(&self) -> usize {
        let mut closed = 0;
        // One turn: at most the length at the start, however many come back meanwhile.
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            let stale = idle.tx.is_closed() || idle.since.elapsed() > self.opts.idle_timeout;
            if stale || !self.keep_idle.load(Ordering::Relaxed) {
                // Also when a drain began meanwhile: its `clear` did not see this one.
                closed += 1;
            } else {
                // A full queue (refilled by checkins meanwhile) drops it, as a checkin would.
                let _ = self.idle.push(idle);
            }
        }
        closed
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        while self.idle.pop().is_some() {}
    }

    /// Whether connections go back to the idle pool after their response: false while the
    /// pool drains or is in maintenance (then the idle ones are closed at once, and those
    /// still busy close when their response ends).
    pub fn set_keep_idle(&self, keep: bool) {
        self.keep_idle.store(keep, Ordering::Relaxed);
        if !keep {
            self.clear();
        }
    }

    /// The TLS client of this backend's pool, if it speaks TLS.
    pub fn tls(&self) -> Option<&UpstreamTlsClient> {
        self.opts.tls.as_deref()
    }

    /// The last connect failure to this backend (`None` if none yet).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn connect_timeout(&self) -> Duration {
        self.opts.connect_timeout
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}
