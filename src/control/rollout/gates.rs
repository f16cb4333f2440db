//! CONTROL PLANE: the rollout's gates — pure verdicts over both pools' window snapshots.
//!
//! Tripwires (no healthy backend, a hash violation, N consecutive errors, a Wilson lower bound
//! on the error rate) act on a single evaluation. Judgment gates (P99 absolute and relative to
//! stable, error rate absolute and over stable's) are inconclusive below their minimum samples;
//! the machine rolls back after `fail_windows` failing evaluations in a row. The stable pool is
//! judged by the absolute gates too: that is what "both pools degraded" means.
//!
//! To add a gate (the compiler points at every `match` on [`Gate`]; the rest is listed here,
//! and `controller.rs`'s `every_gate_is_named_everywhere` checks steps 1, 4 and 5):
//! 1. a variant of [`Gate`], listed in [`Gate::ALL`] at the position [`Gate::index`] gives it;
//!    a judgment gate also in [`Gate::JUDGMENT`] (its fail streak is sized from that list);
//! 2. its name, unit and kind in [`Gate::as_str`], [`Gate::unit`], [`Gate::is_tripwire`];
//!    its family in [`Evaluation::stable_degraded`];
//! 3. its limits in [`GateLimits`] (the config's `[rollout.gates]` type too: one type), read in
//!    `src/config/rollout.rs` and commented in `config/switchyard.toml`;
//! 4. its report from both methods' `evaluate` (here and in `judge.rs`), so `ctl gates` shows it;
//! 5. a paragraph in docs/operations.md naming it in backticks; the controller registers its
//!    `switchyard_gate_value` and `switchyard_rollbacks_total` series from [`Gate::ALL`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::{pool_name, GateLimits, FULL_BP};
use crate::config::PoolId;
use crate::metrics::window::{Summary, WindowSnapshot};

/// Two-sided 95% for the Wilson bound: with the default 20 requests and 5%, the tripwire fires
/// from 3 errors (15%, lower bound 5.2%); a 10% error rate trips it after about 100 requests.
pub const WILSON_Z: f64 = 1.96;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    HashViolation,
    ConsecutiveErrors,
    ErrorRateTripwire,
    P99Absolute,
    P99Relative,
    /// The candidate's median against stable's (sequential method).
    P50Relative,
    ErrorRate,
    ErrorRateRelative,
    NoHealthyBackend,
    /// An operator's `rollback` or `abort`.
    Operator,
    /// A gating rollout hook failed (`[[rollout.hooks]]`).
    HookFailed,
    /// A query gate (`[[rollout.gates.query]]`), named in the reason.
    Query,
}

impl Gate {
    /// Every gate, in [`Gate::index`] order.
    pub const ALL: [Gate; 12] = [
        Gate::HashViolation,
        Gate::ConsecutiveErrors,
        Gate::ErrorRateTripwire,
        Gate::P99Absolute,
        Gate::P99Relative,
        Gate::P50Relative,
        Gate::ErrorRate,
        Gate::ErrorRateRelative,
        Gate::NoHealthyBackend,
        Gate::Operator,
        Gate::HookFailed,
        Gate::Query,
    ];

    /// The judgment gates, in fail-streak order (the window method needs `fail_windows`
    /// failures in a row; it has no P50 gate, so that streak stays at 0).
    pub const JUDGMENT: [Gate; 5] = [
        Gate::P99Absolute,
        Gate::P99Relative,
        Gate::ErrorRate,
        Gate::ErrorRateRelative,
        Gate::P50Relative,
    ];

    /// The position in [`Gate::ALL`]: a new variant must be given one here.
    pub const fn index(self) -> usize {
        match self {
            Gate::HashViolation => 0,
            Gate::ConsecutiveErrors => 1,
            Gate::ErrorRateTripwire => 2,
            Gate::P99Absolute => 3,
            Gate::P99Relative => 4,
            Gate::P50Relative => 5,
            Gate::ErrorRate => 6,
            Gate::ErrorRateRelative => 7,
            Gate::NoHealthyBackend => 8,
            Gate::Operator => 9,
            Gate::HookFailed => 10,
            Gate::Query => 11,
        }
    }

