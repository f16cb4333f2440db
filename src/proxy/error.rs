//! Errors of the request path, each tagged with who is to blame, and the one mapping from
//! error to HTTP status. Only upstream errors count against a pool (and so against a
//! rollout's candidate); client mistakes are charged to no pool.

use std::time::Duration;

use http::StatusCode;

use crate::config::PoolId;
use crate::metrics::{Charge, HashReason, Rejection, UpstreamErrorKind};
use crate::proxy::headers::front::HostProblem;
use crate::proxy::headers::Smuggling;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request refused: {}", .0.as_str())]
    Smuggling(Smuggling),
    #[error("request refused: {}", .0.as_str())]
    BadHost(HostProblem),
    /// A field a backend may read as the hash or request-id header (`_` for `-`).
    #[error("request field {0} reads as a header the proxy controls")]
    AmbiguousHeader(String),
    #[error("request header block exceeds {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request constitutional hash {}", .0.as_str())]
    RequestHash(HashReason),
    #[error("request body from the client failed: {0}")]
    ClientBody(String),
    /// The client sent no request-body bytes for `proxy.timeouts.body_idle`.
    #[error("request body stalled: no bytes from the client for {after:?}")]
    BodyTimeout { after: Duration },
    /// The client did not send the whole request within `proxy.timeouts.request`.
    #[error("request not received whole within {within:?}")]
    RequestTimeout { within: Duration },
    #[error("pool {0} has no backend in rotation")]
    NoBackend(PoolId),
    #[error("connect to {backend} ({pool}) failed: {message}")]
    Connect {
        pool: PoolId,
        backend: String,
        message: String,
    },
    #[error("{backend} ({pool}) sent no response head within {timeout:?}")]
    UpstreamTimeout {
        pool: PoolId,
        backend: String,
        timeout: Duration,
    },
    #[error("{backend} ({pool}) failed: {message}")]
    Upstream {
        pool: PoolId,
        backend: String,
        message: String,
    },
    #[error("{backend} ({pool}) answered with constitutional hash {}", .reason.as_str())]
    ResponseHash {
        pool: PoolId,
        backend: String,
        reason: HashReason,
    },
    /// The client is over its rate limit; charged to no pool.
    #[error("client over its rate limit; retry in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// The pool already has its cap of in-flight requests: the proxy's decision, so it is
    /// not an upstream error and the rollout gates never see it.
    #[error("pool {pool} is at its cap of {limit} in-flight requests")]
    PoolBusy { pool: PoolId, limit: usize },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Smuggling(_)
            | Self::ClientBody(_)
            | Self::BadHost(_)
            | Self::AmbiguousHeader(_) => StatusCode::BAD_REQUEST,
            Self::HeaderTooLarge { .. } | Self::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } | Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::RequestHash(_) => StatusCode::FORBIDDEN,
            Self::NoBackend(_) | Self::PoolBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Connect { .. } | Self::Upstream { .. } | Self::ResponseHash { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who the request is charged to.
    pub fn charge(&self) -> Charge {
        match self.upstream() {
            Some((pool, _)) => Charge::Pool(pool),
            None => Charge::Proxy,
        }
    }

    /// The pool at fault and how, for errors the upstream caused.
    pub fn upstream(&self) -> Option<(PoolId, UpstreamErrorKind)> {
        match self {
            Self::Connect { pool, .. } => Some((*pool, UpstreamErrorKind::Connect)),
            Self::UpstreamTimeout { pool, .. } => Some((*pool, UpstreamErrorKind::Timeout)),
            Self::Upstream { pool, .. } => Some((*pool, UpstreamErrorKind::Reset)),
            Self::ResponseHash { pool, .. } => Some((*pool, UpstreamErrorKind::Hash)),
            _ => None,
        }
    }

    /// Requests the proxy refused itself, for `switchyard_rejected_requests_total`.
    pub fn rejection(&self) -> Option<Rejection> {
        Some(match self {
            Self::Smuggling(_) => Rejection::Smuggling,
            Self::BadHost(_) => Rejection::BadHost,
            Self::AmbiguousHeader(_) => Rejection::AmbiguousHeader,
            Self::HeaderTooLarge { .. } | Self::TooManyHeaders { .. } => Rejection::HeaderTooLarge,
            Self::BodyTooLarge { .. } => Rejection::BodyTooLarge,
            Self::RequestHash(HashReason::Missing) => Rejection::HashMissing,
            Self::RequestHash(HashReason::Mismatch) => Rejection::HashMismatch,
            Self::NoBackend(_) => Rejection::NoBackend,
            Self::ClientBody(_) => Rejection::BadRequest,
            Self::BodyTimeout { .. } => Rejection::BodyTimeout,
            Self::RequestTimeout { .. } => Rejection::RequestTimeout,
            Self::RateLimited { .. } => Rejection::RateLimited,
            Self::PoolBusy { .. } => Rejection::PoolConcurrency,
            _ => return None,
        })
    }

    /// A short machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Smuggling(_) => "bad_framing",
            Self::BadHost(p) => p.code(),
            Self::AmbiguousHeader(_) => "ambiguous_header",
            Self::HeaderTooLarge { .. } | Self::TooManyHeaders { .. } => "header_too_large",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RequestHash(_) => "constitutional_hash",
            Self::ClientBody(_) => "bad_request",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::NoBackend(_) => "no_backend",
            Self::Connect { .. } | Self::Upstream { .. } => "upstream_unavailable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ResponseHash { .. } => "upstream_constitutional_hash",
            Self::RateLimited { .. } => "rate_limited",
            Self::PoolBusy { .. } => "pool_busy",
        }
    }

    /// Seconds for `Retry-After` (RFC 9110 §10.2.3), for refusals that pass with time.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            // Rounded up: a client that waits this long is let in.
            Self::RateLimited { retry_after } => {
                Some(retry_after.as_nanos().div_ceil(1_000_000_000).max(1) as u64)
            }
            Self::PoolBusy { .. } => Some(1),
            _ => None,
        }
    }

    /// The JSON body: `{"error":CODE,"reason":...}`; the hash reasons are `missing|mismatch`.
    pub fn body(&self) -> String {
        let reason = match self {
            Self::RequestHash(r) | Self::ResponseHash { reason: r, .. } => r.as_str(),
            Self::Smuggling(s) => s.as_str(),
            Self::BadHost(p) => p.as_str(),
            Self::AmbiguousHeader(name) => name.as_str(),
            _ => "",
        };
        let mut v = serde_json::json!({ "error": self.code(), "status": self.status().as_u16() });
        if !reason.is_empty() {
            v["reason"] = reason.into();
        }
        if let Self::PoolBusy { pool, .. } = self {
            v["pool"] = pool.as_str().into();
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}
