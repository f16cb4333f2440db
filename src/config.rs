//! Configuration, shared by both planes: the data plane reads listeners, pools, split,
//! timeouts and limits; the control plane reads admin, state and rollout.
//!
//! The path is file → `raw` serde structs (every table `deny_unknown_fields`) →
//! `validate` → [`Config`]. Errors name the dotted key (`pools.green.backends[1]`) and
//! say how to fix the value. `config/switchyard.toml` documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod backend;
mod edge;
mod fields;
mod fleet;
mod hooks;
mod locate;
mod pool;
mod query;
mod raw;
mod rollout;
mod units;
mod validate;

#[cfg(test)]
mod tests;

pub use fleet::{EtcdEndpoint, FleetConfig};
pub use hooks::{HookConfig, HookEvent, HookFormat, HookUrl};
pub use query::QueryGateConfig;
pub use units::{parse_duration, parse_percent_bp};

/// `[rollout.gates]`.
pub use crate::control::rollout::GateLimits;

/// One of the two upstream pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolId {
    Blue,
    Green,
}

impl PoolId {
    pub const ALL: [PoolId; 2] = [PoolId::Blue, PoolId::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolId::Blue => "blue",
            PoolId::Green => "green",
        }
    }

    pub fn other(self) -> PoolId {
        match self {
            PoolId::Blue => PoolId::Green,
            PoolId::Green => PoolId::Blue,
        }
    }

    /// Position in `[blue, green]` arrays such as [`Config::pools`].
    pub fn index(self) -> usize {
        match self {
            PoolId::Blue => 0,
            PoolId::Green => 1,
        }
    }

    /// Case-insensitive `"blue"` / `"green"`.
    pub fn parse(s: &str) -> Option<PoolId> {
        PoolId::ALL
            .into_iter()
            .find(|id| id.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about a missing or wrong constitutional hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashMode {
    Enforce,
    Report,
    Off,
}

impl HashMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HashMode::Enforce => "enforce",
            HashMode::Report => "report",
            HashMode::Off => "off",
        }
    }
}

/// Where the split reads a request's stable key from, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    None,
    Cookie(String),
    Header(http::HeaderName),
}

/// The validated configuration. Build it with [`Config::load`] or [`Config::from_toml_str`].
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    /// `[blue, green]`; index with [`PoolId::index`] or use [`Config::pool`].
    pub pools: [PoolConfig; 2],
    pub split: SplitConfig,
    pub constitution: ConstitutionConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub state: StateConfig,
    pub rollout: RolloutConfig,
    pub security_headers: SecurityHeadersConfig,
    pub request_id: RequestIdConfig,
    pub access_log: AccessLogConfig,
    /// `[fleet]`: several instances sharing one route table on etcd; `None` without it.
    pub fleet: Option<FleetConfig>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text)
            .map_err(|err| ConfigError::Syntax(locate::describe(text, &err)))?;
        validate::validate(raw)
    }

    pub fn pool(&self, id: PoolId) -> &PoolConfig {
        &self.pools[id.index()]
    }
}

/// `[proxy]`: listeners, connection limits and timeouts of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    pub tls: Vec<TlsListenerConfig>,
    /// 0 means one worker per CPU core.
    pub workers: usize,
    pub max_connections: usize,
    /// How many X-Forwarded-For entries, counted from the right, are our own proxies.
    pub trusted_hops: u32,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub retries: RetriesConfig,
    /// Bind listeners with SO_REUSEPORT so a new process can take them over (zero-downtime
    /// restart). Default true.
    pub reuse_port: bool,
    /// When a pool is drained, its downstream connections are closed gradually over this
    /// window (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) so clients rebalance.
    pub drain_window: Duration,
    /// `[proxy.rate_limit]`: the limit of the plain listeners and of every TLS listener
    /// without its own.
    pub rate_limit: RateLimit,
    /// `[proxy.rate_limit] max_keys`: clients tracked at once, across all listeners.
    pub rate_limit_max_keys: usize,
    pub concurrency: ConcurrencyConfig,
}

/// A per-client request rate limit (GCRA, the token bucket's exact twin): `burst` requests
/// at once, refilled at `requests` per `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per `period`; 0 turns the limit off.
    pub requests: u32,
    pub period: Duration,
    /// Bucket size: requests a quiet client may send at once. At least 1 when on.
    pub burst: u32,
    pub key: RateLimitKey,
}

impl RateLimit {
    pub fn is_on(&self) -> bool {
        self.requests > 0
    }
}

/// Whom a rate limit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client address after the `proxy.trusted_hops` rule.
    Client,
    /// The value of this header (an API key, say); requests without it count by client address.
    Header(http::HeaderName),
}

/// `[proxy.concurrency]`: caps on in-flight requests per pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// `[blue, green]`; 0 means no cap.
    pub max_inflight: [usize; 2],
    /// Scale each cap with the pool's current share of new requests (plus `floor`).
    pub by_weight: bool,
    /// Added to a scaled cap, so a pool at 0.5% still takes a few requests.
    pub floor: usize,
}

/// `[security_headers]`: response headers added to every response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeadersConfig {
    pub headers: Vec<SecurityHeader>,
}

/// One security header. `Strict-Transport-Security` is only ever sent on TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityHeader {
    pub name: http::HeaderName,
    pub value: http::HeaderValue,
    pub mode: HeaderMode,
}

/// What to do when the response already has the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// Keep the backend's value; add ours only when it sent none.
    SetIfAbsent,
    /// Always replace it with ours.
    Override,
}

