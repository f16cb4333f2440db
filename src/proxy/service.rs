//! DATA PLANE: the request function. In order: request id → validate → rate limit → hash →
//! route → pool cap → forward → check the answer → record; then security headers on every
//! response, and the access-log line when the response body ends ([`crate::proxy::edge`]).
//! [`handle`] builds the response; [`handle_inner`] returns a typed error that [`handle`]
//! maps to a status in one place.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::config::{Affinity, HashMode, PoolId};
use crate::error::ProxyError;
use crate::metrics::window::{LiveStats, Outcome};
use crate::metrics::{Charge, Metrics, UpstreamErrorKind};
use crate::proxy::body::{BodyTooLarge, LimitedBody, ProxyBody, RequestBodyError};
use crate::proxy::edge::access_log::{HashVerdict, RateVerdict};
use crate::proxy::edge::concurrency::PoolPermit;
use crate::proxy::edge::record::{Arrival, Pending, Trace, TracedBody};
use crate::proxy::edge::{client, request_id, Edge, ListenerIndex};
use crate::proxy::headers;
use crate::proxy::headers::front::{self, HostPlan};
use crate::proxy::route::{Backend, InflightGuard, RouteHandle, RouteTable};
use crate::proxy::settings::{Settings, OVERRIDE_TOKEN_HEADER};
use crate::proxy::sniff::{FramingVerdict, SniffIo};

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

/// The client stream of a plain HTTP/1.1 connection, as its task serves it.
pub type PlainIo = SniffIo<TcpStream>;

/// How the client side of an upgraded connection is obtained.
pub enum Upgrades {
    /// From hyper (`OnUpgrade`), for connections served with upgrade support.
    Hyper,
    /// From the connection's task: after the codec hands the stream back, the task sends
    /// it down the channel the service left here (see `listener::serve_plain`).
    Manual(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<PlainIo>>>),
}

impl Upgrades {
    /// The channel a switched-protocol response left for the task, if any.
    pub fn take_pending(&self) -> Option<tokio::sync::oneshot::Sender<PlainIo>> {
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

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<TracedBody>, Infallible> {
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
    let inner = handle_inner(&conn, &table, req, start, client, fresh_id, &mut trace);
    let mut own = false;
    let mut resp = match inner.await {
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
        h.insert(s.hash_header.clone(), s.hash_value.clone());
    }
    let request_id = request_id.map(|(id, _)| id);
    if let (Some(name), Some(id)) = (&edge.request_id, &request_id) {
        h.insert(name, id.clone());
    }
    edge.security.apply(h, conn.tls);
    let record = pending.finish(&trace, request_id.as_ref(), resp.status().as_u16());
    let permit = trace.permit.take().map(PoolPermit::keep);
    let bytes_in = trace.bytes_in.take();
    drop(trace);
    Ok(resp.map(|body| TracedBody::new(body, conn, permit, record, bytes_in)))
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

/// Validates a request head against the limits, framing and Host rules, and fields that
/// read as the hash or request-id header; says what the forwarded Host is to be.
fn validate(req: &http::request::Parts, s: &Settings) -> Result<HostPlan, ProxyError> {
    headers::check_framing(&req.headers).map_err(ProxyError::Smuggling)?;
    if req.headers.len() > s.max_headers {
        return Err(ProxyError::TooManyHeaders {
            limit: s.max_headers,
        });
    }
    let (size, twin) =
        front::size_and_twin(&req.headers, &s.hash_header, s.edge.request_id.as_ref());
    if size > s.max_header_bytes {
        return Err(ProxyError::HeaderTooLarge {
            limit: s.max_header_bytes,
        });
    }
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > s.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge {
            limit: s.max_body_bytes,
        });
    }
    let plan =
        front::check_host(req.version, &req.uri, &req.headers).map_err(ProxyError::BadHost)?;
    if let Some(twin) = twin {
        return Err(ProxyError::AmbiguousHeader(twin.as_str().to_owned()));
    }
    Ok(plan)
}

/// The pool for this request: a trusted override first, then the weighted split. The
/// override field and its token are taken out of the request here: they are never
/// forwarded (one lookup each, whether or not they are there).
fn choose_pool(req: &mut http::request::Parts, table: &RouteTable) -> PoolId {
    let s = &table.settings;
    if let Some(name) = &s.override_header {
        let asked = req.headers.remove(name);
        let token = req.headers.remove(&OVERRIDE_TOKEN_HEADER);
        if let Some(pool) = asked.and_then(|v| PoolId::parse(v.to_str().ok()?)) {
            let trusted = match &s.override_token {
                Some(expected) => token.as_ref() == Some(expected),
                None => false,
            };
            if trusted {
                return pool;
            }
        }
    }
    // The affinity header is never the override header or the token (config validation).
    let key = match &s.affinity {
        Affinity::None => None,
        Affinity::Cookie(name) => headers::cookie(&req.headers, name),
        Affinity::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
    };
    table.pick_pool(key)
}

async fn handle_inner<'a>(
    conn: &'a Conn,
    table: &RouteTable,
    req: Request<Incoming>,
    start: Instant,
    client: IpAddr,
    fresh_id: Option<&HeaderValue>,
    trace: &mut Trace<'a>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let s = &*table.settings;
    let metrics = &conn.shared.metrics;
    let (mut parts, body) = req.into_parts();
    let index = conn.requests.fetch_add(1, Ordering::Relaxed);
    if conn.framing.is_bad(index) {
        return Err(ProxyError::Smuggling(headers::Smuggling::AmbiguousLength));
    }
    let host = validate(&parts, s)?;
    if let (Some(name), Some(id)) = (&s.edge.request_id, fresh_id) {
        parts.headers.insert(name, id.clone());
    }

