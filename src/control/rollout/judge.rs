//! CONTROL PLANE: the judgment gates of the sequential method — every figure a confidence
//! bound that holds at every tick at once, so a gate may be looked at each second without
//! inflating its false alarms (see `sequential` for the statistics, docs/operations.md for the
//! choices).
//!
//! A gate fails on evidence of harm only; it passes once it has its minimum samples and no
//! such evidence ("conclusive" when its bound also clears the limit). The tripwires are the
//! window method's, unchanged.

use std::time::Duration;

use super::gates::{consecutive, hash, health, report, wilson, Evaluation, Gate, GateReport};
use super::sequential::{
    bernoulli_bounds, count_bounds_near, excess_evidence, quantile_prior, ranks_of, ERROR_PRIOR,
};
use super::{GateLimits, Observation, Verdict};
use crate::config::PoolId;
use crate::metrics::window::Summary;

/// Sequential tests a rollout runs: per step, the candidate's P50, P99 and error rate and the
/// test of its error rate over stable's plus the margin ([`excess_evidence`]); over the whole
/// rollout, stable's P50, P99 and error rate. Each gets an equal share of `alpha`.
pub fn tests_per_rollout(steps: usize) -> usize {
    3 + 4 * steps
}

/// The last tick's bounds, so the next tick's searches start near their answers and a pool
/// without new samples is not searched again. Only speeds the gates up: [`evaluate`] gives
/// the same evaluation with a fresh cache, so any two caches compare equal.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    /// Candidate P99, stable P99, candidate P50, stable P50.
    counts: [Option<Counts>; 4],
    /// Candidate, stable.
    rates: [Option<Rates>; 2],
}

/// Samples, alpha, and the sample counts of [`count_bounds_near`].
type Counts = (u64, f64, (u64, u64));

/// Errors, requests, alpha, and the rate's bounds.
type Rates = (u64, u64, f64, (f64, f64));

impl PartialEq for Bounds {
    fn eq(&self, _: &Bounds) -> bool {
        true
    }
}

impl Bounds {
    fn counts(&mut self, slot: usize, n: u64, q: f64, alpha: f64) -> (u64, u64) {
        let guess = match self.counts[slot] {
            Some((seen, a, counts)) if seen == n && a == alpha => return counts,
            // Each bound moves by about `q` of the new samples.
            Some((seen, a, (lo, hi))) if seen < n && a == alpha => {
                let moved = (q * (n - seen) as f64).round() as u64;
                Some((lo + moved, hi + moved))
            }
            _ => None,
        };
        let counts = count_bounds_near(n, q, alpha, quantile_prior(q), guess);
        self.counts[slot] = Some((n, alpha, counts));
        counts
    }

    fn rate(&mut self, slot: usize, k: u64, n: u64, alpha: f64) -> (f64, f64) {
        if let Some((k0, n0, a, bounds)) = self.rates[slot] {
            if (k0, n0) == (k, n) && a == alpha {
                return bounds;
            }
        }
        let bounds = bernoulli_bounds(k, n, alpha, ERROR_PRIOR);
        self.rates[slot] = Some((k, n, alpha, bounds));
        bounds
    }
}

/// Every gate of both pools; `steps` sets the alpha split; `bounds` the last tick's.
/// Without `describe`, only failing reports get their `detail` (the words cost more than the
/// statistics; the simulator reads only the failing gate).
pub fn evaluate(
    limits: &GateLimits,
    obs: &Observation,
    candidate: PoolId,
    steps: usize,
    bounds: &mut Bounds,
    describe: bool,
) -> Evaluation {
    let stable = candidate.other();
    let alpha = limits.alpha / tests_per_rollout(steps) as f64;
    let (c, s) = (&obs.candidate_step, &obs.stable_rollout);
    let c99 = Quantile::of(c, 0.99, bounds.counts(0, c.requests, 0.99, alpha));
    let s99 = Quantile::of(s, 0.99, bounds.counts(1, s.requests, 0.99, alpha));
    let c50 = Quantile::of(c, 0.50, bounds.counts(2, c.requests, 0.50, alpha));
    let s50 = Quantile::of(s, 0.50, bounds.counts(3, s.requests, 0.50, alpha));
    let c_err = Rate::of(c, bounds.rate(0, c.errors, c.requests, alpha));
    let s_err = Rate::of(s, bounds.rate(1, s.errors, s.requests, alpha));
    let reports = vec![
        health(candidate, obs.candidate_healthy),
        hash(limits, candidate, obs.candidate_violations),
        consecutive(limits, candidate, obs.candidate_consecutive_errors),
        wilson(limits, candidate, &obs.candidate),
        p99_absolute(limits, candidate, &c99, describe),
        latency_relative(Gate::P99Relative, limits, candidate, &c99, &s99, describe),
        latency_relative(Gate::P50Relative, limits, candidate, &c50, &s50, describe),
        error_rate(limits, candidate, &c_err, describe),
        error_relative(limits, candidate, (&c_err, &s_err), obs, alpha, describe),
        health(stable, obs.stable_healthy),
        hash(limits, stable, obs.stable.violations),
        wilson(limits, stable, &obs.stable),
        p99_absolute(limits, stable, &s99, describe),
        error_rate(limits, stable, &s_err, describe),
    ];
    Evaluation::assemble(candidate, reports, obs.stable_healthy)
}

