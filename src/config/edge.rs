//! Edge protection and records: `[proxy.rate_limit]` (and its per-TLS-listener override),
//! `[proxy.concurrency]`, `[security_headers]`, `[request_id]` and `[access_log]`.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::fields::{duration_between, header_name, invalid, SECOND};
use super::raw::{RawAccessLog, RawConcurrency, RawRateLimit, RawRequestId, RawSecurityHeaders};
use super::{
    AccessLogConfig, AccessLogTarget, ConcurrencyConfig, ConfigError, HeaderMode, RateLimit,
    RateLimitKey, RequestIdConfig, SecurityHeader, SecurityHeadersConfig,
};

/// `max_keys` when unset: about 5 MB of table.
const DEFAULT_MAX_KEYS: usize = 100_000;

/// `[proxy.rate_limit]`: the default limit and the table size.
pub(super) fn rate_limit(raw: RawRateLimit) -> Result<(RateLimit, usize), ConfigError> {
    let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(16..=10_000_000).contains(&max_keys) {
        return Err(invalid(
            "proxy.rate_limit.max_keys",
            format!("{max_keys} is out of range; use 16..=10000000 (default {DEFAULT_MAX_KEYS}, about 5 MB)"),
        ));
    }
    let off = RateLimit {
        requests: 0,
        period: SECOND,
        burst: 0,
        key: RateLimitKey::Client,
    };
    Ok((limit("proxy.rate_limit", raw, &off)?, max_keys))
}

/// `[proxy.tls.rate_limit]` of TLS listener `key`: keys left out are taken from `default`.
pub(super) fn tls_rate_limit(
    key: &str,
    raw: RawRateLimit,
    default: &RateLimit,
) -> Result<RateLimit, ConfigError> {
    if raw.max_keys.is_some() {
        return Err(invalid(
            format!("{key}.rate_limit.max_keys"),
            "the table is shared by every listener; set max_keys in [proxy.rate_limit] and remove it here",
        ));
    }
    limit(&format!("{key}.rate_limit"), raw, default)
}

fn limit(key: &str, raw: RawRateLimit, inherit: &RateLimit) -> Result<RateLimit, ConfigError> {
    let requests = raw.requests.unwrap_or(inherit.requests);
    if requests > 1_000_000 {
        return Err(invalid(
            format!("{key}.requests"),
            format!("{requests} is out of range; use 0 (off) to 1000000 requests per period"),
        ));
    }
    let period = duration_between(
        &format!("{key}.period"),
        raw.period,
        inherit.period,
        Duration::from_millis(1),
        Some(Duration::from_secs(3600)),
    )?;
    let burst = match raw.burst {
        Some(b) => b,
        // An inherited burst only makes sense with the inherited rate.
        None if raw.requests.is_none() && inherit.burst > 0 => inherit.burst,
        None => requests,
    };
    if requests > 0 && !(1..=1_000_000).contains(&burst) {
        return Err(invalid(
            format!("{key}.burst"),
            format!("{burst} is out of range; use 1..=1000000 requests at once (default: the same as requests)"),
        ));
    }
    let key_mode = match raw.key.as_deref() {
        None => inherit.key.clone(),
        Some("client") => RateLimitKey::Client,
        Some(text) => match text.strip_prefix("header:") {
            Some(name) => RateLimitKey::Header(header_name(&format!("{key}.key"), name)?),
            None => {
                return Err(invalid(
                    format!("{key}.key"),
                    format!("\"{text}\" is not a key; use \"client\" (the address after proxy.trusted_hops) or \"header:NAME\", e.g. \"header:x-api-key\""),
                ))
            }
        },
    };
    Ok(RateLimit {
        requests,
        period,
        burst,
        key: key_mode,
    })
}

pub(super) fn concurrency(raw: RawConcurrency) -> Result<ConcurrencyConfig, ConfigError> {
    let caps = raw.max_inflight.unwrap_or_default();
    let cap = |name: &str, v: Option<usize>| {
        let v = v.unwrap_or(0);
        if v > 10_000_000 {
            return Err(invalid(
                format!("proxy.concurrency.max_inflight.{name}"),
                format!("{v} is out of range; use 0 (no cap) to 10000000 in-flight requests"),
            ));
        }
        Ok(v)
    };
    let floor = raw.floor.unwrap_or(2);
    if floor > 100_000 {
        return Err(invalid(
            "proxy.concurrency.floor",
            format!("{floor} is out of range; use 0..=100000 (default 2)"),
        ));
    }
    Ok(ConcurrencyConfig {
        max_inflight: [cap("blue", caps.blue)?, cap("green", caps.green)?],
        by_weight: raw.by_weight.unwrap_or(false),
        floor,
    })
}