    /// Acts on a single failing evaluation of the candidate, whatever the method.
    pub const fn is_tripwire(self) -> bool {
        match self {
            Gate::NoHealthyBackend
            | Gate::HashViolation
            | Gate::ConsecutiveErrors
            | Gate::ErrorRateTripwire => true,
            Gate::P99Absolute
            | Gate::P99Relative
            | Gate::P50Relative
            | Gate::ErrorRate
            | Gate::ErrorRateRelative
            | Gate::Operator
            // A query gate needs `fail_windows` readings in a row; a failed hook ends the
            // rollout by itself, outside the evaluations.
            | Gate::HookFailed
            | Gate::Query => false,
        }
    }

    /// Judged on enough samples (in [`Gate::JUDGMENT`]).
    pub fn is_judgment(self) -> bool {
        Gate::JUDGMENT.contains(&self)
    }

    /// The position in [`Gate::JUDGMENT`] (the fail-streak slot), for judgment gates.
    pub fn judgment_index(self) -> Option<usize> {
        Gate::JUDGMENT.iter().position(|&g| g == self)
    }

    /// Is a series of `switchyard_gate_value` kept for it, and a row in `ctl gates`? Not for
    /// the operator's, a failed hook (no value) or the query gates (named by config: shown
    /// in `ctl gates` under `queries`, one row each).
    pub const fn has_value(self) -> bool {
        !matches!(self, Gate::Operator | Gate::HookFailed | Gate::Query)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Gate::HashViolation => "hash_violation",
            Gate::ConsecutiveErrors => "consecutive_errors",
            Gate::ErrorRateTripwire => "error_rate_tripwire",
            Gate::P99Absolute => "p99_absolute",
            Gate::P99Relative => "p99_relative",
            Gate::P50Relative => "p50_relative",
            Gate::ErrorRate => "error_rate",
            Gate::ErrorRateRelative => "error_rate_relative",
            Gate::NoHealthyBackend => "no_healthy_backend",
            Gate::Operator => "operator",
            Gate::HookFailed => "hook_failed",
            Gate::Query => "query",
        }
    }

    /// What [`GateReport::value`] and `limit` measure.
    pub fn unit(self) -> &'static str {
        match self {
            Gate::P99Absolute | Gate::P50Relative => "seconds",
            // The window method's ratio; the sequential method reports a difference in seconds
            // (its reports carry bounds, see `GateReport::unit`).
            Gate::P99Relative => "ratio",
            Gate::ErrorRate | Gate::ErrorRateRelative | Gate::ErrorRateTripwire => "fraction",
            Gate::HashViolation
            | Gate::ConsecutiveErrors
            | Gate::NoHealthyBackend
            | Gate::Operator
            | Gate::HookFailed => "count",
            // Whatever the query measures.
            Gate::Query => "value",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Fewer samples than the gate needs.
    Inconclusive,
    /// Not applicable: a comparison with stable while stable has no traffic and no baseline.
    Skipped,
}

/// One gate's last evaluation for one pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub gate: Gate,
    #[serde(with = "pool_name")]
    pub pool: PoolId,
    /// In [`Gate::unit`]s; `None` without samples.
    pub value: Option<f64>,
    pub limit: f64,
    pub samples: u64,
    pub needed: u64,
    pub verdict: Verdict,
    /// Failing evaluations in a row (the candidate's judgment gates).
    pub fail_streak: u32,
    /// Estimated wait for `needed` samples at the current rate; `None` if the window can
    /// never hold that many at this rate.
    pub eta_ms: Option<u64>,
    /// Sequential method: the confidence bounds of `value` (`None`: unbounded yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
    /// Sequential method: the bound on the harmful side clears the limit, not only "no
    /// evidence of harm".
    #[serde(default)]
    pub conclusive: bool,
    /// For humans, e.g. "p99 7.20ms > 5.00ms over 1532 samples".
    pub detail: String,
}

impl GateReport {
    /// What `value`, `limit` and the bounds measure.
    pub fn unit(&self) -> &'static str {
        if self.gate == Gate::P99Relative && (self.lower.is_some() || self.upper.is_some()) {
            return "seconds";
        }
        self.gate.unit()
    }
}

