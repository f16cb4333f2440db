//! METRICS: the Prometheus exporter and the per-request counters.
//!
//! Each running proxy owns its own recorder (no global one), so several can live in one
//! process (tests, the demo). Every handle the request path touches is registered once at
//! start-up and cached here: recording is an atomic add, never a registry lookup.
//!
//! [`names`] holds every name with its help text; [`window`] the live per-pool statistics
//! (a ring of short buckets) the rollout gates judge; [`http`] the read-only HTTP API on
//! the metrics listener.

pub mod http;
pub mod names;
pub mod window;

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::config::PoolId;
use crate::proxy::backend::Backend;

/// The commit the binary was built from: `SWITCHYARD_COMMIT` in the build's environment
/// (release builds set it, see docs/operations.md), else `unknown`.
pub const COMMIT: &str = match option_env!("SWITCHYARD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Who a request is charged to in `switchyard_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Pool(PoolId),
    /// The proxy answered itself (bad request, hash missing, ...): no pool is charged.
    Proxy,
}

impl Charge {
    fn index(self) -> usize {
        match self {
            Charge::Pool(p) => p.index(),
            Charge::Proxy => 2,
        }
    }
}

/// Kinds of upstream failure, charged to the pool that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Status5xx,
    Hash,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 5] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::Status5xx,
        Self::Hash,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Status5xx => "status_5xx",
            Self::Hash => "hash",
        }
    }
}

/// Why the proxy refused a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Smuggling,
    HeaderTooLarge,
    BodyTooLarge,
    HashMissing,
    HashMismatch,
    NoBackend,
    BadRequest,
    HeaderTimeout,
    RateLimited,
    PoolConcurrency,
    BadHost,
    AmbiguousHeader,
    BodyTimeout,
    RequestTimeout,
}

impl Rejection {
    const ALL: [Rejection; 14] = [
        Self::Smuggling,
        Self::HeaderTooLarge,
        Self::BodyTooLarge,
        Self::HashMissing,
        Self::HashMismatch,
        Self::NoBackend,
        Self::BadRequest,
        Self::HeaderTimeout,
        Self::RateLimited,
        Self::PoolConcurrency,
        Self::BadHost,
        Self::AmbiguousHeader,
        Self::BodyTimeout,
        Self::RequestTimeout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smuggling => "smuggling",
            Self::HeaderTooLarge => "header_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::HashMissing => "hash_missing",
            Self::HashMismatch => "hash_mismatch",
            Self::NoBackend => "no_backend",
            Self::BadRequest => "bad_request",
            Self::HeaderTimeout => "header_timeout",
            Self::RateLimited => "rate_limited",
            Self::PoolConcurrency => "pool_concurrency",
            Self::BadHost => "bad_host",
            Self::AmbiguousHeader => "ambiguous_header",
            Self::BodyTimeout => "body_timeout",
            Self::RequestTimeout => "request_timeout",
        }
    }
}

/// Reason of a constitutional-hash violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashReason {
    Missing,
    Mismatch,
}

impl HashReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Mismatch => "mismatch",
        }
    }
}

/// Cached metric handles plus the exporter that renders them.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `[charge][status class 1..=5 - 1]`
    requests: [[Counter; 5]; 3],
    duration: [Histogram; 2],
    upstream_errors: [[Counter; 5]; 2],
    /// `[pool][reason]` for responses.
    response_violations: [[Counter; 2]; 2],
    request_violations: [Counter; 2],
    rejected: [Counter; 14],
    pub green_weight: Gauge,
    pub generation: Gauge,
    pub connections_active: Gauge,
    pub connections_parked: Gauge,
    pub accept_errors: Counter,
    retries: [Counter; 2],
    rate_limited: Counter,
    pub rate_limit_keys: Gauge,
    pub rate_limit_keys_max: Gauge,
    rate_limit_evictions: Counter,
    pool_concurrency_rejected: [Counter; 2],
    /// `[queue_full, write_error]`
    pub access_log_dropped: [Counter; 2],
    reload_success: Gauge,
    reload_timestamp: Gauge,
    process: metrics_process::Collector,
}