/// Headers the proxy manages itself or that frame the message: never a security header.
const RESERVED: &[&str] = &[
    "connection",
    "content-length",
    "content-type",
    "keep-alive",
    "proxy-connection",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn default_headers() -> Vec<SecurityHeader> {
    [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("strict-transport-security", "max-age=31536000"),
    ]
    .into_iter()
    .map(|(name, value)| SecurityHeader {
        name: HeaderName::from_static(name),
        value: HeaderValue::from_static(value),
        mode: HeaderMode::SetIfAbsent,
    })
    .collect()
}

/// `[security_headers]`; `reserved` are the constitution and request-id headers.
pub(super) fn security_headers(
    raw: RawSecurityHeaders,
    reserved: &[&HeaderName],
) -> Result<SecurityHeadersConfig, ConfigError> {
    let Some(entries) = raw.headers else {
        return Ok(SecurityHeadersConfig {
            headers: default_headers(),
        });
    };
    let mut headers: Vec<SecurityHeader> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let key = |field: &str| format!("security_headers.headers[{i}].{field}");
        let Some(text) = e.name else {
            return Err(invalid(
                key("name"),
                "is missing; give the header name, e.g. name = \"X-Frame-Options\"",
            ));
        };
        let name = header_name(&key("name"), &text)?;
        if RESERVED.contains(&name.as_str()) || reserved.contains(&&name) {
            return Err(invalid(
                key("name"),
                format!("\"{text}\" is a header the proxy manages itself or that frames the message; remove this entry"),
            ));
        }
        if let Some(first) = headers.iter().position(|h| h.name == name) {
            return Err(invalid(
                key("name"),
                format!("\"{text}\" is listed twice (also security_headers.headers[{first}]); keep one entry"),
            ));
        }
        let value = match e.value.as_deref().map(HeaderValue::from_str) {
            Some(Ok(v)) if !v.is_empty() => v,
            _ => {
                return Err(invalid(
                    key("value"),
                    "is missing, empty or not a valid header value (visible ASCII and spaces); e.g. value = \"DENY\"",
                ))
            }
        };
        let mode = match e.mode.as_deref() {
            None | Some("set_if_absent") => HeaderMode::SetIfAbsent,
            Some("override") => HeaderMode::Override,
            Some(other) => {
                return Err(invalid(
                    key("mode"),
                    format!("\"{other}\" is not a mode; use \"set_if_absent\" (keep the backend's value) or \"override\""),
                ))
            }
        };
        headers.push(SecurityHeader { name, value, mode });
    }
    Ok(SecurityHeadersConfig { headers })
}

/// `[request_id]`; `reserved` are headers it may not reuse (the constitution's).
pub(super) fn request_id(
    raw: RawRequestId,
    reserved: &HeaderName,
) -> Result<RequestIdConfig, ConfigError> {
    if !raw.enabled.unwrap_or(true) {
        return Ok(RequestIdConfig { header: None });
    }
    let name = header_name(
        "request_id.header",
        raw.header.as_deref().unwrap_or("X-Request-Id"),
    )?;
    if name == *reserved || RESERVED.contains(&name.as_str()) {
        return Err(invalid(
            "request_id.header",
            format!(
                "\"{name}\" is already used by the proxy; use another name, e.g. \"X-Request-Id\""
            ),
        ));
    }
    Ok(RequestIdConfig { header: Some(name) })
}

