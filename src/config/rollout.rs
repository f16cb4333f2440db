//! `[rollout]` and `[rollout.gates]`: steps, timing and gate limits.

use std::time::Duration;

use super::fields::{
    duration_between, fmt_bp, fmt_duration, invalid, percent, MINUTE, POSITIVE, SECOND,
};
use super::raw::{RawGates, RawPercent, RawRollout};
use super::{ConfigError, GateLimits, RolloutConfig};
use crate::control::rollout::Method;

/// Besides ranges: `max_hold >= hold`, `tick <= window`, `settle < max_hold`.
pub(super) fn rollout(raw: RawRollout) -> Result<RolloutConfig, ConfigError> {
    let steps_bp = match raw.steps {
        None => vec![1000, 5000, 10_000],
        Some(steps) => steps_bp(&steps)?,
    };
    let hold = duration_between("rollout.hold", raw.hold, MINUTE, Duration::ZERO, None)?;
    let bake = duration_between("rollout.bake", raw.bake, 5 * MINUTE, Duration::ZERO, None)?;
    let window = duration_between(
        "rollout.window",
        raw.window,
        30 * SECOND,
        SECOND,
        Some(10 * MINUTE),
    )?;
    let max_hold = duration_between(
        "rollout.max_hold",
        raw.max_hold,
        10 * MINUTE,
        POSITIVE,
        None,
    )?;
    if max_hold < hold {
        return Err(invalid(
            "rollout.max_hold",
            format!(
                "{} is shorter than rollout.hold ({}); set it to at least the hold, e.g. \"10m\"",
                fmt_duration(max_hold),
                fmt_duration(hold)
            ),
        ));
    }
    let tick = duration_between(
        "rollout.tick",
        raw.tick,
        SECOND,
        Duration::from_millis(10),
        Some(10 * SECOND),
    )?;
    if tick > window {
        return Err(invalid(
            "rollout.tick",
            format!("{} is longer than rollout.window; use a tick no longer than the window, e.g. \"1s\"", fmt_duration(tick)),
        ));
    }
    let settle = duration_between(
        "rollout.settle",
        raw.settle,
        2 * SECOND,
        Duration::ZERO,
        None,
    )?;
    if settle >= max_hold {
        return Err(invalid(
            "rollout.settle",
            "is not shorter than rollout.max_hold, so no step could ever gather samples; use a few seconds, e.g. \"2s\"",
        ));
    }
    let mut raw_gates = raw.gates.unwrap_or_default();
    let queries = super::query::queries(raw_gates.query.take().unwrap_or_default(), tick)?;
    Ok(RolloutConfig {
        steps_bp,
        hold,
        bake,
        window,
        max_hold,
        tick,
        settle,
        gates: gates(raw_gates)?,
        hooks: super::hooks::hooks(raw.hooks.unwrap_or_default())?,
        queries,
    })
}

/// Steps are percents, each above 0, strictly increasing and ending at 100.
fn steps_bp(steps: &[RawPercent]) -> Result<Vec<u16>, ConfigError> {
    let example = "e.g. steps = [10, 50, 100]";
    let mut out: Vec<u16> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let key = format!("rollout.steps[{i}]");
        let bp = percent(&key, Some(step), 0)?;
        if bp == 0 {
            return Err(invalid(
                key,
                format!("a step must be above 0 (a rollout starts at 0); {example}"),
            ));
        }
        if let Some(&previous) = out.last() {
            if bp <= previous {
                return Err(invalid(
                    key,
                    format!(
                        "{} is not above the previous step {}; steps must strictly increase, {example}",
                        step.0,
                        fmt_bp(previous)
                    ),
                ));
            }
        }
        out.push(bp);
    }
    match out.last() {
        None => Err(invalid("rollout.steps", format!("is empty; list the steps, ending at 100, {example}"))),
        Some(&last) if last != 10_000 => Err(invalid(
            "rollout.steps",
            format!("the last step is {}; it must be 100 so that a rollout ends with all traffic on the candidate, {example}", fmt_bp(last)),
        )),
        Some(_) => Ok(out),
    }
}

