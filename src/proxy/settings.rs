//! DATA PLANE: the per-request settings, derived once from the config and carried in
//! the route table so that a request needs only the one snapshot load.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::config::{Affinity, Config, HashMode};
use crate::proxy::edge::EdgeSettings;

#[derive(Debug)]
pub struct Settings {
    pub hash_header: HeaderName,
    pub hash_value: HeaderValue,
    pub requests: HashMode,
    pub responses: HashMode,
    pub affinity: Affinity,
    pub override_header: Option<HeaderName>,
    pub override_token: Option<HeaderValue>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub upstream_response_timeout: Duration,
    /// Tries per request after connect failures, the first included.
    pub attempts: u32,
    /// How long an upgraded connection (WebSocket) may stay open once its pool takes no
    /// new requests (rolled back, drained, weight 0): `proxy.drain_window`.
    pub tunnel_grace: Duration,
    /// Rate limits, pool caps, security headers, request ids, access-log options.
    pub edge: EdgeSettings,
}

/// Header that carries the override token (see `split.override_token`).
pub static OVERRIDE_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-switchyard-token");

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let c = &cfg.constitution;
        Settings {
            hash_header: c.header.clone(),
            hash_value: HeaderValue::from_str(&c.hash)
                .expect("config validation guarantees a valid header value"),
            requests: c.requests,
            responses: c.responses,
            affinity: cfg.split.affinity.clone(),
            override_header: cfg.split.override_header.clone(),
            override_token: cfg
                .split
                .override_token
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok()),
            max_header_bytes: cfg.proxy.limits.max_header_bytes,
            max_headers: cfg.proxy.limits.max_headers,
            tunnel_grace: cfg.proxy.drain_window,
            max_body_bytes: cfg.proxy.limits.max_body_bytes,
            upstream_response_timeout: cfg.proxy.timeouts.upstream_response,
            attempts: cfg.proxy.retries.attempts,
            edge: EdgeSettings::from_config(cfg),
        }
    }
}
