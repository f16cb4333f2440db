//! Raw → validated `Config`: defaults, ranges and cross-key rules. Every error
//! names its dotted key and says how to fix the value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::backend::parse_backend;
use super::fields::{
    duration_between, header_name, invalid, path, percent, size, socket_addr, MINUTE, POSITIVE,
    SECOND,
};
use super::raw::{
    RawAdmin, RawConfig, RawConstitution, RawDuration, RawLimits, RawPool, RawProxy, RawSplit,
    RawTimeouts, RawTls,
};
use super::rollout::rollout;
use super::units::parse_octal_mode;
use super::{
    AdminConfig, Affinity, CertPair, Config, ConfigError, ConstitutionConfig, HashMode, Limits,
    MetricsConfig, PoolConfig, PoolId, ProxyConfig, RateLimit, SplitConfig, StateConfig, Timeouts,
    TlsListenerConfig,
};

/// Checks every section in file order and returns the first error found.
pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let proxy = proxy(raw.proxy.unwrap_or_default())?;
    let raw_pools = raw.pools.unwrap_or_default();
    let pools = [
        pool(raw_pools.blue, PoolId::Blue)?,
        pool(raw_pools.green, PoolId::Green)?,
    ];
    let split = split(raw.split.unwrap_or_default())?;
    let constitution = constitution(raw.constitution.unwrap_or_default())?;
    if split.override_header.as_ref() == Some(&constitution.header) {
        return Err(invalid(
            "split.override_header",
            "is the same header as constitution.header; choose another name such as \"x-switchyard-pool\"",
        ));
    }
    let admin = admin(raw.admin.unwrap_or_default())?;
    let metrics = MetricsConfig {
        listen: match raw.metrics.and_then(|m| m.listen) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            Some(text) if text.is_empty() => None,
            Some(text) => Some(socket_addr("metrics.listen", &text)?),
        },
    };
    check_distinct_listeners(&proxy, &metrics)?;
    let state = StateConfig {
        path: path(
            "state.path",
            raw.state.and_then(|s| s.path),
            "/var/lib/switchyard/state.json",
        )?,
    };
    let rollout = rollout(raw.rollout.unwrap_or_default())?;
    let request_id =
        super::edge::request_id(raw.request_id.unwrap_or_default(), &constitution.header)?;
    if request_id.header.is_some() && request_id.header == split.override_header {
        return Err(invalid(
            "request_id.header",
            "is the same header as split.override_header; use another name, e.g. \"X-Request-Id\"",
        ));
    }
    let mut reserved = vec![&constitution.header];
    reserved.extend(request_id.header.as_ref());
    let security_headers =
        super::edge::security_headers(raw.security_headers.unwrap_or_default(), &reserved)?;
    let access_log = super::edge::access_log(raw.access_log.unwrap_or_default())?;
    let fleet = raw.fleet.map(super::fleet::fleet).transpose()?;
    Ok(Config {
        proxy,
        pools,
        split,
        constitution,
        admin,
        metrics,
        state,
        rollout,
        security_headers,
        request_id,
        access_log,
        fleet,
    })
}

fn proxy(raw: RawProxy) -> Result<ProxyConfig, ConfigError> {
    let listen = raw
        .listen
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, text)| socket_addr(&format!("proxy.listen[{i}]"), text))
        .collect::<Result<Vec<_>, _>>()?;
    let (rate_limit, rate_limit_max_keys) =
        super::edge::rate_limit(raw.rate_limit.unwrap_or_default())?;
    let tls = raw
        .tls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| tls_listener(&format!("proxy.tls[{i}]"), t, &rate_limit))
        .collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty() && tls.is_empty() {
        return Err(invalid(
            "proxy.listen",
            "no listener is configured; add listen = [\"127.0.0.1:8080\"] or a [[proxy.tls]] listener",
        ));
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(invalid(
            "proxy.max_connections",
            "must be at least 1; the default is 10000",
        ));
    }
    Ok(ProxyConfig {
        listen,
        tls,
        workers: raw.workers.unwrap_or(0),
        max_connections,
        trusted_hops: raw.trusted_hops.unwrap_or(0),
        timeouts: timeouts(raw.timeouts.unwrap_or_default())?,
        limits: limits(raw.limits.unwrap_or_default())?,
        retries: super::pool::retries(raw.retries.unwrap_or_default())?,
        reuse_port: raw.reuse_port.unwrap_or(false),
        drain_window: duration_between(
            "proxy.drain_window",
            raw.drain_window,
            5 * SECOND,
            Duration::ZERO,
            Some(10 * MINUTE),
        )?,
        rate_limit,
        rate_limit_max_keys,
        concurrency: super::edge::concurrency(raw.concurrency.unwrap_or_default())?,
    })
}

