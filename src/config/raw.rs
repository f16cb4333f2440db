//! The file as serde sees it: every key optional, every table `deny_unknown_fields`.
//! Values keep their written form here; `validate` turns them into typed settings
//! so that each error can name its key.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub proxy: Option<RawProxy>,
    pub pools: Option<RawPools>,
    pub split: Option<RawSplit>,
    pub constitution: Option<RawConstitution>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub state: Option<RawState>,
    pub rollout: Option<RawRollout>,
    pub security_headers: Option<RawSecurityHeaders>,
    pub request_id: Option<RawRequestId>,
    pub access_log: Option<RawAccessLog>,
    pub fleet: Option<RawFleet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub listen: Option<Vec<String>>,
    pub tls: Option<Vec<RawTls>>,
    pub workers: Option<usize>,
    pub max_connections: Option<usize>,
    pub trusted_hops: Option<u32>,
    pub timeouts: Option<RawTimeouts>,
    pub limits: Option<RawLimits>,
    pub retries: Option<RawRetries>,
    pub reuse_port: Option<bool>,
    pub drain_window: Option<RawDuration>,
    pub rate_limit: Option<RawRateLimit>,
    pub concurrency: Option<RawConcurrency>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub listen: Option<String>,
    pub certs: Option<Vec<RawCertPair>>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<RawDuration>,
    pub header_read: Option<RawDuration>,
    pub body_idle: Option<RawDuration>,
    pub request: Option<RawDuration>,
    pub upstream_response: Option<RawDuration>,
    pub idle: Option<RawDuration>,
    pub tunnel_idle: Option<RawDuration>,
    pub upstream_idle: Option<RawDuration>,
    pub shutdown_grace: Option<RawDuration>,
    pub tls_handshake: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_header_bytes: Option<RawSize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPools {
    pub blue: Option<RawPool>,
    pub green: Option<RawPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub backends: Option<Vec<String>>,
    pub max_idle_per_backend: Option<usize>,
    pub tls: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_sni: Option<String>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
}

/// `[pools.X.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
}

/// `[pools.X.passive]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub ejection: Option<RawDuration>,
    pub max_ejected_percent: Option<u32>,
}

/// `[proxy.retries]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    pub attempts: Option<u32>,
    pub budget_percent: Option<u32>,
    pub min_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplit {
    pub green_percent: Option<RawPercent>,
    pub affinity: Option<String>,
    pub override_header: Option<String>,
    pub override_token: Option<String>,
    pub failover: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConstitution {
    pub hash: Option<String>,
    pub header: Option<String>,
    pub requests: Option<String>,
    pub responses: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub socket: Option<String>,
    pub mode: Option<RawMode>,
    pub admin_uids: Option<Vec<u32>>,
    pub admin_gids: Option<Vec<u32>>,
    pub readonly_uids: Option<Vec<u32>>,
    pub readonly_gids: Option<Vec<u32>>,
    pub audit_log: Option<String>,
    pub max_clients: Option<usize>,
    pub max_admin_clients: Option<usize>,
    pub idle_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub etcd: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub instance: Option<String>,
    pub lease_ttl: Option<RawDuration>,
    pub publish_interval: Option<RawDuration>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    pub steps: Option<Vec<RawPercent>>,
    pub hold: Option<RawDuration>,
    pub bake: Option<RawDuration>,
    pub window: Option<RawDuration>,
    pub max_hold: Option<RawDuration>,
    pub tick: Option<RawDuration>,
    pub settle: Option<RawDuration>,
    pub gates: Option<RawGates>,
    pub hooks: Option<Vec<RawHook>>,
}

/// `[[rollout.hooks]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHook {
    pub name: Option<String>,
    pub on: Option<Vec<String>>,
    pub url: Option<String>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<u32>,
    pub headers: Option<std::collections::BTreeMap<String, RawHeaderValue>>,
    pub format: Option<String>,
    pub tls_ca: Option<String>,
}