fn gates(raw: RawGates) -> Result<GateLimits, ConfigError> {
    let p99_ratio_max = raw.p99_ratio_max.unwrap_or(1.5);
    if !(p99_ratio_max.is_finite() && p99_ratio_max >= 1.0) {
        return Err(invalid(
            "rollout.gates.p99_ratio_max",
            format!("{p99_ratio_max} is not a number of 1.0 or more; it is candidate P99 / stable P99, e.g. 1.5"),
        ));
    }
    Ok(GateLimits {
        p99_max: duration_between(
            "rollout.gates.p99_max",
            raw.p99_max,
            Duration::from_millis(5),
            POSITIVE,
            None,
        )?,
        p99_ratio_max,
        p99_min_delta: duration_between(
            "rollout.gates.p99_min_delta",
            raw.p99_min_delta,
            Duration::from_millis(1),
            Duration::ZERO,
            None,
        )?,
        p50_max_delta: duration_between(
            "rollout.gates.p50_max_delta",
            raw.p50_max_delta,
            Duration::from_millis(1),
            Duration::ZERO,
            None,
        )?,
        method: method(raw.method.as_deref())?,
        alpha: fraction("alpha", raw.alpha, 0.01, false)?,
        error_rate_max: fraction("error_rate_max", raw.error_rate_max, 0.01, false)?,
        error_rate_margin: fraction("error_rate_margin", raw.error_rate_margin, 0.002, true)?,
        min_requests: at_least_one("min_requests", raw.min_requests, 300)?,
        min_latency_samples: at_least_one("min_latency_samples", raw.min_latency_samples, 300)?,
        fail_windows: at_least_one("fail_windows", raw.fail_windows, 2)?,
        consecutive_errors: at_least_one("consecutive_errors", raw.consecutive_errors, 5)?,
        hash_violations_max: at_least_one("hash_violations_max", raw.hash_violations_max, 1)?,
        tripwire_error_rate: fraction("tripwire_error_rate", raw.tripwire_error_rate, 0.05, false)?,
        tripwire_min_requests: at_least_one(
            "tripwire_min_requests",
            raw.tripwire_min_requests,
            20,
        )?,
    })
}

/// `rollout.gates.method`: how the judgment gates decide.
fn method(raw: Option<&str>) -> Result<Method, ConfigError> {
    match raw {
        None | Some("sequential") => Ok(Method::Sequential),
        Some("window") => Ok(Method::Window),
        Some(other) => Err(invalid(
            "rollout.gates.method",
            format!("{other:?} is not a method; use \"sequential\" (anytime-valid tests, the default) or \"window\" (point estimates over the window, the gates of earlier releases)"),
        )),
    }
}

/// A count that must be at least 1.
fn at_least_one<T>(name: &str, value: Option<T>, default: T) -> Result<T, ConfigError>
where
    T: Copy + Default + PartialEq + std::fmt::Display,
{
    let value = value.unwrap_or(default);
    if value == T::default() {
        return Err(invalid(
            format!("rollout.gates.{name}"),
            format!("must be at least 1; the default is {default}"),
        ));
    }
    Ok(value)
}

/// A rate between 0 and 1 (exclusive; 0 allowed when `zero_ok`).
fn fraction(
    name: &str,
    value: Option<f64>,
    default: f64,
    zero_ok: bool,
) -> Result<f64, ConfigError> {
    let value = value.unwrap_or(default);
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if low_ok && value < 1.0 {
        return Ok(value);
    }
    let range = if zero_ok {
        "from 0 up to (not including) 1"
    } else {
        "between 0 and 1 (exclusive)"
    };
    Err(invalid(
        format!("rollout.gates.{name}"),
        format!("{value} is out of range; it is a fraction {range}, e.g. {default} (the default)"),
    ))
}