fn tls_listener(
    key: &str,
    raw: RawTls,
    default_limit: &RateLimit,
) -> Result<TlsListenerConfig, ConfigError> {
    let listen = match raw.listen {
        Some(text) => socket_addr(&format!("{key}.listen"), &text)?,
        None => {
            return Err(invalid(
                format!("{key}.listen"),
                "is missing; add listen = \"0.0.0.0:443\"",
            ))
        }
    };
    let raw_certs = raw.certs.unwrap_or_default();
    if raw_certs.is_empty() {
        return Err(invalid(
            format!("{key}.certs"),
            "a TLS listener needs at least one certificate; add certs = [{ cert = \"/etc/switchyard/site.pem\", key = \"/etc/switchyard/site.key\" }]",
        ));
    }
    let mut certs = Vec::with_capacity(raw_certs.len());
    for (i, pair) in raw_certs.into_iter().enumerate() {
        let pair_key = format!("{key}.certs[{i}]");
        let file = |field: &str, value: Option<String>, example: &str| match value {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(invalid(
                format!("{pair_key}.{field}"),
                format!(
                    "is missing or empty; give the PEM file path, e.g. {field} = \"{example}\""
                ),
            )),
        };
        certs.push(CertPair {
            cert: file("cert", pair.cert, "/etc/switchyard/site.pem")?,
            key: file("key", pair.key, "/etc/switchyard/site.key")?,
        });
    }
    let rate_limit = match raw.rate_limit {
        None => None,
        Some(r) => Some(super::edge::tls_rate_limit(key, r, default_limit)?),
    };
    Ok(TlsListenerConfig {
        listen,
        certs,
        rate_limit,
    })
}

fn timeouts(raw: RawTimeouts) -> Result<Timeouts, ConfigError> {
    let positive = |name: &str, value: Option<RawDuration>, default: Duration| {
        duration_between(
            &format!("proxy.timeouts.{name}"),
            value,
            default,
            POSITIVE,
            None,
        )
    };
    Ok(Timeouts {
        connect: positive("connect", raw.connect, SECOND)?,
        header_read: positive("header_read", raw.header_read, 10 * SECOND)?,
        body_idle: positive("body_idle", raw.body_idle, 60 * SECOND)?,
        request: positive("request", raw.request, 3600 * SECOND)?,
        upstream_response: positive("upstream_response", raw.upstream_response, 30 * SECOND)?,
        idle: positive("idle", raw.idle, 60 * SECOND)?,
        tunnel_idle: positive("tunnel_idle", raw.tunnel_idle, 3600 * SECOND)?,
        upstream_idle: positive("upstream_idle", raw.upstream_idle, 90 * SECOND)?,
        shutdown_grace: positive("shutdown_grace", raw.shutdown_grace, 30 * SECOND)?,
        tls_handshake: positive("tls_handshake", raw.tls_handshake, 10 * SECOND)?,
    })
}

fn limits(raw: RawLimits) -> Result<Limits, ConfigError> {
    let header_bytes = size(
        "proxy.limits.max_header_bytes",
        raw.max_header_bytes,
        32 << 10,
    )?;
    if !(1 << 10..=1 << 20).contains(&header_bytes) {
        return Err(invalid(
            "proxy.limits.max_header_bytes",
            format!("{header_bytes} bytes is out of range; use 1KiB to 1MiB, e.g. \"32KiB\" (the default)"),
        ));
    }
    let max_headers = raw.max_headers.unwrap_or(100);
    if !(1..=1000).contains(&max_headers) {
        return Err(invalid(
            "proxy.limits.max_headers",
            format!("{max_headers} is out of range; use 1 to 1000 (the default is 100)"),
        ));
    }
    let max_body_bytes = size("proxy.limits.max_body_bytes", raw.max_body_bytes, 1 << 30)?;
    if max_body_bytes == 0 {
        return Err(invalid(
            "proxy.limits.max_body_bytes",
            "must be at least 1 byte; the default is \"1GiB\"",
        ));
    }
    Ok(Limits {
        // Bounded to 1 MiB above, so the cast cannot truncate.
        max_header_bytes: header_bytes as usize,
        max_headers,
        max_body_bytes,
    })
}

