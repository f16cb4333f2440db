//! DATA PLANE: the request function. [`handle`] builds the response (request id, access
//! log, security headers on every response) around `handle_inner`, which returns a typed
//! error that [`handle`] maps to a status in one place. `handle_inner`'s steps, in order:
//!
//! - `admit`: framing verdict, limits and Host, rate limit, request hash; then route:
//!   the pool (override, affinity, weights) and its concurrency cap.
//! - `forward`: the head rewritten for the backend, sent with retries on connect failure.
//! - `answer`: the response judged (hash, 5xx, passive health, statistics), then
//!   streamed back, or switched to a tunnel (WebSocket).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::metrics::window::{LiveStats, Outcome};
use crate::metrics::{Charge, Metrics, UpstreamErrorKind};
use crate::proxy::body::ProxyBody;
use crate::proxy::edge::concurrency::PoolPermit;
use crate::proxy::edge::record::{Arrival, Pending, Trace, TracedBody};
use crate::proxy::edge::{client, request_id, Edge, ListenerIndex};
use crate::proxy::error::ProxyError;
use crate::proxy::route::{RouteHandle, RouteTable};
use crate::proxy::settings::Settings;
use crate::proxy::sniff::FramingVerdict;

mod admit;
mod answer;
mod forward;

use forward::Outgoing;
/// What every connection shares.
pub struct Shared {
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    /// Per-pool live statistics for the rollout gates: upstream outcomes only.
    pub stats: Arc<LiveStats>,
    /// Rate-limit table, pool in-flight counters, access-log writer.
    pub edge: Arc<Edge>,
}

/// Per-connection facts, computed once at accept.
pub struct Conn {
    pub shared: Arc<Shared>,
    /// Verdict of the raw-stream framing scan (HTTP/1.1 only) and this connection's
    /// request counter, to match requests to the heads the scan saw.
    pub framing: Arc<FramingVerdict>,
    /// Requests begun on this connection (counted by `admit`, in the first poll of
    /// [`handle`]). Each one's end is counted in `framing`'s responses (by the response
    /// body, or by [`Unanswered`] when there is none), so the two are equal when no
    /// request is open: how an HTTP/2 connection is seen idle.
    pub requests: AtomicU64,
    pub client_ip: HeaderValue,
    pub proto: &'static str,
    /// The peer's address (the client unless `proxy.trusted_hops` says otherwise).
    pub peer: IpAddr,
    pub listener: ListenerIndex,
    /// Accepted on a TLS listener (`proto` is "https").
    pub tls: bool,
    /// How a protocol switch (WebSocket) reaches the client side of the tunnel.
    pub upgrades: Upgrades,
    /// Set by the connection's task, read by its requests.
    pub close: CloseFlags,
}

/// How a connection is being closed; shared between its task and its request service.
#[derive(Default)]
pub struct CloseFlags {
    /// Responses from now on carry `Connection: close` (HTTP/1.1).
    pub closing: std::sync::atomic::AtomicBool,
    /// The client speaks HTTP/2 (seen on its first request).
    pub h2: std::sync::atomic::AtomicBool,
}

/// A client stream handed to a tunnel by a connection's task (plain or TLS).
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// The client side of a tunnel, as a connection's task hands it over.
pub type UpgradedIo = Box<dyn ClientStream>;

/// How the client side of an upgraded connection is obtained.
pub enum Upgrades {
    /// From hyper (`OnUpgrade`), for connections served with upgrade support.
    Hyper,
    /// From the connection's task: after the codec hands the stream back, the task sends
    /// it down the channel the service left here (see `conn::h1`).
    Manual(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<UpgradedIo>>>),
}

impl Upgrades {
    /// The channel a switched-protocol response left for the task, if any.
    pub fn take_pending(&self) -> Option<tokio::sync::oneshot::Sender<UpgradedIo>> {
        match self {
            Upgrades::Hyper => None,
            Upgrades::Manual(slot) => slot.lock().ok().and_then(|mut s| s.take()),
        }
    }
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        framing: Arc<FramingVerdict>,
        peer: SocketAddr,
        proto: &'static str,
        listener: ListenerIndex,
        upgrades: Upgrades,
    ) -> Conn {
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            shared,
            framing,
            requests: AtomicU64::new(0),
            client_ip,
            proto,
            peer: peer.ip(),
            listener,
            tls: proto == "https",
            upgrades,
            close: CloseFlags::default(),
        }
    }
}