    let edge = &conn.shared.edge;
    match edge.check_rate(
        &s.edge,
        conn.listener,
        &parts.headers,
        client,
        start,
        metrics,
    ) {
        Ok(verdict) => trace.rate_limit = verdict,
        Err(retry_after) => {
            trace.rate_limit = RateVerdict::Limited;
            metrics.rate_limited();
            return Err(ProxyError::RateLimited { retry_after });
        }
    }

    if s.requests != HashMode::Off {
        let verdict = headers::check_hash(&parts.headers, &s.hash_header, &s.hash_value);
        trace.hash_request = HashVerdict::of(verdict);
        if let Err(reason) = verdict {
            metrics.request_violation(reason);
            if s.requests == HashMode::Enforce {
                return Err(ProxyError::RequestHash(reason));
            }
        }
    }

    let pool_id = choose_pool(&mut parts, table);
    trace.pool = Some(pool_id);
    if let Some(limit) = s.edge.caps[pool_id.index()].limit(table.share_bp(pool_id)) {
        match edge.inflight.try_acquire(pool_id, limit) {
            Some(permit) => trace.permit = Some(permit),
            None => {
                return Err(ProxyError::PoolBusy {
                    pool: pool_id,
                    limit,
                })
            }
        }
    }
    let pool = table.pool(pool_id);
    pool.retries.deposit();