/// Latency buckets in seconds: dense below the 5 ms P99 target, sparse above.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn meta() -> Metadata<'static> {
    Metadata::new("switchyard", Level::INFO, Some(module_path!()))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::REQUEST_DURATION_SECONDS.to_string()),
                DURATION_BUCKETS,
            )
            .expect("static bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        for (name, help) in names::HELP {
            // The exporter keeps one description per name whatever the kind.
            recorder.describe_counter((*name).into(), None, (*help).into());
        }
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &meta())
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &meta());

        let charges = ["blue", "green", "none"];
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let requests = charges.map(|pool| {
            classes.map(|class| {
                counter(
                    names::REQUESTS_TOTAL,
                    vec![Label::new("pool", pool), Label::new("code_class", class)],
                )
            })
        });
        let duration = PoolId::ALL.map(|p| {
            recorder.register_histogram(
                &Key::from_parts(
                    names::REQUEST_DURATION_SECONDS,
                    vec![Label::new("pool", p.as_str())],
                ),
                &meta(),
            )
        });
        let upstream_errors = PoolId::ALL.map(|p| {
            UpstreamErrorKind::ALL.map(|k| {
                counter(
                    names::UPSTREAM_ERRORS_TOTAL,
                    vec![
                        Label::new("pool", p.as_str()),
                        Label::new("kind", k.as_str()),
                    ],
                )
            })
        });
        let violation = |pool: &'static str, direction: &'static str, reason: HashReason| {
            counter(
                names::HASH_VIOLATIONS_TOTAL,
                vec![
                    Label::new("pool", pool),
                    Label::new("direction", direction),
                    Label::new("reason", reason.as_str()),
                ],
            )
        };
        let reasons = [HashReason::Missing, HashReason::Mismatch];
        let response_violations =
            PoolId::ALL.map(|p| reasons.map(|r| violation(p.as_str(), "response", r)));
        let request_violations = reasons.map(|r| violation("none", "request", r));
        let rejected = Rejection::ALL.map(|r| {
            counter(
                names::REJECTED_REQUESTS_TOTAL,
                vec![Label::new("reason", r.as_str())],
            )
        });

        recorder
            .register_gauge(
                &Key::from_parts(
                    names::BUILD_INFO,
                    vec![
                        Label::new("version", env!("CARGO_PKG_VERSION")),
                        Label::new("commit", COMMIT),
                    ],
                ),
                &meta(),
            )
            .set(1.0);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let reload_success = gauge(names::CONFIG_LAST_RELOAD_SUCCESS);
        let reload_timestamp = gauge(names::RELOAD_SUCCESS_TIME);
        // The config in hand was loaded and validated just before.
        reload_success.set(1.0);
        reload_timestamp.set(unix_now());

        Arc::new(Metrics {
            reload_success,
            reload_timestamp,
            process,
            requests,
            duration,
            upstream_errors,
            response_violations,
            request_violations,
            rejected,
            green_weight: gauge(names::GREEN_WEIGHT_RATIO),
            generation: gauge(names::GENERATION),
            connections_active: gauge(names::CONNECTIONS_ACTIVE),
            connections_parked: gauge(names::CONNECTIONS_PARKED),
            accept_errors: counter(names::ACCEPT_ERRORS_TOTAL, vec![]),
            retries: PoolId::ALL
                .map(|p| counter(names::RETRIES_TOTAL, vec![Label::new("pool", p.as_str())])),
            rate_limited: counter(names::RATE_LIMITED_TOTAL, vec![]),
            rate_limit_keys: gauge(names::RATE_LIMIT_KEYS),
            rate_limit_keys_max: gauge(names::RATE_LIMIT_KEYS_MAX),
            rate_limit_evictions: counter(names::RATE_LIMIT_EVICTIONS_TOTAL, vec![]),
            pool_concurrency_rejected: PoolId::ALL.map(|p| {
                counter(
                    names::POOL_CONCURRENCY_REJECTED_TOTAL,
                    vec![Label::new("pool", p.as_str())],
                )
            }),
            access_log_dropped: ["queue_full", "write_error"].map(|r| {
                counter(
                    names::ACCESS_LOG_DROPPED_TOTAL,
                    vec![Label::new("reason", r)],
                )
            }),
            handle,
            recorder,
        })
    }

    /// The Prometheus text exposition of every metric. The `process_*` values are read
    /// from /proc here (a few small file reads per scrape), never on the request path.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// The outcome of a config reload: success 1 and the time, or success 0 (time kept).
    pub fn config_reloaded(&self, ok: bool) {
        self.reload_success.set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.reload_timestamp.set(unix_now());
        }
    }

    /// Sets the expiry gauges from a `status` reply's `tls` list (scrape time).
    pub fn observe_certificates(&self, tls: &serde_json::Value) {
        for listener in tls.as_array().into_iter().flatten() {
            let listen = listener["listen"].as_str().unwrap_or("-").to_string();
            for cert in listener["certificates"].as_array().into_iter().flatten() {
                let Some(not_after) = cert["not_after_unix"].as_i64() else {
                    continue;
                };
                let name = cert["names"][0]
                    .as_str()
                    .or_else(|| cert["file"].as_str())
                    .unwrap_or("-")
                    .to_string();
                self.gauge(
                    names::CERT_EXPIRY,
                    vec![
                        Label::new("listener", listen.clone()),
                        Label::new("name", name),
                    ],
                )
                .set(not_after as f64);
            }
        }
    }

    /// Registers `backend`'s response counters now, so that its first request finds them.
    pub fn register_backend(&self, pool: PoolId, backend: &Backend) {
        backend
            .responses
            .get_or_init(|| self.backend_counters(pool, &backend.addr));
        backend
            .opened
            .get_or_init(|| self.opened_counter(pool, &backend.addr));
    }

    fn opened_counter(&self, pool: PoolId, addr: &str) -> Counter {
        self.counter(
            names::UPSTREAM_CONNECTIONS_OPENED_TOTAL,
            vec![
                Label::new("pool", pool.as_str()),
                Label::new("backend", addr.to_string()),
            ],
        )
    }

    /// A new connection to `backend` carried a request (not taken from the idle pool).
    pub fn upstream_connection_opened(&self, pool: PoolId, backend: &Backend) {
        backend
            .opened
            .get_or_init(|| self.opened_counter(pool, &backend.addr))
            .increment(1);
    }

    fn backend_counters(&self, pool: PoolId, addr: &str) -> [Counter; 5] {
        ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.counter(
                names::BACKEND_REQUESTS_TOTAL,
                vec![
                    Label::new("pool", pool.as_str()),
                    Label::new("backend", addr.to_string()),
                    Label::new("code_class", class),
                ],
            )
        })
    }

    /// A response from `backend`: one load of its handles (registered with the route table;
    /// a backend added by a reload registers at its first response) and one atomic add.
    pub fn backend_response(&self, pool: PoolId, backend: &Backend, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        backend
            .responses
            .get_or_init(|| self.backend_counters(pool, &backend.addr))[class]
            .increment(1);
    }

    /// Folds recorded histogram samples into their buckets; run periodically.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// A gauge or counter outside the per-request set (control plane: rollout, health).
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &meta())
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &meta())
    }

    pub fn request(&self, charge: Charge, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[charge.index()][class].increment(1);
    }

    pub fn duration(&self, pool: PoolId, seconds: f64) {
        self.duration[pool.index()].record(seconds);
    }

    pub fn upstream_error(&self, pool: PoolId, kind: UpstreamErrorKind) {
        self.upstream_errors[pool.index()][kind as usize].increment(1);
    }

    pub fn response_violation(&self, pool: PoolId, reason: HashReason) {
        self.response_violations[pool.index()][reason as usize].increment(1);
    }

    pub fn request_violation(&self, reason: HashReason) {
        self.request_violations[reason as usize].increment(1);
    }

    pub fn retry(&self, pool: PoolId) {
        self.retries[pool.index()].increment(1);
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].increment(1);
    }

    /// A request over its client's rate limit (answered 429).
    pub fn rate_limited(&self) {
        self.rate_limited.increment(1);
    }

    /// What a rate-limit check did to the client table.
    pub fn rate_table(&self, inserted: bool, evicted: bool) {
        if evicted {
            self.rate_limit_evictions.increment(1);
        } else if inserted {
            self.rate_limit_keys.increment(1.0);
        }
    }

    /// A request refused because `pool` was at its in-flight cap (answered 503).
    pub fn pool_concurrency_rejected(&self, pool: PoolId) {
        self.pool_concurrency_rejected[pool.index()].increment(1);
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