/// `pools.*.max_idle_per_backend` when unset. Set above the concurrent requests one backend
/// sees at peak: a connection that comes back to a full pool is closed, and the next request
/// over the cap dials a new one (a handshake on both ends and a TIME_WAIT socket here).
/// 256 made a 640-stream HTTP/2 load open 2,500 connections a second (bench/RESULTS.md).
const DEFAULT_MAX_IDLE: usize = 1024;
/// The pool's idle queue is allocated at its full size, a few dozen bytes a slot.
const MAX_IDLE_LIMIT: usize = 100_000;

/// A pool needs at least one backend and no backend twice (compared normalised).
fn pool(raw: Option<RawPool>, id: PoolId) -> Result<PoolConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let key = format!("pools.{id}.backends");
    let backends = raw.backends.unwrap_or_default();
    if backends.is_empty() {
        let example = match id {
            PoolId::Blue => "127.0.0.1:9001",
            PoolId::Green => "127.0.0.1:9011",
        };
        return Err(invalid(
            key,
            format!("the {id} pool has no backends; list at least one, e.g. [pools.{id}] backends = [\"{example}\"]"),
        ));
    }
    let mut seen: Vec<String> = Vec::with_capacity(backends.len());
    for (i, backend) in backends.iter().enumerate() {
        let normal = parse_backend(backend).map_err(|m| invalid(format!("{key}[{i}]"), m))?;
        if let Some(first) = seen.iter().position(|s| *s == normal) {
            return Err(invalid(
                format!("{key}[{i}]"),
                format!("\"{backend}\" is listed twice (also {key}[{first}]); remove one of them"),
            ));
        }
        seen.push(normal);
    }
    let max_idle_per_backend = raw.max_idle_per_backend.unwrap_or(DEFAULT_MAX_IDLE);
    if max_idle_per_backend > MAX_IDLE_LIMIT {
        return Err(invalid(
            format!("pools.{id}.max_idle_per_backend"),
            format!("{max_idle_per_backend} is out of range; use 0 to {MAX_IDLE_LIMIT} idle connections per backend (default {DEFAULT_MAX_IDLE})"),
        ));
    }
    Ok(PoolConfig {
        backends,
        max_idle_per_backend,
        tls: super::pool::upstream_tls(id, raw.tls, raw.tls_ca, raw.tls_sni)?,
        health: super::pool::health(id, raw.health.unwrap_or_default())?,
        passive: super::pool::passive(id, raw.passive.unwrap_or_default())?,
    })
}

fn split(raw: RawSplit) -> Result<SplitConfig, ConfigError> {
    let green_bp = percent("split.green_percent", raw.green_percent.as_ref(), 0)?;
    let affinity = match raw.affinity {
        None => Affinity::None,
        Some(text) => parse_affinity(&text).map_err(|m| invalid("split.affinity", m))?,
    };
    let override_header = match raw.override_header.as_deref() {
        None => Some(HeaderName::from_static("x-switchyard-pool")),
        Some("") => None,
        Some(text) => Some(header_name("split.override_header", text)?),
    };
    let override_token = match raw.override_token {
        Some(token) if token.is_empty() || !is_visible_ascii(&token) => {
            return Err(invalid(
                "split.override_token",
                "must be non-empty visible ASCII without spaces (it is compared with the x-switchyard-token header); use a long random string, or remove the key",
            ))
        }
        token => token,
    };
    if let Affinity::Header(name) = &affinity {
        // Both are taken out of a request before the affinity key is read.
        if Some(name) == override_header.as_ref() || name.as_str() == "x-switchyard-token" {
            return Err(invalid(
                "split.affinity",
                format!("header:{name} names a header the proxy removes from requests (split.override_header or x-switchyard-token); key the affinity on another header, e.g. \"header:x-user-id\""),
            ));
        }
    }
    Ok(SplitConfig {
        green_bp,
        affinity,
        override_header,
        override_token,
        failover: raw.failover.unwrap_or(true),
    })
}