    let upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
    let downstream_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, &conn.client_ip, conn.proto);
    // The target's authority (HTTP/2 `:authority`, HTTP/1.1 absolute form) wins over Host;
    // HTTP/1.0 without either gets the backend's address, set per attempt below.
    let host_is_backend = match host {
        HostPlan::Keep => false,
        HostPlan::Set(v) => {
            parts.headers.insert(header::HOST, v);
            false
        }
        HostPlan::Backend => true,
    };
    // Origin form on the wire: the backend sees the path, the Host header names the site.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().unwrap_or(&ROOT).clone();
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
    parts.extensions.clear();
    let body = if trace.logging {
        let counter = Arc::new(AtomicU64::new(0));
        trace.bytes_in = Some(counter.clone());
        LimitedBody::counted(body, s.max_body_bytes, counter, table.settings.clone())
    } else {
        LimitedBody::new(body, s.max_body_bytes, table.settings.clone())
    };
    let mut req = Request::from_parts(parts, body);

    // Nothing has reached a backend until a connection is up and the request is handed to
    // it, so connect failures (and pooled connections found closed) are retried: on
    // another backend of the same pool when there is one, within the pool's budget.
    let mut failed: Option<(Arc<Backend>, ProxyError)> = None;
    let mut attempt = 0u32;
    let (guard, mut tx, sent) = loop {
        attempt += 1;
        let Some(backend) = pool.pick_backend_except(failed.as_ref().map(|f| &f.0)) else {
            return Err(failed.map_or(ProxyError::NoBackend(pool_id), |f| f.1));
        };
        let guard = InflightGuard::new(backend.clone());
        if trace.logging {
            trace.backend = Some(backend.clone());
        }
        let mut checkout = match backend
            .conns
            .checkout(&backend.addr, backend.socket_addr)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let err = ProxyError::Connect {
                    pool: pool_id,
                    backend: backend.addr.clone(),
                    message: e.to_string(),
                };
                if pool.record_failure(backend) {
                    warn!(pool = %pool_id, backend = %backend.addr, "backend ejected after consecutive failures");
                }
                if attempt >= s.attempts || pool.backends.len() < 2 || !pool.retries.try_withdraw()
                {
                    return Err(err);
                }
                debug!(error = %err, attempt, "retrying on another backend");
                // Counted here only when retried; the error returned is counted by `handle`.
                metrics.upstream_error(pool_id, UpstreamErrorKind::Connect);
                metrics.retry(pool_id);
                failed = Some((backend.clone(), err));
                continue;
            }
        };
        if host_is_backend {
            if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        let reused = checkout.reused;
        let sent = tokio::time::timeout(
            s.upstream_response_timeout,
            checkout.tx.try_send_request(req),
        )
        .await;
        match sent {
            Ok(Err(mut e)) if reused && e.message().is_some() => {
                // A pooled connection closed before taking the request: not sent, try again.
                req = e.take_message().expect("checked just above");
                continue;
            }
            _ => break (guard, checkout.tx, sent),
        }
    };
    let backend = guard.backend().clone();
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(classify(pool_id, &backend.addr, e.into_error())),
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                pool: pool_id,
                backend: backend.addr.clone(),
                timeout: s.upstream_response_timeout,
            })
        }
    };
    let now = Instant::now();
    let latency = now.saturating_duration_since(start);
    trace.upstream = Some(latency);
    metrics.duration(pool_id, latency.as_secs_f64());
    let mut outcome = Outcome::Success;

    if s.responses != HashMode::Off {
        let verdict = headers::check_hash(resp.headers(), &s.hash_header, &s.hash_value);
        trace.hash_response = HashVerdict::of(verdict);
        if let Err(reason) = verdict {
            metrics.response_violation(pool_id, reason);
            if s.responses == HashMode::Enforce {
                return Err(ProxyError::ResponseHash {
                    pool: pool_id,
                    backend: backend.addr.clone(),
                    reason,
                });
            }
            metrics.upstream_error(pool_id, UpstreamErrorKind::Hash);
            outcome = Outcome::HashViolation;
        }
    }
    let status = resp.status();
    if status.is_server_error() {
        metrics.upstream_error(pool_id, UpstreamErrorKind::Status5xx);
        if outcome == Outcome::Success {
            outcome = Outcome::Error;
        }
        if pool.record_failure(&backend) {
            warn!(pool = %pool_id, backend = %backend.addr, "backend ejected after consecutive failures");
        }
    } else {
        backend.record_success();
    }
    metrics.request(Charge::Pool(pool_id), status.as_u16());
    metrics.backend_response(pool_id, &backend, status.as_u16());
    conn.shared
        .stats
        .record_at(conn.shared.stats.ms_of(now), pool_id, latency, outcome);

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
    if switching {
        let down = match (&conn.upgrades, downstream_upgrade) {
            (Upgrades::Manual(slot), Some(_)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(tx);
                }
                Some(Downstream::Manual(rx))
            }
            (Upgrades::Hyper, Some(on)) => Some(Downstream::Hyper(on)),
            (_, None) => None,
        };
        let (Some(down), Some(up)) = (down, resp.extensions_mut().remove::<OnUpgrade>()) else {
            return Err(ProxyError::Upstream {
                pool: pool_id,
                backend: backend.addr.clone(),
                message: "101 Switching Protocols without an upgrade request".into(),
            });
        };
        conn.framing.set_switched();
        tokio::spawn(tunnel(
            down,
            up,
            guard,
            pool_id,
            conn.shared.routes.clone(),
            s.tunnel_grace,
        ));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    if resp.body().is_end_stream() {
        backend.conns.checkin(tx);
        return Ok(resp.map(|b| ProxyBody::upstream(b, guard, None, table.settings.clone())));
    }
    let _ = &mut tx;
    Ok(resp.map(|b| ProxyBody::upstream(b, guard, Some(tx), table.settings.clone())))
}