/// `[request_id]`: the request id header, kept from the client when valid, else generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdConfig {
    /// `None` when request ids are off.
    pub header: Option<http::HeaderName>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `None` when the access log is off.
    pub target: Option<AccessLogTarget>,
    pub include_query: bool,
    /// Lines waiting for the writer; beyond that, lines are dropped and counted.
    pub queue: usize,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Reopened on SIGUSR1, for logrotate.
    File(PathBuf),
}

/// `[[proxy.tls]]`: one TLS listener; the certificate is picked by SNI.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    pub certs: Vec<CertPair>,
    /// `[proxy.tls.rate_limit]`: this listener's own limit and buckets; `None` shares
    /// `[proxy.rate_limit]` (limit and buckets) with the plain listeners.
    pub rate_limit: Option<RateLimit>,
}

/// PEM certificate chain and private key. Existence is checked when TLS is set up, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[proxy.timeouts]`.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub header_read: Duration,
    /// Longest wait for the next bytes of a request body the client is sending.
    pub body_idle: Duration,
    /// The whole request (head and body) is to be read within this, from its start.
    pub request: Duration,
    pub upstream_response: Duration,
    pub idle: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is closed.
    pub tunnel_idle: Duration,
    pub upstream_idle: Duration,
    pub shutdown_grace: Duration,
    pub tls_handshake: Duration,
}

/// `[proxy.limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
}

/// `[pools.blue]` / `[pools.green]`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `host:port` strings as written; names are resolved by the data plane.
    pub backends: Vec<String>,
    pub max_idle_per_backend: usize,
    /// TLS to the backends (`tls = true`), with an optional CA bundle and SNI name.
    pub tls: Option<UpstreamTls>,
    pub health: HealthConfig,
    pub passive: PassiveConfig,
}

/// `[pools.X] tls_ca`, `tls_sni`: how backends' certificates are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM bundle of trusted CAs; `None` uses the system bundle.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and checked against the certificate; `None` uses the backend host.
    pub sni: Option<String>,
}

/// `[pools.X.health]`: active checks, one request per backend per interval.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Path requested (`GET`); `None` (`path = ""`) disables active checks.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed checks that take a backend out of rotation.
    pub fall: u32,
    /// Consecutive passed checks that bring it back.
    pub rise: u32,
}

/// `[pools.X.passive]`: ejection on failures seen by requests.
#[derive(Debug, Clone)]
pub struct PassiveConfig {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejected_percent: u32,
}

/// `[proxy.retries]`: retries after a connect failure, never after a request was sent.
#[derive(Debug, Clone)]
pub struct RetriesConfig {
    /// Tries per request, the first included (1 disables retries).
    pub attempts: u32,
    /// Retries allowed as a share of requests over the last 10 s.
    pub budget_percent: u32,
    /// Retries always allowed per 10 s, whatever the share.
    pub min_retries: u32,
}

/// Basis points: green's share of new requests is `green_bp / 10_000`.
pub const FULL_BP: u16 = 10_000;

/// `[split]`: the starting weight and how requests are assigned to pools.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    /// Green's share in basis points, used when no state file exists.
    pub green_bp: u16,
    pub affinity: Affinity,
    pub override_header: Option<http::HeaderName>,
    pub override_token: Option<String>,
    /// Outside a rollout, a pool with a share but no backend in rotation hands its share to
    /// the other pool until a backend comes back.
    pub failover: bool,
}

/// `[constitution]`: the hash every request and response must carry.
#[derive(Debug, Clone)]
pub struct ConstitutionConfig {
    pub hash: String,
    pub header: http::HeaderName,
    pub requests: HashMode,
    pub responses: HashMode,
}

/// `[admin]`: the unix admin socket and who may use it.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub socket: PathBuf,
    pub mode: u32,
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
    pub readonly_uids: Vec<u32>,
    pub readonly_gids: Vec<u32>,
    pub audit_log: Option<PathBuf>,
    /// Connections of read-only peers at once (admin peers have their own limit).
    pub max_clients: usize,
    /// Connections of admin peers at once; past it the oldest idle one is closed.
    pub max_admin_clients: usize,
    /// A connection with no command for this long is closed (`watch` excepted).
    pub idle_timeout: Duration,
}

/// `[metrics]`: the Prometheus listener, `None` when disabled.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// `[state]`: where weights and rollout state persist.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub path: PathBuf,
}

/// `[rollout]`: steps and timing of the rollout controller.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Candidate weights in basis points, strictly increasing, ending at 10000.
    pub steps_bp: Vec<u16>,
    pub hold: Duration,
    pub bake: Duration,
    pub window: Duration,
    pub max_hold: Duration,
    pub tick: Duration,
    pub settle: Duration,
    /// `[rollout.gates]`: the plan's own type, so config and plan cannot drift apart.
    pub gates: GateLimits,
    /// `[[rollout.hooks]]`, in config order.
    pub hooks: Vec<std::sync::Arc<HookConfig>>,
    /// `[[rollout.gates.query]]`, in config order.
    pub queries: Vec<std::sync::Arc<QueryGateConfig>>,
}

/// Why a config was refused. Every message tells the operator what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong TOML type. Starts with
    /// ``key `a.b` at line L, column C:`` when the key is known.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// Valid TOML, but a value breaks a rule; `message` says how to fix it.
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Syntax(message) => message
                .strip_prefix("key `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(key, _)| key),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}
