//! `[pools.X]` upstream TLS, `[pools.X.health]`, `[pools.X.passive]` and `[proxy.retries]`.

use std::path::PathBuf;
use std::time::Duration;

use super::fields::{duration_between, invalid, MINUTE, SECOND};
use super::raw::{RawHealth, RawPassive, RawRetries};
use super::{ConfigError, HealthConfig, PassiveConfig, PoolId, RetriesConfig, UpstreamTls};

pub(super) fn upstream_tls(
    id: PoolId,
    tls: Option<bool>,
    ca: Option<String>,
    sni: Option<String>,
) -> Result<Option<UpstreamTls>, ConfigError> {
    if !tls.unwrap_or(false) {
        for (name, set) in [("tls_ca", ca.is_some()), ("tls_sni", sni.is_some())] {
            if set {
                return Err(invalid(
                    format!("pools.{id}.{name}"),
                    "only applies with TLS to the backends; add tls = true or remove the key",
                ));
            }
        }
        return Ok(None);
    }
    let ca = match ca {
        Some(p) if p.is_empty() => {
            return Err(invalid(
                format!("pools.{id}.tls_ca"),
                "is empty; give a PEM bundle path or remove the key to use the system bundle",
            ))
        }
        other => other.map(PathBuf::from),
    };
    let sni = match sni {
        Some(n) if n.is_empty() || n.contains(|c: char| c.is_whitespace() || c == '/') => {
            return Err(invalid(
                format!("pools.{id}.tls_sni"),
                format!("{n:?} is not a host name; give the name on the backends' certificate, e.g. \"api.internal\""),
            ))
        }
        other => other,
    };
    Ok(Some(UpstreamTls { ca, sni }))
}

fn count(
    key: String,
    value: Option<u32>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let v = value.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(invalid(
            key,
            format!("{v} is out of range; use {min}..={max} (default {default})"),
        ));
    }
    Ok(v)
}

pub(super) fn health(id: PoolId, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
    let key = |name: &str| format!("pools.{id}.health.{name}");
    let path = match raw.path {
        None => Some("/health".to_string()),
        Some(p) if p.is_empty() => None,
        Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p),
        Some(p) => {
            return Err(invalid(
                key("path"),
                format!("{p:?} is not a request path; use one starting with /, e.g. \"/health\", or \"\" to disable checks"),
            ))
        }
    };
    let interval = duration_between(
        &key("interval"),
        raw.interval,
        2 * SECOND,
        Duration::from_millis(50),
        Some(10 * MINUTE),
    )?;
    let timeout = duration_between(
        &key("timeout"),
        raw.timeout,
        SECOND,
        Duration::from_millis(10),
        Some(MINUTE),
    )?;
    if timeout > interval {
        return Err(invalid(
            key("timeout"),
            "is longer than health.interval; make it at most the interval",
        ));
    }
    Ok(HealthConfig {
        path,
        interval,
        timeout,
        fall: count(key("fall"), raw.fall, 3, 1, 100)?,
        rise: count(key("rise"), raw.rise, 2, 1, 100)?,
    })
}

pub(super) fn passive(id: PoolId, raw: RawPassive) -> Result<PassiveConfig, ConfigError> {
    let key = |name: &str| format!("pools.{id}.passive.{name}");
    Ok(PassiveConfig {
        consecutive_failures: count(
            key("consecutive_failures"),
            raw.consecutive_failures,
            5,
            1,
            1000,
        )?,
        ejection: duration_between(
            &key("ejection"),
            raw.ejection,
            10 * SECOND,
            SECOND,
            Some(60 * MINUTE),
        )?,
        max_ejected_percent: count(
            key("max_ejected_percent"),
            raw.max_ejected_percent,
            50,
            0,
            100,
        )?,
    })
}

pub(super) fn retries(raw: RawRetries) -> Result<RetriesConfig, ConfigError> {
    let key = |name: &str| format!("proxy.retries.{name}");
    Ok(RetriesConfig {
        attempts: count(key("attempts"), raw.attempts, 3, 1, 10)?,
        budget_percent: count(key("budget_percent"), raw.budget_percent, 20, 0, 100)?,
        min_retries: count(key("min_retries"), raw.min_retries, 10, 0, 100_000)?,
    })
}