// Not an `async fn`, for the reason on `handle_inner`.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<TracedBody>, Infallible>> + Send + use<> {
    async move {
        // `admit` counts the request in this same poll (nothing is awaited before it).
        let unanswered = Unanswered(Some(&conn));
        let start = Instant::now();
        let table = conn.shared.routes.load();
        let s = &*table.settings;
        let edge = &s.edge;
        let version = req.version();
        let has_body = !req.body().is_end_stream();
        let metrics = &conn.shared.metrics;
        // Written into the forwarded request only after validation, which counts headers.
        let request_id = edge
            .request_id
            .as_ref()
            .map(|name| request_id::resolve_at(req.headers(), name, start));
        let client = client::client_addr(req.headers(), conn.peer, edge.trusted_hops);
        let mut trace = Trace::default();
        let pending = match &conn.shared.edge.access_log {
            None => Pending::none(),
            Some(log) => {
                trace.logging = true;
                let arrival = Arrival {
                    start,
                    client,
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                    proto: conn.proto,
                    generation: table.generation,
                    include_query: edge.include_query,
                };
                Pending::start(log, arrival)
            }
        };
        let fresh_id = request_id
            .as_ref()
            .and_then(|(id, fresh)| fresh.then_some(id));
        let mut own = false;
        // Awaited where it is made: a future bound to a name first and then awaited takes
        // room twice in this one (the binding and the awaited copy), and this future is
        // moved into place for every request (6,032 bytes in all before, 2,048 now).
        let mut resp =
            match handle_inner(&conn, &table, req, start, client, fresh_id, &mut trace).await {
                Ok(resp) => resp,
                Err(err) => {
                    own = true;
                    debug!(error = %err, generation = table.generation, "answered by the proxy");
                    if let Some((pool, kind)) = err.upstream() {
                        let outcome = if kind == UpstreamErrorKind::Hash {
                            Outcome::HashViolation
                        } else {
                            Outcome::Error
                        };
                        conn.shared.stats.record_from(start, pool, outcome);
                    }
                    trace.error = Some(err.code());
                    error_response(metrics, &err, version, has_body)
                }
            };
        let h = resp.headers_mut();
        // Only the proxy's own answers get the hash: a forwarded response carries the
        // upstream's as it came (checked already in `enforce`, to be seen in `report`/`off`).
        if own {
            h.insert(s.hash.header.clone(), s.hash.value.clone());
        }
        let request_id = request_id.map(|(id, _)| id);
        if let (Some(name), Some(id)) = (&edge.request_id, &request_id) {
            h.insert(name, id.clone());
        }
        edge.security.apply(h, conn.tls);
        if version <= Version::HTTP_11
            && conn.close.closing.load(Ordering::Relaxed)
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            // The connection is closing (shutdown or a drain): the client learns it here.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let record = pending.finish(&trace, request_id.as_ref(), resp.status().as_u16());
        let permit = trace.permit.take().map(PoolPermit::keep);
        let bytes_in = trace.bytes_in.take();
        drop(trace);
        unanswered.disarm();
        Ok(resp.map(|body| TracedBody::new(body, conn, permit, record, bytes_in)))
    }
}

/// Counts a request's end when its future is dropped before it has a response body to
/// count it (an HTTP/2 stream reset by the client, or a connection that ended).
struct Unanswered<'a>(Option<&'a Conn>);

impl Unanswered<'_> {
    /// The response body counts the end from here on.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            conn.framing.response_done();
        }
    }
}

fn error_response(
    metrics: &Metrics,
    err: &ProxyError,
    version: Version,
    has_body: bool,
) -> Response<ProxyBody> {
    let status = err.status();
    metrics.request(err.charge(), status.as_u16());
    if let Some((pool, kind)) = err.upstream() {
        metrics.upstream_error(pool, kind);
    }
    if let Some(why) = err.rejection() {
        metrics.rejected(why);
    }
    if let ProxyError::PoolBusy { pool, .. } = err {
        metrics.pool_concurrency_rejected(*pool);
    }
    let mut resp = Response::new(ProxyBody::full(err.body()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = err.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    // An unread request body, or a framing we refuse, leaves the connection unusable.
    let close =
        matches!(err, ProxyError::Smuggling(_)) || (has_body && err.charge() == Charge::Proxy);
    if close && version <= Version::HTTP_11 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// One request's fixed inputs, for the steps of [`handle_inner`].
struct Ctx<'a> {
    conn: &'a Conn,
    table: &'a RouteTable,
    s: &'a Settings,
    metrics: &'a Metrics,
    start: Instant,
}

/// The request's steps, top to bottom; any of them may answer instead, with an error.
// Not an `async fn`, like `forward`: the block's captures are its working copies, where
// an async fn's future keeps room for its arguments besides them (the request head).
#[allow(clippy::manual_async_fn)]
fn handle_inner<'a, 'b>(
    conn: &'a Conn,
    table: &'a RouteTable,
    req: Request<Incoming>,
    start: Instant,
    client: IpAddr,
    fresh_id: Option<&'b HeaderValue>,
    trace: &'b mut Trace<'a>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + use<'a, 'b> {
    async move {
        let metrics = &*conn.shared.metrics;
        let cx = Ctx {
            conn,
            table,
            s: &table.settings,
            metrics,
            start,
        };
        let (mut parts, body) = req.into_parts();
        let host = admit::admit(&cx, &mut parts, client, fresh_id, trace)?;
        let pool = admit::route(&cx, &mut parts, trace)?;
        let Outgoing {
            req,
            host_is_backend,
            upgrade,
            downstream,
        } = forward::rewrite(&cx, parts, body, host, trace);
        let sent = forward::forward(&cx, pool, req, host_is_backend, trace).await?;
        answer::judge(&cx, pool, &sent, trace)?;
        answer::respond(&cx, pool.id, sent, upgrade, downstream)
    }
}
