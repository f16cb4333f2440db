//! DATA PLANE: the request on its way to a backend: the head rewritten for the backend,
//! then sent, with connect failures retried on another backend of the pool.

use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tracing::{debug, warn};

use super::Ctx;
use crate::config::PoolId;
use crate::metrics::UpstreamErrorKind;
use crate::proxy::backend::{Backend, InflightGuard, Pool};
use crate::proxy::body::{BodyTooLarge, LimitedBody, RequestBodyError};
use crate::proxy::edge::record::Trace;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::headers::front::HostPlan;
use crate::proxy::upstream::Sender;

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

/// A request rewritten for the backend.
pub(super) struct Outgoing {
    pub req: Request<LimitedBody>,
    /// HTTP/1.0 without a Host: the backend's address goes in, per attempt.
    pub host_is_backend: bool,
    /// The client asked to switch protocols (HTTP/1.1 `Upgrade`).
    pub upgrade: bool,
    /// The client side of that switch, if hyper offers one.
    pub downstream: Option<OnUpgrade>,
}

/// A request a backend answered.
pub(super) struct Sent {
    pub guard: InflightGuard,
    pub tx: Sender,
    pub resp: Response<Incoming>,
}

/// Rewrites an admitted request for the backend: hop-by-hop fields out, `X-Forwarded-*`
/// in, the Host the plan says, origin form, HTTP/1.1, and the body under its limit.
pub(super) fn rewrite(
    cx: &Ctx<'_>,
    mut parts: http::request::Parts,
    body: Incoming,
    host: HostPlan,
    trace: &mut Trace<'_>,
) -> Outgoing {
    let conn = cx.conn;
    let upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
    let downstream = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::add_forwarded(&mut parts.headers, &conn.client_ip, conn.proto);
    // The target's authority (HTTP/2 `:authority`, HTTP/1.1 absolute form) wins over Host;
    // HTTP/1.0 without either gets the backend's address, set per attempt.
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
    let (limit, settings) = (cx.s.limits.max_body_bytes, cx.table.settings.clone());
    let body = if trace.logging {
        let counter = Arc::new(AtomicU64::new(0));
        trace.bytes_in = Some(counter.clone());
        LimitedBody::counted(body, limit, counter, settings, cx.start)
    } else {
        LimitedBody::new(body, limit, settings, cx.start)
    };
    Outgoing {
        req: Request::from_parts(parts, body),
        host_is_backend,
        upgrade,
        downstream,
    }
}

/// Sends the request to a backend of `pool` and waits for the response head.
///
/// Nothing has reached a backend until a connection is up and the request is handed to
/// it, so connect failures (and pooled connections found closed) are retried: on another
/// backend of the same pool when there is one, within the pool's budget.
// Not an `async fn`: see the comment on the block.
#[allow(clippy::manual_async_fn)]
pub(super) fn forward<'a, 't>(
    cx: &'a Ctx<'t>,
    pool: &'a Pool,
    mut req: Request<LimitedBody>,
    host_is_backend: bool,
    trace: &'a mut Trace<'t>,
) -> impl Future<Output = Result<Sent, ProxyError>> + use<'a, 't> {
    // A block, not an `async fn`: an async fn's future keeps room for its arguments
    // besides their working copies, and the request head is large (the future grew by
    // its size, and hyper moves it into place for every request).
    async move {
        let s = cx.s;
        let mut failed: Option<(Arc<Backend>, ProxyError)> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(backend) = pool.pick_backend_except(failed.as_ref().map(|f| &f.0)) else {
                return Err(failed.map_or(ProxyError::NoBackend(pool.id), |f| f.1));
            };
            let guard = InflightGuard::new(backend.clone());
            if trace.logging {
                trace.backend = Some(backend.clone());
            }
            let checkout = match backend
                .conns
                .checkout(&backend.addr, backend.socket_addr)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let err = connect_failed(pool, backend, e.to_string());
                    if attempt >= s.attempts
                        || pool.backends.len() < 2
                        || !pool.retries.try_withdraw()
                    {
                        return Err(err);
                    }
                    debug!(error = %err, attempt, "retrying on another backend");
                    // Counted here only when retried; the error returned is counted by `handle`.
                    cx.metrics
                        .upstream_error(pool.id, UpstreamErrorKind::Connect);
                    cx.metrics.retry(pool.id);
                    failed = Some((backend.clone(), err));
                    continue;
                }
            };
            if host_is_backend {
                if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            let (reused, mut tx) = (checkout.reused, checkout.tx);
            if !reused {
                cx.metrics.upstream_connection_opened(pool.id, backend);
            }
            let timeout = s.upstream_response_timeout;
            let sent = tokio::time::timeout(timeout, tx.try_send_request(req)).await;
            let err = match sent {
                Ok(Ok(resp)) => return Ok(Sent { guard, tx, resp }),
                Ok(Err(mut e)) if reused && e.message().is_some() => {
                    // A pooled connection closed before taking the request: not sent, try again.
                    req = e.take_message().expect("checked just above");
                    continue;
                }
                Ok(Err(e)) => classify(pool.id, &backend.addr, e.into_error()),
                Err(_) => ProxyError::UpstreamTimeout {
                    pool: pool.id,
                    backend: backend.addr.clone(),
                    timeout,
                },
            };
            return Err(err);
        }
    }
}

/// A connect failure, counted against the backend (which it may eject).
fn connect_failed(pool: &Pool, backend: &Backend, message: String) -> ProxyError {
    if pool.record_failure(backend) {
        warn!(pool = %pool.id, backend = %backend.addr, "backend ejected after consecutive failures");
    }
    ProxyError::Connect {
        pool: pool.id,
        backend: backend.addr.clone(),
        message,
    }
}

/// Sorts a send error into who is at fault.
fn classify(pool: PoolId, backend: &str, e: hyper::Error) -> ProxyError {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<RequestBodyError>() {
            // The client's side of the request failed: the backend is not at fault.
            return match body {
                RequestBodyError::TooLarge(BodyTooLarge { limit }) => {
                    ProxyError::BodyTooLarge { limit: *limit }
                }
                RequestBodyError::Client(c) => ProxyError::ClientBody(c.to_string()),
                RequestBodyError::Stalled { after } => ProxyError::BodyTimeout { after: *after },
                RequestBodyError::TooSlow { within } => {
                    ProxyError::RequestTimeout { within: *within }
                }
            };
        }
        source = err.source();
    }
    ProxyError::Upstream {
        pool,
        backend: backend.to_string(),
        message: e.to_string(),
    }
}
