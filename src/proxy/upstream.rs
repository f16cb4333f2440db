//! DATA PLANE: connections to backends. Each backend keeps its own pool of idle HTTP/1.1
//! connections in a lock-free queue: a request pops one (or connects), sends, and the
//! connection goes back when the response body has been read to its end. Because the
//! connection is established before the request is handed over, a connect failure leaves
//! the request untouched and free to be retried on another backend.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::proxy::body::LimitedBody;

/// The sending half of one upstream HTTP/1.1 connection.
pub type Sender = SendRequest<LimitedBody>;

/// Knobs of upstream connections, from `proxy.timeouts` and `pools.*`.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
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
}

/// A TCP connection to a backend (an IP literal skips the resolver), within `timeout`.
pub async fn dial(host: &str, addr: Option<SocketAddr>, timeout: Duration) -> Result<TcpStream, ConnectError> {
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
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").field("idle", &self.idle.len()).finish()
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
        ConnPool { idle: ArrayQueue::new(opts.max_idle_per_backend.max(1)), opts }
    }

    /// An idle connection that is still open, or a new one.
    pub async fn checkout(&self, host: &str, addr: Option<SocketAddr>) -> Result<Checkout, ConnectError> {
        while let Some(Idle { mut tx, since }) = self.idle.pop() {
            if tx.is_closed() || since.elapsed() > self.opts.idle_timeout {
                continue;
            }
            // Returned right after its last body ended: ready now or within a poll.
            if tx.ready().await.is_ok() {
                return Ok(Checkout { tx, reused: true });
            }
        }
        self.connect(host, addr).await.map(|tx| Checkout { tx, reused: false })
    }

    /// A new connection, never a pooled one.
    pub async fn connect(&self, host: &str, addr: Option<SocketAddr>) -> Result<Sender, ConnectError> {
        let stream = dial(host, addr, self.opts.connect_timeout).await?;
        let (tx, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Returns a connection whose last response has been read in full.
    pub fn checkin(&self, tx: Sender) {
        if !tx.is_closed() {
            // A full pool drops the connection: the cap bounds idle sockets per backend.
            let _ = self.idle.push(Idle { tx, since: Instant::now() });
        }
    }

    /// Closes every idle connection (drain, maintenance).
    pub fn clear(&self) {
        while self.idle.pop().is_some() {}
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}
