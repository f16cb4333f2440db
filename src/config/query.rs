//! `[[rollout.gates.query]]`: gates on the service's own metrics, a PromQL query asked of a
//! Prometheus server while a step holds, judged against `max` and/or `min`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::fields::{duration_between, invalid, SECOND};
use super::hooks::{url, HookUrl};
use super::raw::RawQueryGate;
use super::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct QueryGateConfig {
    pub name: String,
    /// The server's base URL; the query goes to `<base>/api/v1/query`.
    pub prometheus: HookUrl,
    /// PromQL; `$pool` and `$candidate` become the candidate's name, `$stable` stable's.
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    /// How often it is asked (at least a second).
    pub interval: Duration,
    /// Out-of-bounds answers in a row that roll back.
    pub fail_windows: u32,
    /// One request's bound; no answer in time is inconclusive.
    pub timeout: Duration,
    /// The CA bundle for an https server; the system bundle when unset.
    pub tls_ca: Option<PathBuf>,
}

/// `tick` is the default interval (raised to a second).
pub(super) fn queries(
    raw: Vec<RawQueryGate>,
    tick: Duration,
) -> Result<Vec<Arc<QueryGateConfig>>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, q) in raw.into_iter().enumerate() {
        let key = format!("rollout.gates.query[{i}]");
        let q = query(&key, q, tick)?;
        if !names.insert(q.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "{:?} names another query gate too; give each its own name",
                    q.name
                ),
            ));
        }
        out.push(Arc::new(q));
    }
    Ok(out)
}

fn query(key: &str, raw: RawQueryGate, tick: Duration) -> Result<QueryGateConfig, ConfigError> {
    let name = match raw.name {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            n
        }
        _ => {
            return Err(invalid(
                format!("{key}.name"),
                "is missing or not a name; use up to 64 letters, digits, '-', '_' or '.', e.g. \"http-error-ratio\"",
            ))
        }
    };
    let prometheus = url(&format!("{key}.prometheus"), raw.prometheus.as_deref())
        .map_err(|_| {
            invalid(
                format!("{key}.prometheus"),
                "is missing or not an http(s) URL; give the Prometheus server's base URL, e.g. \"http://127.0.0.1:9090\"",
            )
        })?;
    if prometheus.path_and_query.contains('?') {
        return Err(invalid(
            format!("{key}.prometheus"),
            "carries a query string; give the base URL only (the query goes to <base>/api/v1/query)",
        ));
    }
    let query = raw.query.unwrap_or_default();
    if query.trim().is_empty() {
        return Err(invalid(
            format!("{key}.query"),
            "is missing or empty; give a PromQL expression returning one number, e.g. \"sum(rate(http_errors_total{pool=\\\"$candidate\\\"}[1m]))\"",
        ));
    }
    for (bound, v) in [("max", raw.max), ("min", raw.min)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(invalid(format!("{key}.{bound}"), "is not a finite number"));
        }
    }
    if raw.max.is_none() && raw.min.is_none() {
        return Err(invalid(
            format!("{key}.max"),
            "neither max nor min is given; give the bound(s) the query's value must stay within, e.g. max = 0.01",
        ));
    }
    if let (Some(min), Some(max)) = (raw.min, raw.max) {
        if min > max {
            return Err(invalid(
                format!("{key}.min"),
                format!("{min} is above max ({max}); no value could pass"),
            ));
        }
    }
    let interval = duration_between(
        &format!("{key}.interval"),
        raw.interval,
        tick.max(SECOND),
        SECOND,
        Some(10 * 60 * SECOND),
    )?;
    let timeout = duration_between(
        &format!("{key}.timeout"),
        raw.timeout,
        (5 * SECOND).min(interval),
        Duration::from_millis(10),
        Some(60 * SECOND),
    )?;
    let fail_windows = raw.fail_windows.unwrap_or(2);
    if fail_windows == 0 {
        return Err(invalid(
            format!("{key}.fail_windows"),
            "must be at least 1; the default is 2",
        ));
    }
    let tls_ca = match raw.tls_ca {
        None => None,
        Some(p) if p.is_empty() => {
            return Err(invalid(
                format!("{key}.tls_ca"),
                "is empty; give a PEM bundle path or leave it out for the system bundle",
            ))
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    Ok(QueryGateConfig {
        name,
        prometheus,
        query,
        max: raw.max,
        min: raw.min,
        interval,
        fail_windows,
        timeout,
        tls_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawQueryGate {
        RawQueryGate {
            name: Some("errors".into()),
            prometheus: Some("http://127.0.0.1:9090".into()),
            query: Some("sum(x{pool=\"$candidate\"})".into()),
            max: Some(0.01),
            ..RawQueryGate::default()
        }
    }

    #[test]
    fn defaults_follow_the_tick_and_at_least_a_second() {
        let q = query("k", raw(), Duration::from_millis(100)).expect("valid");
        assert_eq!((q.interval, q.fail_windows), (SECOND, 2));
        let q = query("k", raw(), 3 * SECOND).expect("valid");
        assert_eq!(q.interval, 3 * SECOND);
    }

    #[test]
    fn bad_gates_name_the_key() {
        type Edit = fn(&mut RawQueryGate);
        let cases: [(Edit, &str); 6] = [
            (|r| r.query = Some("  ".into()), "k.query"),
            (|r| r.max = None, "k.max"),
            (|r| r.min = Some(1.0), "k.min"),
            (|r| r.prometheus = Some("ftp://x".into()), "k.prometheus"),
            (
                |r| r.interval = Some(super::super::raw::RawDuration("500ms".into())),
                "k.interval",
            ),
            (|r| r.fail_windows = Some(0), "k.fail_windows"),
        ];
        for (edit, key) in cases {
            let mut r = raw();
            edit(&mut r);
            let e = query("k", r, SECOND).expect_err(key).to_string();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
    }
}