/// The client side of a tunnel, once the response has switched protocols.
enum Downstream {
    Hyper(OnUpgrade),
    Manual(tokio::sync::oneshot::Receiver<PlainIo>),
}

/// Copies bytes both ways until either side ends.
async fn pump<D, U>(mut down: D, mut up: U, backend: &str)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        debug!(%backend, error = %e, "upgraded connection ended");
    }
}

/// Copies bytes both ways once both sides have switched protocols. The connection stays
/// on the backend (and so the pool) that accepted the upgrade.
async fn tunnel(
    down: Downstream,
    up: OnUpgrade,
    guard: InflightGuard,
    pool: PoolId,
    routes: Arc<RouteHandle>,
    grace: Duration,
) {
    let backend = &guard.backend().addr;
    let copy = async {
        let up = match up.await {
            Ok(up) => TokioIo::new(up),
            Err(e) => return debug!(%backend, error = %e, "upgrade failed"),
        };
        match down {
            Downstream::Hyper(down) => match down.await {
                Ok(down) => pump(TokioIo::new(down), up, backend).await,
                Err(e) => debug!(%backend, error = %e, "upgrade failed"),
            },
            Downstream::Manual(down) => match down.await {
                Ok(down) => pump(down, up, backend).await,
                Err(_) => debug!(%backend, "the client connection ended before the upgrade"),
            },
        }
    };
    // Once the pool takes no new requests (a rollback, a drain, weight 0), the tunnel
    // gets `grace` to finish, then it is closed: a rolled-back candidate keeps no clients.
    let evicted = async {
        let mut tick = tokio::time::interval(TUNNEL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !routes.load().takes_requests(pool) {
                break;
            }
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        _ = copy => {}
        _ = evicted => debug!(backend = %guard.backend().addr, %pool,
            "closing an upgraded connection: its pool no longer takes requests"),
    }
}

/// How often an upgraded connection checks that its pool still takes requests.
const TUNNEL_CHECK: Duration = Duration::from_millis(250);

/// Sorts a send error into who is at fault.
fn classify(pool: PoolId, backend: &str, e: hyper::Error) -> ProxyError {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(RequestBodyError::TooLarge(BodyTooLarge { limit })) =
            err.downcast_ref::<RequestBodyError>()
        {
            return ProxyError::BodyTooLarge { limit: *limit };
        }
        if let Some(RequestBodyError::Client(c)) = err.downcast_ref::<RequestBodyError>() {
            return ProxyError::ClientBody(c.to_string());
        }
        source = err.source();
    }
    ProxyError::Upstream {
        pool,
        backend: backend.to_string(),
        message: e.to_string(),
    }
}
