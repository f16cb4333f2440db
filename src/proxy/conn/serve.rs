//! DATA PLANE: a connection served by hyper's auto builder: HTTP/1.1 and HTTP/2, with
//! upgrade support. TLS connections, and plain ones that began with an HTTP/2 preface.

use std::net::SocketAddr;
use std::sync::Arc;

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
            }
        };
        if let Err(e) = result {
            end_with_error(&self.shared.metrics, peer, e);
        }
    }
}