/// `[[rollout.gates.query]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueryGate {
    pub name: Option<String>,
    pub prometheus: Option<String>,
    pub query: Option<String>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub interval: Option<RawDuration>,
    pub fail_windows: Option<u32>,
    pub timeout: Option<RawDuration>,
    pub tls_ca: Option<String>,
}

/// A hook header's value: the text itself, or `{ file = "PATH" }` (read at load, e.g. a token).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawHeaderValue {
    Text(String),
    File { file: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGates {
    pub p99_max: Option<RawDuration>,
    pub p99_ratio_max: Option<f64>,
    pub p99_min_delta: Option<RawDuration>,
    pub p50_max_delta: Option<RawDuration>,
    pub method: Option<String>,
    pub alpha: Option<f64>,
    pub error_rate_max: Option<f64>,
    pub error_rate_margin: Option<f64>,
    pub min_requests: Option<u64>,
    pub min_latency_samples: Option<u64>,
    pub fail_windows: Option<u32>,
    pub consecutive_errors: Option<u32>,
    pub hash_violations_max: Option<u32>,
    pub tripwire_error_rate: Option<f64>,
    /// `[[rollout.gates.query]]`.
    pub query: Option<Vec<RawQueryGate>>,
    pub tripwire_min_requests: Option<u64>,
}

/// `[proxy.rate_limit]` and `[proxy.tls.rate_limit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests: Option<u32>,
    pub period: Option<RawDuration>,
    pub burst: Option<u32>,
    pub key: Option<String>,
    pub max_keys: Option<usize>,
}

/// `[proxy.concurrency]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    pub max_inflight: Option<RawPerPool>,
    pub by_weight: Option<bool>,
    pub floor: Option<usize>,
}

/// `{ blue = N, green = M }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPerPool {
    pub blue: Option<usize>,
    pub green: Option<usize>,
}

/// `[security_headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecurityHeaders {
    pub headers: Option<Vec<RawSecurityHeader>>,
}

/// One entry of `security_headers.headers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecurityHeader {
    pub name: Option<String>,
    pub value: Option<String>,
    pub mode: Option<String>,
}

/// `[request_id]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestId {
    pub enabled: Option<bool>,
    pub header: Option<String>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub path: Option<String>,
    pub include_query: Option<bool>,
    pub queue: Option<usize>,
}

/// A duration as written (`"60s"`); the custom `expecting` makes a wrong TOML type
/// (say `hold = 60`) explain the expected form.
#[derive(Debug, Clone)]
pub(crate) struct RawDuration(pub String);

/// A percent as written: a TOML integer or float, kept as its decimal text so that
/// the two-decimal rule is checked exactly.
#[derive(Debug, Clone)]
pub(crate) struct RawPercent(pub String);

/// A byte size: an integer number of bytes or a string with a binary unit.
#[derive(Debug, Clone)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A file mode as a string of octal digits. Integers are refused on purpose:
/// `mode = 660` would silently mean decimal 660.
#[derive(Debug, Clone)]
pub(crate) struct RawMode(pub String);

struct TextVisitor(&'static str);

impl Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(
            "a duration string such as \"250ms\", \"60s\" or \"5m\"",
        ))
        .map(RawDuration)
    }
}

impl<'de> Deserialize<'de> for RawMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor(
            "a string of octal digits such as \"0660\" (quoted, so that it is read as octal)",
        ))
        .map(RawMode)
    }
}

impl<'de> Deserialize<'de> for RawPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PercentVisitor;
        impl Visitor<'_> for PercentVisitor {
            type Value = RawPercent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percent number such as 10 or 0.5 (not quoted)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPercent, E> {
                Ok(RawPercent(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPercent, E> {
                Ok(RawPercent(v.to_string()))
            }
            // f64's Display is the shortest text that reads back as the same number,
            // so 12.34 stays "12.34" and 12.345 stays "12.345".
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawPercent, E> {
                Ok(RawPercent(v.to_string()))
            }
        }
        d.deserialize_any(PercentVisitor)
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count such as 65536 or a string such as \"64KiB\" or \"1GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("byte count is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}
