//! DATA PLANE: the first two steps of a request: admit it (framing verdict, limits,
//! Host, rate limit, request hash), then route it (the pool, and the pool's cap).

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};

use super::Ctx;
use crate::config::{Affinity, HashMode, PoolId};
use crate::proxy::backend::Pool;
use crate::proxy::edge::access_log::{HashVerdict, RateVerdict};
use crate::proxy::edge::record::Trace;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::headers::front::{self, HostPlan};
use crate::proxy::route::RouteTable;
use crate::proxy::settings::{Settings, OVERRIDE_TOKEN_HEADER};

/// Admits a request head, or says why not: the framing scan's verdict, the limits and
/// Host rules, the rate limit, and the request's hash. Writes a fresh request id into
/// it. Returns what the forwarded Host is to be.
pub(super) fn admit<'a>(
    cx: &Ctx<'a>,
    parts: &mut http::request::Parts,
    client: IpAddr,
    fresh_id: Option<&HeaderValue>,
    trace: &mut Trace<'a>,
) -> Result<HostPlan, ProxyError> {
    let (s, metrics) = (cx.s, cx.metrics);
    let index = cx.conn.requests.fetch_add(1, Ordering::Relaxed);
    if cx.conn.framing.is_bad(index) {
        return Err(ProxyError::Smuggling(headers::Smuggling::AmbiguousLength));
    }
    let host = validate(parts, s)?;
    if let (Some(name), Some(id)) = (&s.edge.request_id, fresh_id) {
        parts.headers.insert(name, id.clone());
    }
    let edge = &cx.conn.shared.edge;
    let rate = edge.check_rate(
        &s.edge,
        cx.conn.listener,
        &parts.headers,
        client,
        cx.start,
        metrics,
    );
    match rate {
        Ok(verdict) => trace.rate_limit = verdict,
        Err(retry_after) => {
            trace.rate_limit = RateVerdict::Limited;
            metrics.rate_limited();
            return Err(ProxyError::RateLimited { retry_after });
        }
    }
    if s.requests != HashMode::Off {
        let verdict = headers::check_hash(&parts.headers, &s.hash.header, &s.hash.value);
        trace.hash_request = HashVerdict::of(verdict);
        if let Err(reason) = verdict {
            metrics.request_violation(reason);
            if s.requests == HashMode::Enforce {
                return Err(ProxyError::RequestHash(reason));
            }
        }
    }
    Ok(host)
}

/// Routes an admitted request: its pool, and a place under the pool's cap (kept in
/// `trace` until the response ends).
pub(super) fn route<'a>(
    cx: &Ctx<'a>,
    parts: &mut http::request::Parts,
    trace: &mut Trace<'a>,
) -> Result<&'a Pool, ProxyError> {
    let table = cx.table;
    let pool_id = choose_pool(parts, table);
    trace.pool = Some(pool_id);
    let cap = cx.s.edge.caps[pool_id.index()].limit(table.share_bp(pool_id));
    if let Some(limit) = cap {
        match cx.conn.shared.edge.inflight.try_acquire(pool_id, limit) {
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
    Ok(pool)
}

/// Validates a request head against the limits, framing and Host rules, and fields that
/// read as the hash or request-id header; says what the forwarded Host is to be.
fn validate(req: &http::request::Parts, s: &Settings) -> Result<HostPlan, ProxyError> {
    headers::check_framing(&req.headers).map_err(ProxyError::Smuggling)?;
    if req.headers.len() > s.limits.max_headers {
        return Err(ProxyError::TooManyHeaders {
            limit: s.limits.max_headers,
        });
    }
    let (size, twin) =
        front::size_and_twin(&req.headers, &s.hash.header, s.edge.request_id.as_ref());
    if size > s.limits.max_header_bytes {
        return Err(ProxyError::HeaderTooLarge {
            limit: s.limits.max_header_bytes,
        });
    }
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > s.limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge {
            limit: s.limits.max_body_bytes,
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
    if let Some(over) = &s.pool_override {
        let asked = req.headers.remove(&over.header);
        let token = req.headers.remove(&OVERRIDE_TOKEN_HEADER);
        if let Some(pool) = asked.and_then(|v| PoolId::parse(v.to_str().ok()?)) {
            let trusted = match &over.token {
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