/// `"none"`, `"cookie:NAME"` (NAME a token) or `"header:NAME"` (stored lowercase).
fn parse_affinity(text: &str) -> Result<Affinity, String> {
    let forms = "expected \"none\", \"cookie:NAME\" (e.g. \"cookie:session\") or \"header:NAME\" (e.g. \"header:x-user-id\")";
    if text == "none" {
        return Ok(Affinity::None);
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        let is_token = !name.is_empty() && name.bytes().all(is_tchar);
        return if is_token {
            Ok(Affinity::Cookie(name.to_owned()))
        } else {
            Err(format!(
                "cookie name \"{name}\" is empty or has characters a cookie name cannot have; {forms}"
            ))
        };
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(Affinity::Header)
            .map_err(|_| format!("\"{name}\" is not a valid HTTP header name; {forms}"));
    }
    Err(format!("\"{text}\" is not an affinity; {forms}"))
}

/// RFC 9110 §5.6.2 token characters (cookie names are tokens, RFC 6265 §4.1.1).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_visible_ascii(text: &str) -> bool {
    text.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn constitution(raw: RawConstitution) -> Result<ConstitutionConfig, ConfigError> {
    let hash = raw.hash.unwrap_or_else(|| "cdd01ef066bc6cf2".to_owned());
    if hash.is_empty() || !is_visible_ascii(&hash) {
        return Err(invalid(
            "constitution.hash",
            "must be non-empty visible ASCII without spaces (it is sent as a header value), e.g. \"cdd01ef066bc6cf2\"",
        ));
    }
    let header = header_name(
        "constitution.header",
        raw.header.as_deref().unwrap_or("X-Constitutional-Hash"),
    )?;
    Ok(ConstitutionConfig {
        hash,
        header,
        requests: hash_mode("constitution.requests", raw.requests.as_deref())?,
        responses: hash_mode("constitution.responses", raw.responses.as_deref())?,
    })
}

fn hash_mode(key: &str, text: Option<&str>) -> Result<HashMode, ConfigError> {
    match text {
        None | Some("enforce") => Ok(HashMode::Enforce),
        Some("report") => Ok(HashMode::Report),
        Some("off") => Ok(HashMode::Off),
        Some(other) => Err(invalid(
            key,
            format!("\"{other}\" is not a mode; expected \"enforce\", \"report\" or \"off\""),
        )),
    }
}

fn admin(raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let mode = match raw.mode {
        None => 0o660,
        Some(text) => parse_octal_mode(&text.0).map_err(|m| invalid("admin.mode", m))?,
    };
    let max_clients = raw.max_clients.unwrap_or(64);
    if max_clients == 0 {
        return Err(invalid(
            "admin.max_clients",
            "must be at least 1; the default is 64",
        ));
    }
    let max_admin_clients = raw.max_admin_clients.unwrap_or(16);
    if max_admin_clients == 0 {
        return Err(invalid(
            "admin.max_admin_clients",
            "must be at least 1 (admin peers need a way in); the default is 16",
        ));
    }
    Ok(AdminConfig {
        socket: path("admin.socket", raw.socket, "/run/switchyard/admin.sock")?,
        mode,
        admin_uids: raw.admin_uids.unwrap_or_default(),
        admin_gids: raw.admin_gids.unwrap_or_default(),
        readonly_uids: raw.readonly_uids.unwrap_or_default(),
        readonly_gids: raw.readonly_gids.unwrap_or_default(),
        audit_log: raw.audit_log.filter(|p| !p.is_empty()).map(PathBuf::from),
        max_clients,
        max_admin_clients,
        idle_timeout: duration_between(
            "admin.idle_timeout",
            raw.idle_timeout,
            10 * SECOND,
            POSITIVE,
            None,
        )?,
    })
}

/// No two listeners (plain, TLS, metrics) may share an address.
fn check_distinct_listeners(
    proxy: &ProxyConfig,
    metrics: &MetricsConfig,
) -> Result<(), ConfigError> {
    let mut seen: Vec<(SocketAddr, String)> = Vec::new();
    let tls = proxy
        .tls
        .iter()
        .enumerate()
        .map(|(i, t)| (t.listen, format!("proxy.tls[{i}].listen")));
    let all = proxy
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, format!("proxy.listen[{i}]")))
        .chain(tls)
        .chain(metrics.listen.map(|a| (a, "metrics.listen".to_owned())));
    for (addr, key) in all {
        // Port 0 asks the OS for a fresh port each time, so it never collides.
        if addr.port() == 0 {
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(a, _)| *a == addr) {
            return Err(invalid(
                key,
                format!("{addr} is already used by {first}; give each listener its own address"),
            ));
        }
        seen.push((addr, key));
    }
    Ok(())
}