/// A quantile's point estimate and confidence bounds, in microseconds.
struct Quantile {
    q: f64,
    samples: u64,
    point: Option<u64>,
    /// 0 without a lower bound yet.
    lower: u64,
    /// `u64::MAX` without an upper bound yet.
    upper: u64,
}

impl Quantile {
    /// From the sample counts of [`count_bounds_near`] for `q`.
    fn of(s: &Summary, q: f64, counts: (u64, u64)) -> Quantile {
        let n = s.requests;
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n.max(1));
        let (lo, hi) = ranks_of(n, counts);
        // One pass over the bins for the three ranks (0: none).
        let [point, lower, upper] = s.order_statistics([rank, lo.unwrap_or(0), hi.unwrap_or(0)]);
        Quantile {
            q,
            samples: n,
            point: point.map(|(l, h)| l / 2 + h / 2),
            lower: lower.map_or(0, |b| b.0),
            upper: upper.map_or(u64::MAX, |b| b.1),
        }
    }

    fn name(&self) -> String {
        format!("p{}", (self.q * 100.0).round())
    }
}

/// An error rate's point estimate and confidence bounds.
struct Rate {
    requests: u64,
    point: Option<f64>,
    lower: f64,
    upper: f64,
}

impl Rate {
    fn of(s: &Summary, (lower, upper): (f64, f64)) -> Rate {
        Rate {
            requests: s.requests,
            point: (s.requests > 0).then(|| s.errors as f64 / s.requests as f64),
            lower,
            upper,
        }
    }
}

/// `needed` samples, the bounds, and the verdict: fail on evidence, else pass once enough.
fn decide(r: &mut GateReport, samples: u64, needed: u64, harm: bool, clear: bool) {
    r.samples = samples;
    r.needed = needed;
    r.conclusive = clear;
    r.verdict = if harm {
        Verdict::Fail
    } else if samples < needed {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
}

fn verdict_words(r: &GateReport) -> &'static str {
    match (r.verdict, r.conclusive) {
        (Verdict::Fail, _) => "failing",
        (Verdict::Pass, true) => "passing, conclusive",
        (Verdict::Pass, false) => "passing, no evidence of harm",
        (Verdict::Inconclusive, _) => "too few samples",
        (Verdict::Skipped, _) => "skipped",
    }
}

fn p99_absolute(limits: &GateLimits, pool: PoolId, q: &Quantile, describe: bool) -> GateReport {
    let limit_us = micros(limits.p99_max);
    let mut r = report(Gate::P99Absolute, pool, limits.p99_max.as_secs_f64());
    r.value = q.point.map(secs);
    r.lower = Some(secs(q.lower));
    r.upper = (q.upper != u64::MAX).then(|| secs(q.upper));
    let (harm, clear) = (q.lower > limit_us, q.upper <= limit_us);
    decide(&mut r, q.samples, limits.min_latency_samples, harm, clear);
    if !describe && r.verdict != Verdict::Fail {
        return r;
    }
    r.detail = format!(
        "{pool} {} {}, bounds {} to {}, limit {} over {} samples: {}",
        q.name(),
        opt_ms(q.point),
        ms(q.lower),
        bound_ms(q.upper),
        ms(limit_us),
        q.samples,
        verdict_words(&r)
    );
    r
}