/// What the driver read for one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// From [`super::Rollout::samples_since`] (settle excluded).
    pub candidate: WindowSnapshot,
    /// The whole window: stable's behaviour does not depend on the candidate's weight, and
    /// "both degraded" must be known even right after a weight change.
    pub stable: WindowSnapshot,
    pub candidate_consecutive_errors: u32,
    /// Hash violations on the candidate since the current step started, settle included.
    pub candidate_violations: u64,
    pub candidate_healthy: bool,
    pub stable_healthy: bool,
    /// Sequential method: the candidate's samples since [`super::Rollout::samples_since`].
    pub candidate_step: Summary,
    /// Sequential method: stable's samples over the same span as `candidate_step`.
    pub stable_step: Summary,
    /// Sequential method: stable's samples since the rollout started, with the window
    /// before it: the reference of the relative gates, also once stable has no traffic.
    pub stable_rollout: Summary,
    /// Each query gate's latest evaluation, in the order of `Rollout::queries`.
    pub queries: Vec<Option<super::QueryReading>>,
}

/// Stable's last conclusive figures, the reference for the relative gates once the
/// candidate takes all traffic and stable has no samples of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub p99_us: Option<u64>,
    pub error_rate: Option<f64>,
}

impl Baseline {
    pub fn update(&mut self, stable: &WindowSnapshot, limits: &GateLimits) {
        if stable.latency_samples >= limits.min_latency_samples {
            self.p99_us = stable.p99.map(micros);
        }
        if stable.requests >= limits.min_requests {
            self.error_rate = stable.error_rate();
        }
    }
}

/// A tripwire that fired, or a judgment gate at its failure limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub gate: Gate,
    pub reason: String,
}

/// The result of one evaluation: the candidate's reports first, then stable's.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub candidate: PoolId,
    pub reports: Vec<GateReport>,
    /// The first candidate tripwire that failed.
    pub tripped: Option<Trip>,
    stable_unhealthy: bool,
    stable_failing: Vec<Gate>,
}

impl Evaluation {
    /// Is stable failing the family of `gate`, so that flipping to it would not help?
    pub fn stable_degraded(&self, gate: Gate) -> bool {
        let family: &[Gate] = match gate {
            Gate::HashViolation => &[Gate::HashViolation],
            Gate::ConsecutiveErrors
            | Gate::ErrorRateTripwire
            | Gate::ErrorRate
            | Gate::ErrorRateRelative => &[Gate::ErrorRateTripwire, Gate::ErrorRate],
            Gate::P99Absolute | Gate::P99Relative | Gate::P50Relative => &[Gate::P99Absolute],
            Gate::NoHealthyBackend | Gate::Operator | Gate::HookFailed | Gate::Query => &[],
        };
        self.stable_unhealthy || family.iter().any(|g| self.stable_failing.contains(g))
    }

    /// The candidate's report of `gate`.
    pub fn candidate(&self, gate: Gate) -> Option<&GateReport> {
        self.reports
            .iter()
            .find(|r| r.gate == gate && r.pool == self.candidate)
    }

    /// Every candidate judgment gate passed (or does not apply).
    pub fn judgment_passes(&self) -> bool {
        Gate::JUDGMENT
            .iter()
            .filter_map(|&g| self.candidate(g))
            .all(|r| matches!(r.verdict, Verdict::Pass | Verdict::Skipped))
    }

    pub fn judgment_inconclusive(&self) -> bool {
        Gate::JUDGMENT
            .iter()
            .filter_map(|&g| self.candidate(g))
            .any(|r| r.verdict == Verdict::Inconclusive)
    }
}

/// Every gate of both pools over one observation. `weight_bp` is the candidate's share.
pub fn evaluate(
    limits: &GateLimits,
    obs: &Observation,
    candidate: PoolId,
    weight_bp: u16,
    baseline: &Baseline,
) -> Evaluation {
    let stable = candidate.other();
    let (c, s) = (&obs.candidate, &obs.stable);
    let reports = vec![
        health(candidate, obs.candidate_healthy),
        hash(limits, candidate, obs.candidate_violations),
        consecutive(limits, candidate, obs.candidate_consecutive_errors),
        wilson(limits, candidate, c),
        p99_absolute(limits, candidate, c),
        p99_relative(limits, candidate, c, s, baseline, weight_bp),
        error_rate(limits, candidate, c),
        error_rate_relative(limits, candidate, c, s, baseline, weight_bp),
        health(stable, obs.stable_healthy),
        hash(limits, stable, s.violations),
        wilson(limits, stable, s),
        p99_absolute(limits, stable, s),
        error_rate(limits, stable, s),
    ];
    Evaluation::assemble(candidate, reports, obs.stable_healthy)
}