pub(super) fn access_log(raw: RawAccessLog) -> Result<AccessLogConfig, ConfigError> {
    let target = match raw.path.as_deref() {
        None | Some("") => None,
        Some("-") => Some(AccessLogTarget::Stdout),
        Some(p) if p.ends_with('/') => {
            return Err(invalid(
                "access_log.path",
                format!(
                "\"{p}\" names a directory; give a file, e.g. \"/var/log/switchyard/access.log\""
            ),
            ))
        }
        Some(p) => Some(AccessLogTarget::File(PathBuf::from(p))),
    };
    let queue = raw.queue.unwrap_or(16_384);
    if !(16..=1_000_000).contains(&queue) {
        return Err(invalid(
            "access_log.queue",
            format!("{queue} is out of range; use 16..=1000000 lines (default 16384)"),
        ));
    }
    Ok(AccessLogConfig {
        target,
        include_query: raw.include_query.unwrap_or(false),
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const BASE: &str = "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9011\"]\n";

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!(
            "{BASE}[proxy]\nlisten = [\"127.0.0.1:8080\"]\n{extra}"
        ))
    }

    #[test]
    fn everything_is_off_by_default_but_request_ids_and_security_headers() {
        let c = load("").unwrap();
        assert!(!c.proxy.rate_limit.is_on());
        assert_eq!(c.proxy.rate_limit_max_keys, DEFAULT_MAX_KEYS);
        assert_eq!(
            c.proxy.concurrency,
            ConcurrencyConfig {
                max_inflight: [0, 0],
                by_weight: false,
                floor: 2
            }
        );
        let names: Vec<&str> = c
            .security_headers
            .headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "x-content-type-options",
                "x-frame-options",
                "referrer-policy",
                "strict-transport-security"
            ]
        );
        assert_eq!(
            c.request_id.header.as_ref().map(HeaderName::as_str),
            Some("x-request-id")
        );
        assert_eq!(
            c.access_log,
            AccessLogConfig {
                target: None,
                include_query: false,
                queue: 16_384
            }
        );
    }

    #[test]
    fn burst_defaults_to_the_rate_and_overrides_inherit() {
        let c = load(
            "[proxy.rate_limit]\nrequests = 20\nkey = \"header:X-Api-Key\"\n\
             [[proxy.tls]]\nlisten = \"127.0.0.1:8443\"\ncerts = [{ cert = \"a\", key = \"b\" }]\n\
             rate_limit = { period = \"1m\" }\n\
             [[proxy.tls]]\nlisten = \"127.0.0.1:8444\"\ncerts = [{ cert = \"a\", key = \"b\" }]\n\
             rate_limit = { requests = 5 }\n",
        )
        .unwrap();
        let d = &c.proxy.rate_limit;
        assert_eq!((d.requests, d.period, d.burst), (20, SECOND, 20));
        assert_eq!(
            d.key,
            RateLimitKey::Header(HeaderName::from_static("x-api-key"))
        );
        let t0 = c.proxy.tls[0].rate_limit.as_ref().unwrap();
        assert_eq!(
            (t0.requests, t0.period, t0.burst),
            (20, Duration::from_secs(60), 20)
        );
        let t1 = c.proxy.tls[1].rate_limit.as_ref().unwrap();
        assert_eq!((t1.requests, t1.burst, &t1.key), (5, 5, &d.key));
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let cases = [
            ("[proxy.rate_limit]\nrequests = 2000000\n", "proxy.rate_limit.requests", "1000000"),
            ("[proxy.rate_limit]\nrequests = 1\nburst = 0\n", "proxy.rate_limit.burst", "1..=1000000"),
            ("[proxy.rate_limit]\nperiod = \"0s\"\n", "proxy.rate_limit.period", "from 1ms"),
            ("[proxy.rate_limit]\nmax_keys = 1\n", "proxy.rate_limit.max_keys", "16..="),
            ("[proxy.rate_limit]\nkey = \"header:a b\"\n", "proxy.rate_limit.key", "header name"),
            ("[proxy.concurrency]\nfloor = 1000000\n", "proxy.concurrency.floor", "0..=100000"),
            (
                "[proxy.concurrency]\nmax_inflight = { green = 20000000 }\n",
                "proxy.concurrency.max_inflight.green",
                "no cap",
            ),
            ("[security_headers]\nheaders = [{ value = \"x\" }]\n", "security_headers.headers[0].name", "missing"),
            (
                "[security_headers]\nheaders = [{ name = \"a\", value = \"x\" }, { name = \"A\", value = \"y\" }]\n",
                "security_headers.headers[1].name",
                "twice",
            ),
            ("[security_headers]\nheaders = [{ name = \"a\", value = \"\" }]\n", "security_headers.headers[0].value", "empty"),
            (
                "[security_headers]\nheaders = [{ name = \"x-request-id\", value = \"1\" }]\n",
                "security_headers.headers[0].name",
                "manages",
            ),
            ("[request_id]\nheader = \"x-switchyard-pool\"\n", "request_id.header", "override_header"),
            ("[access_log]\npath = \"/var/log/\"\n", "access_log.path", "directory"),
        ];
        for (text, key, hint) in cases {
            let err = load(text).map(|_| ()).unwrap_err();
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            assert!(err.to_string().contains(hint), "{text}: {err}");
        }
    }

    #[test]
    fn request_ids_can_be_turned_off_and_the_log_go_to_stdout() {
        let c = load("[request_id]\nenabled = false\n[access_log]\npath = \"-\"\n").unwrap();
        assert_eq!(c.request_id.header, None);
        assert_eq!(c.access_log.target, Some(AccessLogTarget::Stdout));
        let c = load("[security_headers]\nheaders = []\n").unwrap();
        assert!(c.security_headers.headers.is_empty());
    }
}
