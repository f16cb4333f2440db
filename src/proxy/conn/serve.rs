//! DATA PLANE: a connection served by hyper's auto builder: HTTP/1.1 and HTTP/2, with
//! upgrade support. TLS connections, and plain ones that began with an HTTP/2 preface.
//!
//! Such a connection with no request open for `proxy.timeouts.idle` is closed gracefully
//! (HTTP/2: GOAWAY with NO_ERROR, RFC 9113 §6.8), as an idle HTTP/1.1 connection is; the
//! keep-alive PINGs a live client answers do not count as use. The task checks every
//! quarter of the limit, comparing the requests begun with those ended: no timer per
//! request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::closing::Closing;
use super::{end_with_error, request_service, Acceptor};
use crate::proxy::edge::ListenerIndex;
use crate::proxy::service::{Conn, Upgrades};
use crate::proxy::sniff::FramingVerdict;

impl Acceptor {
    /// Serves one connection (plain or already TLS-terminated) to its end, closing it
    /// gently on shutdown or when a pool drains (see `conn::closing`).
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
        let shared = self.shared.clone();
        let conn = Conn::new(shared, framing, peer, proto, listener, Upgrades::Hyper);
        let conn = Arc::new(conn);
        let service = request_service(conn.clone());
        let served = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(served);
        let mut closing = Closing::new(self.stopping.clone(), self.shared.routes.drain_signals());
        let mut idle = IdleWatch::new(self.idle, Instant::now());
        let result = loop {
            let deadline = closing.deadline();
            let now = Instant::now();
            tokio::select! {
                r = served.as_mut() => break r,
                s = closing.signal() => closing.seen(s, now),
                _ = tokio::time::sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {
                    if closing.advance(Instant::now(), &conn.close) {
                        served.as_mut().graceful_shutdown();
                    }
                }
                _ = tokio::time::sleep_until(idle.next_check), if !idle.closed => {
                    if idle.check(&conn, Instant::now()) {
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        if let Err(e) = result {
            end_with_error(&self.shared.metrics, peer, e);
        }
    }
}

/// The idle limit of a connection served here: closed once no request has been open for
/// `limit`, checked every quarter of it.
struct IdleWatch {
    limit: Duration,
    check_every: Duration,
    next_check: Instant,
    /// Requests begun as of the last check.
    begun: u64,
    /// Since when no request has been seen open or begun (as of the checks).
    quiet_since: Instant,
    /// The graceful close has been asked for.
    closed: bool,
}

impl IdleWatch {
    fn new(limit: Duration, now: Instant) -> IdleWatch {
        let check_every = limit / 4;
        IdleWatch {
            limit,
            check_every,
            next_check: now + check_every,
            begun: 0,
            quiet_since: now,
            closed: false,
        }
    }

    /// True when the connection is to be closed now.
    fn check(&mut self, conn: &Conn, now: Instant) -> bool {
        self.next_check = now + self.check_every;
        let begun = conn.requests.load(Ordering::Relaxed);
        // A request begun since the last check, or one still open: in use.
        if begun != self.begun || begun != conn.framing.responses() {
            self.begun = begun;
            self.quiet_since = now;
            return false;
        }
        self.closed = now >= self.quiet_since + self.limit;
        self.closed
    }
}
