//! DATA PLANE: the per-request settings, derived once from the config and carried in
//! the route table so that a request needs only the one snapshot load.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::config::{Affinity, Config, HashMode, Limits};
use crate::proxy::edge::EdgeSettings;

#[derive(Debug)]
pub struct Settings {
    /// The constitutional hash every request and response is checked against.
    pub hash: HashContract,
    /// What a request, and a backend's response, without the exact hash gets.
    pub requests: HashMode,
    pub responses: HashMode,
    /// `split.affinity`: what keeps a client on one pool.
    pub affinity: Affinity,
    /// `split.override_header` and its token: a trusted request picks its pool.
    pub pool_override: Option<PoolOverride>,
    /// `[proxy.limits]`: the request head's size and field count, the body's size.
    pub limits: Limits,
    /// `proxy.timeouts.upstream_response`: the backend's response head is due within it.
    pub upstream_response_timeout: Duration,
    /// `proxy.timeouts.body_idle`: the client's next request-body bytes are due within it.
    pub body_idle_timeout: Duration,
    /// `proxy.timeouts.request`: the whole request is due within it, from its start.
    pub request_timeout: Duration,
    /// Tries per request after connect failures, the first included.
    pub attempts: u32,
    /// How long an upgraded connection (WebSocket) may stay open once its pool takes no
    /// new requests (rolled back, drained, weight 0): `proxy.drain_window`.
    pub tunnel_grace: Duration,
    /// `proxy.timeouts.tunnel_idle`: an upgraded connection with no bytes either way for
    /// this long is closed.
    pub tunnel_idle: Duration,
    /// Rate limits, pool caps, security headers, request ids, access-log options.
    pub edge: EdgeSettings,
}

/// The constitutional hash: the header's name and its exact value.
#[derive(Debug)]
pub struct HashContract {
    pub header: HeaderName,
    pub value: HeaderValue,
}

/// The pool-override header and the token that makes a request trusted to use it
/// (no token configured: no request is trusted).
#[derive(Debug)]
pub struct PoolOverride {
    pub header: HeaderName,
    pub token: Option<HeaderValue>,
}

/// Header that carries the override token (see `split.override_token`).
pub static OVERRIDE_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-switchyard-token");

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let c = &cfg.constitution;
        Settings {
            hash: HashContract {
                header: c.header.clone(),
                value: HeaderValue::from_str(&c.hash)
                    .expect("config validation guarantees a valid header value"),
            },
            requests: c.requests,
            responses: c.responses,
            affinity: cfg.split.affinity.clone(),
            pool_override: cfg
                .split
                .override_header
                .clone()
                .map(|header| PoolOverride {
                    header,
                    token: cfg
                        .split
                        .override_token
                        .as_deref()
                        .and_then(|t| HeaderValue::from_str(t).ok()),
                }),
            limits: cfg.proxy.limits.clone(),
            tunnel_grace: cfg.proxy.drain_window,
            tunnel_idle: cfg.proxy.timeouts.tunnel_idle,
            upstream_response_timeout: cfg.proxy.timeouts.upstream_response,
            body_idle_timeout: cfg.proxy.timeouts.body_idle,
            request_timeout: cfg.proxy.timeouts.request,
            attempts: cfg.proxy.retries.attempts,
            edge: EdgeSettings::from_config(cfg),
        }
    }
}
