//! Every metric name switchyard exports, in one place, with its help text.
//!
//! Names follow Prometheus conventions: `switchyard_` prefix, units in the name.

pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "switchyard_request_duration_seconds";
pub const GREEN_WEIGHT_RATIO: &str = "switchyard_green_weight_ratio";
pub const GENERATION: &str = "switchyard_generation";
pub const ROLLOUT_PHASE: &str = "switchyard_rollout_phase";
pub const GATE_VALUE: &str = "switchyard_gate_value";
pub const HASH_VIOLATIONS_TOTAL: &str = "switchyard_hash_violations_total";
pub const ROLLBACKS_TOTAL: &str = "switchyard_rollbacks_total";
pub const HOOK_FAILURES_TOTAL: &str = "switchyard_hook_failures_total";
pub const BACKEND_HEALTHY: &str = "switchyard_backend_healthy";
pub const UPSTREAM_ERRORS_TOTAL: &str = "switchyard_upstream_errors_total";
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
pub const CONNECTIONS_PARKED: &str = "switchyard_connections_parked";
pub const REJECTED_REQUESTS_TOTAL: &str = "switchyard_rejected_requests_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "switchyard_accept_errors_total";
pub const RETRIES_TOTAL: &str = "switchyard_retries_total";
pub const RATE_LIMITED_TOTAL: &str = "switchyard_rate_limited_total";
pub const RATE_LIMIT_KEYS: &str = "switchyard_rate_limit_keys";
pub const RATE_LIMIT_KEYS_MAX: &str = "switchyard_rate_limit_keys_max";
pub const RATE_LIMIT_EVICTIONS_TOTAL: &str = "switchyard_rate_limit_evictions_total";
pub const POOL_CONCURRENCY_REJECTED_TOTAL: &str = "switchyard_pool_concurrency_rejected_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "switchyard_access_log_dropped_total";
pub const STATE_SAVE_FAILURES_TOTAL: &str = "switchyard_state_save_failures_total";
pub const FAILOVER_ACTIVE: &str = "switchyard_failover_active";
pub const BUILD_INFO: &str = "switchyard_build_info";
pub const BACKEND_REQUESTS_TOTAL: &str = "switchyard_backend_requests_total";
pub const UPSTREAM_CONNECTIONS_OPENED_TOTAL: &str = "switchyard_upstream_connections_opened_total";
pub const CERT_EXPIRY: &str = "switchyard_tls_certificate_expiry_timestamp_seconds";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "switchyard_config_last_reload_success";
pub const RELOAD_SUCCESS_TIME: &str = "switchyard_config_last_reload_success_timestamp_seconds";
pub const FLEET_INSTANCES: &str = "switchyard_fleet_instances";
pub const FLEET_LEADER: &str = "switchyard_fleet_leader";
pub const FLEET_LAG_SECONDS: &str = "switchyard_fleet_lag_seconds";
pub const STORE_UP: &str = "switchyard_store_up";

/// (name, help) for every metric, described once at start-up.
pub const HELP: &[(&str, &str)] = &[
    (REQUESTS_TOTAL, "Requests answered, by pool (blue, green, or none when the proxy answered itself) and status class."),
    (REQUEST_DURATION_SECONDS, "Time from request received to upstream response head, per pool."),
    (GREEN_WEIGHT_RATIO, "Share of new requests routed to the green pool (0..1)."),
    (GENERATION, "Route table and rollout generation."),
    (ROLLOUT_PHASE, "1 for the current rollout phase, 0 for the others."),
    (GATE_VALUE, "Current value of each rollout gate, per pool."),
    (HASH_VIOLATIONS_TOTAL, "Constitutional hash violations, by pool, direction (request, response) and reason (missing, mismatch)."),
    (ROLLBACKS_TOTAL, "Rollbacks, by reason."),
    (HOOK_FAILURES_TOTAL, "Rollout hook calls that failed after their retries (or found the queue full), by hook."),
    (BACKEND_HEALTHY, "1 when the backend is in rotation, 0 when it is not."),
    (UPSTREAM_ERRORS_TOTAL, "Upstream failures charged to a pool, by kind (connect, timeout, reset, status_5xx, hash)."),
    (CONNECTIONS_ACTIVE, "Open downstream connections."),
    (CONNECTIONS_PARKED, "Idle HTTP/1.1 keep-alive connections parked between requests (held without codec buffers); part of connections_active."),
    (REJECTED_REQUESTS_TOTAL, "Requests the proxy refused itself, by reason (smuggling, header_too_large, body_too_large, header_timeout, body_timeout, request_timeout, hash_missing, hash_mismatch, no_backend, bad_request, rate_limited, pool_concurrency)."),
    (RETRIES_TOTAL, "Requests retried on another backend after a connect failure (nothing had been sent)."),
    (ACCEPT_ERRORS_TOTAL, "Errors returned by accept(); the listener backs off after each."),
    (RATE_LIMITED_TOTAL, "Requests answered 429 because their client was over its rate limit; charged to no pool."),
    (RATE_LIMIT_KEYS, "Clients held in the rate-limit table."),
    (RATE_LIMIT_KEYS_MAX, "Most clients the rate-limit table holds (proxy.rate_limit.max_keys, rounded down to whole shards)."),
    (RATE_LIMIT_EVICTIONS_TOTAL, "Clients evicted from the full rate-limit table to make room for new ones."),
    (POOL_CONCURRENCY_REJECTED_TOTAL, "Requests answered 503 because their pool was at its in-flight cap (the proxy's decision, not a backend error), by pool."),
    (STATE_SAVE_FAILURES_TOTAL, "Route table or rollout changes whose state could not be written to the state file (refused, or applied unsaved for rollbacks and the daemon's own changes)."),
    (FAILOVER_ACTIVE, "1 while new requests go to the other pool because this pool has no backend in rotation (split.failover), else 0; by pool."),
    (FLEET_INSTANCES, "[fleet] Live instances registered in etcd (their lease is current)."),
    (FLEET_LEADER, "[fleet] 1 when this instance holds the leader key, else 0."),
    (FLEET_LAG_SECONDS, "[fleet] Age of the newest table change that a live instance has not applied yet (0 when all agree)."),
    (STORE_UP, "[fleet] 1 when this instance's last call to etcd succeeded, else 0."),
    (ACCESS_LOG_DROPPED_TOTAL, "Access log lines not written, by reason (queue_full: the writer fell behind; write_error)."),
    (BUILD_INFO, "Always 1; the labels carry the version and the commit the binary was built from."),
    (BACKEND_REQUESTS_TOTAL, "Responses received from each backend, by pool, backend (host:port) and status class."),
    (UPSTREAM_CONNECTIONS_OPENED_TOTAL, "Connections opened to each backend for requests (health checks not counted), by pool and backend; near the request rate means the idle pool is too small or the backend closes keep-alive connections."),
    (CERT_EXPIRY, "Unix time at which a served certificate expires (notAfter), by TLS listener and the certificate's first name."),
    (CONFIG_LAST_RELOAD_SUCCESS, "1 when the last config load or reload succeeded, 0 when the last reload failed (the old config stays)."),
    (RELOAD_SUCCESS_TIME, "Unix time of the last successful config load (start) or reload."),
];
