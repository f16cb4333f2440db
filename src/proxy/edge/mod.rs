//! DATA PLANE: edge protection and records — what a request meets at the door and on the
//! way out, in order: [`client`] (who is asking, after `proxy.trusted_hops`),
//! [`request_id`], [`ratelimit`] (429), [`concurrency`] caps per pool (503), then, on every
//! response, [`secheaders`], and at the end of the response body the [`access_log`] line
//! ([`record`]).
//!
//! Settings ([`EdgeSettings`]) are part of the route table's [`Settings`], built once per
//! config; state that must outlive a reload (the client table, the in-flight counters, the
//! log writer) is in [`Edge`], shared by every connection. Every stage is off by default
//! except request ids and security headers, and an off stage costs a branch.
//!
//! [`Settings`]: crate::proxy::settings::Settings

pub mod access_log;
pub mod client;
pub mod concurrency;
pub mod ratelimit;
pub mod record;
pub mod request_id;
pub mod secheaders;

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};

use crate::config::{Config, PoolId, RateLimit, RateLimitKey};
use crate::metrics::Metrics;
use access_log::{AccessLog, RateVerdict};
use concurrency::{PoolCap, PoolCounters};
use ratelimit::{Limit, RateTable, Verdict};
use secheaders::SecurityHeaders;

/// Which listener accepted a connection: 0 for the plain listeners, `i + 1` for TLS
/// listener `i` (`[[proxy.tls]]` in config order).
pub type ListenerIndex = usize;

/// A listener's rate limit, ready to check.
#[derive(Debug, Clone)]
pub struct ZoneLimit {
    pub limit: Limit,
    /// Key space: 0 for `[proxy.rate_limit]`, `i + 1` for TLS listener `i` with its own.
    pub scope: u64,
    pub key: RateLimitKey,
}

impl ZoneLimit {
    fn new(r: &RateLimit, scope: u64) -> Option<ZoneLimit> {
        r.is_on().then(|| ZoneLimit {
            limit: Limit::new(r.requests, r.period, r.burst),
            scope,
            key: r.key.clone(),
        })
    }
}

/// The edge part of the per-request settings.
#[derive(Debug)]
pub struct EdgeSettings {
    /// Indexed by [`ListenerIndex`].
    pub rate_limits: Box<[Option<ZoneLimit>]>,
    pub trusted_hops: u32,
    /// `[blue, green]`.
    pub caps: [PoolCap; 2],
    pub security: SecurityHeaders,
    pub request_id: Option<HeaderName>,
    pub include_query: bool,
}

impl EdgeSettings {
    pub fn from_config(cfg: &Config) -> EdgeSettings {
        let p = &cfg.proxy;
        let default = ZoneLimit::new(&p.rate_limit, 0);
        let tls = p.tls.iter().enumerate().map(|(i, t)| match &t.rate_limit {
            None => default.clone(),
            Some(own) => ZoneLimit::new(own, i as u64 + 1),
        });
        EdgeSettings {
            rate_limits: std::iter::once(default.clone()).chain(tls).collect(),
            trusted_hops: p.trusted_hops,
            caps: PoolId::ALL.map(|id| PoolCap::from_config(&p.concurrency, id)),
            security: SecurityHeaders::from_config(&cfg.security_headers),
            request_id: cfg.request_id.header.clone(),
            include_query: cfg.access_log.include_query,
        }
    }
}

/// Edge state shared by every connection and kept across reloads.
#[derive(Debug)]
pub struct Edge {
    pub limiter: RateTable,
    pub inflight: PoolCounters,
    /// `None` when `[access_log]` is off (fixed at start).
    pub access_log: Option<AccessLog>,
}

/// The rate limiter's clock: nanoseconds since the first [`Edge`] of the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Edge {
    /// Sizes the client table and starts the access-log writer (opening its file).
    pub fn new(cfg: &Config, metrics: &Metrics) -> std::io::Result<Edge> {
        epoch();
        let limiter = RateTable::new(cfg.proxy.rate_limit_max_keys);
        metrics.rate_limit_keys_max.set(limiter.capacity() as f64);
        Ok(Edge {
            limiter,
            inflight: PoolCounters::default(),
            access_log: AccessLog::start(&cfg.access_log, metrics.access_log_dropped.clone())?,
        })
    }

    /// The rate-limit stage for a request that arrived on `listener` at `now`:
    /// `Err(retry_after)` when its client is over the limit.
    pub fn check_rate(
        &self,
        settings: &EdgeSettings,
        listener: ListenerIndex,
        headers: &HeaderMap,
        client: IpAddr,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<RateVerdict, Duration> {
        let Some(zone) = settings.rate_limits.get(listener).and_then(Option::as_ref) else {
            return Ok(RateVerdict::Off);
        };
        let key = match &zone.key {
            RateLimitKey::Header(name) => match headers.get(name) {
                Some(v) => self.limiter.header_key(zone.scope, v.as_bytes()),
                None => self.limiter.client_key(zone.scope, client),
            },
            RateLimitKey::Client => self.limiter.client_key(zone.scope, client),
        };
        let now_ns =
            u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX);
        let check = self.limiter.check(key, zone.limit, now_ns);
        if check.inserted {
            metrics.rate_table(check.inserted, check.evicted);
        }
        match check.verdict {
            Verdict::Allowed => Ok(RateVerdict::Pass),
            Verdict::Limited { retry_after } => Err(retry_after),
        }
    }
}