/// The candidate's quantile against stable's: harm when the lower bound of the difference is
/// above the limit (and, for the P99, also `p99_ratio_max` times stable's upper bound).
fn latency_relative(
    gate: Gate,
    limits: &GateLimits,
    pool: PoolId,
    c: &Quantile,
    s: &Quantile,
    describe: bool,
) -> GateReport {
    let (limit, ratio) = match gate {
        Gate::P99Relative => (limits.p99_min_delta, limits.p99_ratio_max),
        _ => (limits.p50_max_delta, 1.0),
    };
    let limit_us = micros(limit) as f64;
    let mut r = report(gate, pool, limit.as_secs_f64());
    let diff = |a: u64, b: u64| a as f64 - b as f64;
    let lower = (s.upper != u64::MAX).then(|| diff(c.lower, s.upper));
    let upper = (c.upper != u64::MAX).then(|| diff(c.upper, s.lower));
    r.value = c.point.zip(s.point).map(|(a, b)| diff(a, b) / 1e6);
    r.lower = lower.map(|d| d / 1e6);
    r.upper = upper.map(|d| d / 1e6);
    let harm = lower.is_some_and(|d| d > limit_us) && c.lower as f64 > ratio * s.upper as f64;
    let clear = upper.is_some_and(|d| d <= limit_us);
    decide(&mut r, c.samples, limits.min_latency_samples, harm, clear);
    if !describe && r.verdict != Verdict::Fail {
        return r;
    }
    r.detail = format!(
        "{} {} vs stable's {}: {}, bounds {} to {}, limit +{}{}: {}",
        c.name(),
        opt_ms(c.point),
        opt_ms(s.point),
        signed_ms(r.value.map(|v| v * 1e6)),
        signed_ms(lower),
        signed_ms(upper),
        ms(micros(limit)),
        if gate == Gate::P99Relative {
            format!(" and {ratio}x")
        } else {
            String::new()
        },
        verdict_words(&r)
    );
    r
}

fn error_rate(limits: &GateLimits, pool: PoolId, e: &Rate, describe: bool) -> GateReport {
    let limit = limits.error_rate_max;
    let mut r = report(Gate::ErrorRate, pool, limit);
    r.value = e.point;
    r.lower = Some(e.lower);
    r.upper = Some(e.upper);
    decide(
        &mut r,
        e.requests,
        limits.min_requests,
        e.lower > limit,
        e.upper <= limit,
    );
    if !describe && r.verdict != Verdict::Fail {
        return r;
    }
    r.detail = format!(
        "{pool} error rate {}, bounds {} to {}, limit {} over {} requests: {}",
        pct(e.point),
        pct(Some(e.lower)),
        pct(Some(e.upper)),
        pct(Some(limit)),
        e.requests,
        verdict_words(&r)
    );
    r
}

/// The candidate's error rate over stable's plus the margin. Harm: the test of
/// [`excess_evidence`] reaches `ln(1 / alpha)` (its own share of alpha), or the bound of the
/// difference, `lower(candidate) - upper(stable)`, is above the margin. Conclusive:
/// `upper(candidate) - lower(stable)` at or under it. The bounds are the per-pool confidence
/// sequences the `error_rate` gates use (stable's over the rollout, so also at 100%).
fn error_relative(
    limits: &GateLimits,
    pool: PoolId,
    (c, s): (&Rate, &Rate),
    obs: &Observation,
    alpha: f64,
    describe: bool,
) -> GateReport {
    let margin = limits.error_rate_margin;
    let mut r = report(Gate::ErrorRateRelative, pool, margin);
    let step_rate = |s: &Summary| (s.requests > 0).then(|| s.errors as f64 / s.requests as f64);
    // The observed difference, for people: against stable's rate in the same ticks while it
    // has traffic, else over the rollout.
    let stable_rate = step_rate(&obs.stable_step).or(s.point);
    r.value = c.point.zip(stable_rate).map(|(a, b)| a - b);
    let (lower, upper) = (c.lower - s.upper, c.upper - s.lower);
    r.lower = Some(lower);
    r.upper = Some(upper);
    let (cand, stable) = (&obs.candidate_step, &obs.stable_rollout);
    let evidence = excess_evidence(
        cand.errors.min(cand.requests),
        cand.requests,
        stable.errors.min(stable.requests),
        stable.requests,
        margin,
        ERROR_PRIOR,
    );
    let needed = (1.0 / alpha).ln();
    decide(
        &mut r,
        c.requests,
        limits.min_requests,
        evidence >= needed || lower > margin,
        upper <= margin,
    );
    if !describe && r.verdict != Verdict::Fail {
        return r;
    }
    r.detail = format!(
        "error rate {} vs stable's {}: {}, bounds {} to {}, margin {:.2} points, evidence of more {:.1} of {:.1} needed: {}",
        pct(c.point),
        pct(stable_rate),
        points(r.value),
        points(Some(lower)),
        points(Some(upper)),
        margin * 100.0,
        evidence.max(0.0),
        needed,
        verdict_words(&r)
    );
    r
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

fn opt_ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".into(), ms)
}

fn bound_ms(us: u64) -> String {
    if us == u64::MAX {
        "unbounded".into()
    } else {
        ms(us)
    }
}

fn signed_ms(us: Option<f64>) -> String {
    us.map_or_else(|| "unbounded".into(), |v| format!("{:+.2}ms", v / 1000.0))
}

/// A difference of rates in percentage points, signed.
fn points(d: Option<f64>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:+.2} points", d * 100.0))
}

fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}