impl Evaluation {
    /// From the reports (the candidate's tripwires first, in the order they are checked).
    pub(super) fn assemble(
        candidate: PoolId,
        reports: Vec<GateReport>,
        stable_healthy: bool,
    ) -> Evaluation {
        let stable = candidate.other();
        let tripped = reports
            .iter()
            .filter(|r| r.pool == candidate && r.gate.is_tripwire())
            .find(|r| r.verdict == Verdict::Fail)
            .map(|r| Trip {
                gate: r.gate,
                reason: r.detail.clone(),
            });
        let stable_failing = reports
            .iter()
            .filter(|r| r.pool == stable && r.verdict == Verdict::Fail)
            .map(|r| r.gate)
            .collect();
        Evaluation {
            candidate,
            reports,
            tripped,
            stable_unhealthy: !stable_healthy,
            stable_failing,
        }
    }
}

/// Wilson score interval's lower bound of the error rate `errors / n`.
pub fn wilson_lower(errors: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p, z2) = (n as f64, errors as f64 / n as f64, z * z);
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

pub(super) fn report(gate: Gate, pool: PoolId, limit: f64) -> GateReport {
    GateReport {
        gate,
        pool,
        value: None,
        limit,
        samples: 0,
        needed: 0,
        verdict: Verdict::Pass,
        fail_streak: 0,
        eta_ms: Some(0),
        lower: None,
        upper: None,
        conclusive: false,
        detail: String::new(),
    }
}

fn verdict(fail: bool) -> Verdict {
    if fail {
        Verdict::Fail
    } else {
        Verdict::Pass
    }
}

pub(super) fn health(pool: PoolId, healthy: bool) -> GateReport {
    let mut r = report(Gate::NoHealthyBackend, pool, 1.0);
    r.value = Some(if healthy { 1.0 } else { 0.0 });
    r.verdict = verdict(!healthy);
    r.detail = if healthy {
        format!("{pool} has a healthy backend")
    } else {
        format!("no healthy backend in {pool}")
    };
    r
}

pub(super) fn hash(limits: &GateLimits, pool: PoolId, violations: u64) -> GateReport {
    let mut r = report(
        Gate::HashViolation,
        pool,
        f64::from(limits.hash_violations_max),
    );
    r.value = Some(violations as f64);
    r.verdict = verdict(violations >= u64::from(limits.hash_violations_max));
    r.detail = format!(
        "{violations} hash violations on {pool} (limit {})",
        limits.hash_violations_max
    );
    r
}

pub(super) fn consecutive(limits: &GateLimits, pool: PoolId, run: u32) -> GateReport {
    let mut r = report(
        Gate::ConsecutiveErrors,
        pool,
        f64::from(limits.consecutive_errors),
    );
    r.value = Some(f64::from(run));
    r.verdict = verdict(run >= limits.consecutive_errors);
    r.detail = format!(
        "{run} consecutive errors on {pool} (limit {})",
        limits.consecutive_errors
    );
    r
}

/// Sets samples, needed and, below them, the inconclusive verdict; true if enough.
fn enough(r: &mut GateReport, samples: u64, needed: u64) -> bool {
    r.samples = samples;
    r.needed = needed;
    if samples < needed {
        r.verdict = Verdict::Inconclusive;
        r.detail = format!("{samples} of {needed} samples");
        return false;
    }
    true
}

pub(super) fn wilson(limits: &GateLimits, pool: PoolId, w: &WindowSnapshot) -> GateReport {
    let mut r = report(Gate::ErrorRateTripwire, pool, limits.tripwire_error_rate);
    if !enough(&mut r, w.requests, limits.tripwire_min_requests) {
        return r;
    }
    let lower = wilson_lower(w.errors, w.requests, WILSON_Z);
    r.value = Some(lower);
    r.verdict = verdict(lower > limits.tripwire_error_rate);
    r.detail = format!(
        "error rate {} on {} requests to {pool}, lower bound {} vs limit {}",
        pct(w.error_rate()),
        w.requests,
        pct(Some(lower)),
        pct(Some(limits.tripwire_error_rate))
    );
    r
}

