//! Field helpers shared by the validators: each parses one value and, on failure,
//! returns `ConfigError::Invalid` naming the key and an example of a valid value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::raw::{RawDuration, RawPercent, RawSize};
use super::units::{parse_duration, parse_percent_bp, parse_size};
use super::ConfigError;

pub(super) const SECOND: Duration = Duration::from_secs(1);
pub(super) const MINUTE: Duration = Duration::from_secs(60);
/// The smallest duration above zero, as a minimum for "must be positive" keys.
pub(super) const POSITIVE: Duration = Duration::from_nanos(1);

pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("\"{text}\" is not an address; expected ip:port such as \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved here)"),
        )
    })
}

pub(super) fn header_name(key: &str, text: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
        invalid(
            key,
            format!("\"{text}\" is not a valid HTTP header name; use letters, digits and dashes, e.g. \"X-Constitutional-Hash\""),
        )
    })
}

pub(super) fn path(
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match value {
        None => Ok(PathBuf::from(default)),
        Some(p) if p.is_empty() => Err(invalid(
            key,
            format!("is empty; give a file path, e.g. \"{default}\""),
        )),
        Some(p) => Ok(PathBuf::from(p)),
    }
}

pub(super) fn duration_between(
    key: &str,
    value: Option<RawDuration>,
    default: Duration,
    min: Duration,
    max: Option<Duration>,
) -> Result<Duration, ConfigError> {
    let Some(RawDuration(text)) = value else {
        return Ok(default);
    };
    let duration = parse_duration(&text).map_err(|m| invalid(key, m))?;
    let too_high = max.is_some_and(|max| duration > max);
    if duration < min || too_high {
        let range = match max {
            Some(max) => format!("from {} to {}", fmt_duration(min), fmt_duration(max)),
            None if min <= POSITIVE => "above zero".to_owned(),
            None => format!("at least {}", fmt_duration(min)),
        };
        return Err(invalid(
            key,
            format!(
                "\"{text}\" is out of range; use a duration {range}, e.g. \"{}\" (the default)",
                fmt_duration(default)
            ),
        ));
    }
    Ok(duration)
}

pub(super) fn size(key: &str, value: Option<RawSize>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(RawSize::Bytes(n)) => u64::try_from(n).map_err(|_| {
            invalid(key, format!("{n} is negative; give a byte count such as 65536 or a string such as \"64KiB\""))
        }),
        Some(RawSize::Text(text)) => parse_size(&text).map_err(|m| invalid(key, m)),
    }
}

pub(super) fn percent(
    key: &str,
    value: Option<&RawPercent>,
    default: u16,
) -> Result<u16, ConfigError> {
    match value {
        None => Ok(default),
        Some(p) => parse_percent_bp(&p.0).map_err(|m| invalid(key, m)),
    }
}

/// Basis points back to the percent an operator wrote: 1234 → "12.34", 1000 → "10".
pub(super) fn fmt_bp(bp: u16) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// A duration in the config's own notation: 1500ms → "1.5s", 300s → "5m".
pub(super) fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{}ms", d.as_secs_f64() * 1000.0);
    }
    match d.as_millis() {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms if ms < 1000 => format!("{ms}ms"),
        _ => format!("{}s", d.as_secs_f64()),
    }
}