fn p99_absolute(limits: &GateLimits, pool: PoolId, w: &WindowSnapshot) -> GateReport {
    let mut r = report(Gate::P99Absolute, pool, limits.p99_max.as_secs_f64());
    if !enough(&mut r, w.latency_samples, limits.min_latency_samples) {
        return r;
    }
    let p99 = w.p99.unwrap_or_default();
    r.value = Some(p99.as_secs_f64());
    r.verdict = verdict(p99 > limits.p99_max);
    r.detail = format!(
        "{pool} p99 {} vs limit {} over {} samples",
        ms(p99),
        ms(limits.p99_max),
        r.samples
    );
    r
}

fn error_rate(limits: &GateLimits, pool: PoolId, w: &WindowSnapshot) -> GateReport {
    let mut r = report(Gate::ErrorRate, pool, limits.error_rate_max);
    if !enough(&mut r, w.requests, limits.min_requests) {
        return r;
    }
    let rate = w.error_rate().unwrap_or_default();
    r.value = Some(rate);
    r.verdict = verdict(rate > limits.error_rate_max);
    r.detail = format!(
        "{pool} error rate {} vs limit {} over {} requests",
        pct(Some(rate)),
        pct(Some(limits.error_rate_max)),
        w.requests
    );
    r
}

/// Stable's figure to compare with: live if it has enough samples, else the baseline, else
/// nothing — which is inconclusive while stable still gets traffic, and skipped once it cannot.
fn reference<T>(live: Option<T>, saved: Option<T>, weight_bp: u16) -> Result<T, Verdict> {
    live.or(saved).ok_or(if weight_bp >= FULL_BP {
        Verdict::Skipped
    } else {
        Verdict::Inconclusive
    })
}

fn p99_relative(
    limits: &GateLimits,
    pool: PoolId,
    c: &WindowSnapshot,
    s: &WindowSnapshot,
    baseline: &Baseline,
    weight_bp: u16,
) -> GateReport {
    let mut r = report(Gate::P99Relative, pool, limits.p99_ratio_max);
    if !enough(&mut r, c.latency_samples, limits.min_latency_samples) {
        return r;
    }
    let live = (s.latency_samples >= limits.min_latency_samples)
        .then(|| s.p99.map(micros))
        .flatten();
    let stable_us = match reference(live, baseline.p99_us, weight_bp) {
        Ok(us) => us,
        Err(v) => {
            r.verdict = v;
            r.detail = format!(
                "stable has {} of {} samples",
                s.latency_samples, limits.min_latency_samples
            );
            return r;
        }
    };
    let cand_us = c.p99.map(micros).unwrap_or_default();
    let ratio = cand_us as f64 / stable_us.max(1) as f64;
    let delta = Duration::from_micros(cand_us.saturating_sub(stable_us));
    r.value = Some(ratio);
    r.verdict = verdict(ratio > limits.p99_ratio_max && delta > limits.p99_min_delta);
    r.detail = format!(
        "p99 {} is {ratio:.2}x stable's {} (fails above {}x and +{})",
        ms(Duration::from_micros(cand_us)),
        ms(Duration::from_micros(stable_us)),
        limits.p99_ratio_max,
        ms(limits.p99_min_delta)
    );
    r
}

fn error_rate_relative(
    limits: &GateLimits,
    pool: PoolId,
    c: &WindowSnapshot,
    s: &WindowSnapshot,
    baseline: &Baseline,
    weight_bp: u16,
) -> GateReport {
    let mut r = report(Gate::ErrorRateRelative, pool, limits.error_rate_margin);
    if !enough(&mut r, c.requests, limits.min_requests) {
        return r;
    }
    let live = (s.requests >= limits.min_requests)
        .then(|| s.error_rate())
        .flatten();
    let stable_rate = match reference(live, baseline.error_rate, weight_bp) {
        Ok(rate) => rate,
        Err(v) => {
            r.verdict = v;
            r.detail = format!(
                "stable has {} of {} requests",
                s.requests, limits.min_requests
            );
            return r;
        }
    };
    let rate = c.error_rate().unwrap_or_default();
    r.value = Some(rate - stable_rate);
    r.verdict = verdict(rate > stable_rate + limits.error_rate_margin);
    r.detail = format!(
        "error rate {} vs stable's {} + margin {}",
        pct(Some(rate)),
        pct(Some(stable_rate)),
        pct(Some(limits.error_rate_margin))
    );
    r
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}
