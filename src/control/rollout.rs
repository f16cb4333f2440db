//! CONTROL PLANE: the rollout state machine — pure, handed the time and its inputs.
//!
//! The driver calls [`Rollout::step`] every tick and whenever a tripwire fires, and the
//! operator verbs ([`Rollout::pause`], `resume`, `promote`, `abort`, `rollback`); each returns
//! a [`Decision`] for the driver to apply to the route table. There is no I/O, clock or async
//! here. `now` is the driver's monotonic clock (e.g. `LiveStats::now_ms`), compared only within
//! one process: [`Rollout::restored`] re-anchors a rollout read back after a restart.
//!
//! ```text
//! idle ─start─▶ progressing(0) ─▶ … ─▶ progressing(last) ─▶ baking ─▶ promoted
//!                 ▲   │ pause, insufficient_data, both_degraded
//!          resume │   ▼
//!                paused(reason)          any live state ─▶ rolled_back(gate) | aborted(actor)
//! ```
//! A step (or the bake) completes when its hold has elapsed and every judgment gate passes on
//! samples taken after the settle time. Still short of samples after `max(max_hold, hold)`:
//! paused(insufficient_data). Gates stay live while paused, so a failing candidate is still
//! rolled back — unless stable fails the same gates or is unhealthy: then paused(both_degraded),
//! never a flip onto a broken stable. Terminal states are left only by a new rollout.
//!
//! Gating hooks (`rollout/waiting.rs`): at `pre_rollout` (before any traffic moves), before each step
//! after the first and before promotion, a rollout with such hooks records a [`Pending`] and
//! holds (its gates stay live) until the driver hands in the hook's outcome: a pass goes on,
//! a failure aborts (`pre_rollout`, reason `hook_failed`) or rolls back ([`Gate::HookFailed`]).
//!
//! The driver should persist the rollout and emit an event whenever `phase()` or
//! `candidate_weight_bp()` changed after a call: entering the bake changes the phase only.

mod gates;
mod judge;
mod plan;
mod query;
pub mod sequential;
#[cfg(test)]
mod tests;
mod waiting;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use gates::{
    evaluate, wilson_lower, Baseline, Evaluation, Gate, GateReport, Observation, Trip, Verdict,
    WILSON_Z,
};
pub use judge::tests_per_rollout;
pub use plan::{GateLimits, Method, Plan};
use query::QueryTrack;
pub use query::{QueryBound, QueryReading, QueryReport};
pub use waiting::{GatingHooks, HookPoint, Pending};

use crate::config::PoolId;
use plan::{millis, FULL_BP};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    Idle,
    Progressing {
        step: usize,
    },
    /// `step` is the step whose weight holds (the last one while baking).
    Paused {
        reason: PauseReason,
        step: usize,
    },
    Baking,
    Promoted,
    RolledBack {
        gate: Gate,
        reason: String,
    },
    Aborted {
        actor: String,
        /// Why, when the rollout ended itself (a failing `pre_rollout` hook).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Phase {
    /// The label of `switchyard_rollout_phase{phase}`.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Progressing { .. } => "progressing",
            Phase::Paused { .. } => "paused",
            Phase::Baking => "baking",
            Phase::Promoted => "promoted",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Aborted { .. } => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    InsufficientData,
    BothDegraded,
    Manual,
    /// The daemon restarted mid-rollout; an operator resumes it.
    Restarted,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::InsufficientData => "insufficient_data",
            PauseReason::BothDegraded => "both_degraded",
            PauseReason::Manual => "manual",
            PauseReason::Restarted => "restarted",
        }
    }
}

/// What the driver must do to the data plane. Weights are the candidate's share.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    None,
    SetWeight {
        candidate_bp: u16,
    },
    /// 100% to stable now.
    Rollback {
        gate: Gate,
        reason: String,
    },
    /// The weight stays; the rollout waits for an operator.
    Pause {
        reason: PauseReason,
    },
    /// The candidate takes 100% and becomes the stable pool.
    Promote,
    /// The rollout is over (a terminal state); stop ticking it.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot {verb} a rollout that is {phase}")]
    Invalid {
        verb: &'static str,
        phase: &'static str,
    },
    #[error("invalid rollout plan: {0}")]
    Plan(String),
}

impl TransitionError {
    /// The admin protocol's error code.
    pub fn code(&self) -> &'static str {
        match self {
            TransitionError::Invalid { .. } => "invalid_transition",
            TransitionError::Plan(_) => "bad_argument",
        }
    }
}

/// One rollout; persisted as an opaque JSON value (the last gate reports are not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    plan: Plan,
    phase: Phase,
    /// Index into `plan.steps_bp`; `steps_bp.len()` for the bake.
    stage: usize,
    weight_bp: u16,
    /// When the current step (or bake) began: the origin of its hold and max_hold.
    #[serde(with = "millis")]
    stage_started: Duration,
    /// Samples before this are not judged: the last weight change plus settle.
    #[serde(with = "millis")]
    samples_from: Duration,
    /// Failing evaluations in a row, per [`Gate::JUDGMENT`] (records of earlier releases hold
    /// fewer: the missing ones start at 0).
    #[serde(with = "streaks")]
    streaks: Streaks,
    baseline: Baseline,
    #[serde(skip)]
    reports: Vec<GateReport>,
    /// Sequential method: the last tick's bounds, where the next searches start (a cache:
    /// not persisted, and the same decisions without it).
    #[serde(skip)]
    bounds: judge::Bounds,
    /// Reports without words unless failing ([`Rollout::terse`]; the simulator's).
    #[serde(skip)]
    terse: bool,
    /// The points with gating hooks, fixed at the start.
    #[serde(default)]
    hooks: GatingHooks,
    /// The gating hook call the rollout waits for.
    #[serde(default)]
    pending: Option<Pending>,
    /// The last [`Pending::seq`] handed out.
    #[serde(default)]
    hook_seq: u32,
    /// The query gates' bounds, fixed at the start; `Observation::queries` in this order.
    #[serde(default)]
    queries: Vec<QueryBound>,
    #[serde(skip)]
    query_tracks: Vec<QueryTrack>,
    #[serde(skip)]
    query_reports: Vec<QueryReport>,
}

/// Fail streaks, one per judgment gate.
type Streaks = [u32; Gate::JUDGMENT.len()];

const NO_STREAKS: Streaks = [0; Gate::JUDGMENT.len()];

/// [`Streaks`] as a JSON array of any length: extra entries are dropped, missing ones are 0.
mod streaks {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Streaks, NO_STREAKS};

    pub fn serialize<S: Serializer>(s: &Streaks, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_seq(s.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Streaks, D::Error> {
        let mut streaks = NO_STREAKS;
        for (slot, v) in streaks.iter_mut().zip(Vec::<u32>::deserialize(d)?) {
            *slot = v;
        }
        Ok(streaks)
    }
}

impl Rollout {
    /// A rollout not started yet: every verb but `begin` (and a no-op `rollback`) is refused.
    pub fn idle(plan: Plan) -> Rollout {
        Rollout {
            plan,
            phase: Phase::Idle,
            stage: 0,
            weight_bp: 0,
            stage_started: Duration::ZERO,
            samples_from: Duration::ZERO,
            streaks: NO_STREAKS,
            baseline: Baseline::default(),
            reports: Vec::new(),
            hooks: GatingHooks::default(),
            pending: None,
            hook_seq: 0,
            queries: Vec::new(),
            query_tracks: Vec::new(),
            query_reports: Vec::new(),
            bounds: judge::Bounds::default(),
            terse: false,
        }
    }

    /// The sequential gates' reports keep their `detail` only when failing: the same
    /// decisions and reasons, without formatting every figure every tick.
    pub fn terse(mut self) -> Rollout {
        self.terse = true;
        self
    }

    /// Validates `plan` and moves to its first step.
    pub fn start(plan: Plan, now: Duration) -> Result<(Rollout, Decision), TransitionError> {
        let mut rollout = Rollout::idle(plan);
        let decision = rollout.begin(now)?;
        Ok((rollout, decision))
    }

    pub fn begin(&mut self, now: Duration) -> Result<Decision, TransitionError> {
        if self.phase != Phase::Idle {
            return Err(self.refuse("start"));
        }
        self.plan.validate().map_err(TransitionError::Plan)?;
        if self.hooks.pre_rollout {
            // No traffic moves before the hook passes: step 0 at 0%.
            self.phase = Phase::Progressing { step: 0 };
            self.stage_started = now;
            self.samples_from = now;
            return Ok(self.wait_for(HookPoint::PreRollout));
        }
        Ok(self.enter_step(0, now))
    }

    /// One evaluation: tripwires, judgment gates, then progress. Called every tick.
    pub fn step(&mut self, now: Duration, obs: &Observation) -> Decision {
        if self.phase == Phase::Idle {
            return Decision::None;
        }
        if self.is_terminal() {
            return Decision::Done;
        }
        if self.weight_bp == 0 {
            // Waiting for `pre_rollout`: no traffic yet, nothing to judge.
            return Decision::None;
        }
        if let Some(trip) = self.judge_queries(obs) {
            return self.rollback(now, trip.gate, trip.reason);
        }
        if self.plan.gates.method == Method::Sequential {
            return self.step_sequential(now, obs);
        }
        let eval = evaluate(
            &self.plan.gates,
            obs,
            self.plan.candidate,
            self.weight_bp,
            &self.baseline,
        );
        self.baseline.update(&obs.stable, &self.plan.gates);
        let mut trip = eval.tripped.clone();
        for (streak, gate) in self.streaks.iter_mut().zip(Gate::JUDGMENT) {
            let failed = eval
                .candidate(gate)
                .is_some_and(|r| r.verdict == Verdict::Fail);
            *streak = if failed { streak.saturating_add(1) } else { 0 };
            if *streak >= self.plan.gates.fail_windows && trip.is_none() {
                let reason = eval
                    .candidate(gate)
                    .map(|r| r.detail.clone())
                    .unwrap_or_default();
                trip = Some(Trip { gate, reason });
            }
        }
        self.keep_reports(now, &eval);
        if let Some(trip) = trip {
            return self.auto_rollback(now, trip, &eval);
        }
        self.progress(now, &eval)
    }

    /// The sequential method: any gate with evidence of harm acts at once; a step completes
    /// when its hold has passed and every gate has its samples and no such evidence.
    fn step_sequential(&mut self, now: Duration, obs: &Observation) -> Decision {
        let eval = judge::evaluate(
            &self.plan.gates,
            obs,
            self.plan.candidate,
            self.plan.steps_bp.len(),
            &mut self.bounds,
            !self.terse,
        );
        // The comparisons with stable first: their evidence comes from every sample.
        let order = [
            Gate::P50Relative,
            Gate::P99Relative,
            Gate::ErrorRateRelative,
            Gate::P99Absolute,
            Gate::ErrorRate,
        ];
        let failing = order.iter().find_map(|&g| {
            eval.candidate(g)
                .filter(|r| r.verdict == Verdict::Fail)
                .map(|r| Trip {
                    gate: g,
                    reason: r.detail.clone(),
                })
        });
        self.keep_reports(now, &eval);
        if let Some(trip) = eval.tripped.clone().or(failing) {
            return self.auto_rollback(now, trip, &eval);
        }
        self.progress(now, &eval)
    }

    fn progress(&mut self, now: Duration, eval: &Evaluation) -> Decision {
        let period = match self.phase {
            Phase::Progressing { .. } => self.plan.hold,
            Phase::Baking => self.plan.bake,
            _ => return Decision::None,
        };
        if self.pending.is_some() {
            return Decision::None;
        }
        let elapsed = now.saturating_sub(self.stage_started);
        let queries = |v: Verdict| self.query_reports.iter().any(|r| r.verdict == v);
        let queries_pass = !queries(Verdict::Fail) && !queries(Verdict::Inconclusive);
        if elapsed >= period && eval.judgment_passes() && queries_pass {
            return self.advance(now);
        }
        let inconclusive = eval.judgment_inconclusive() || queries(Verdict::Inconclusive);
        if elapsed >= period.max(self.plan.max_hold) && inconclusive {
            return self.pause_for(PauseReason::InsufficientData);
        }
        Decision::None
    }

    pub fn pause(&mut self, _now: Duration) -> Result<Decision, TransitionError> {
        match self.phase {
            Phase::Progressing { .. } | Phase::Baking => Ok(self.pause_for(PauseReason::Manual)),
            Phase::Paused { .. } => Ok(Decision::None),
            _ => Err(self.refuse("pause")),
        }
    }

    /// Back to the step (or bake) it was paused in; its hold starts again.
    pub fn resume(&mut self, now: Duration) -> Result<Decision, TransitionError> {
        if !matches!(self.phase, Phase::Paused { .. }) {
            return Err(self.refuse("resume"));
        }
        self.phase = if self.stage >= self.plan.steps_bp.len() {
            Phase::Baking
        } else {
            Phase::Progressing { step: self.stage }
        };
        self.stage_started = now;
        self.streaks = NO_STREAKS;
        for t in &mut self.query_tracks {
            t.streak = 0;
        }
        if self.weight_bp == 0 {
            // Paused before `pre_rollout` passed: call it again.
            return Ok(self.wait_for(HookPoint::PreRollout));
        }
        Ok(Decision::SetWeight {
            candidate_bp: self.weight_bp,
        })
    }

    /// Skips the remaining steps and the bake.
    pub fn promote(&mut self, _now: Duration) -> Result<Decision, TransitionError> {
        if !self.is_live() {
            return Err(self.refuse("promote"));
        }
        self.phase = Phase::Promoted;
        self.weight_bp = FULL_BP;
        self.pending = None;
        Ok(Decision::Promote)
    }

    /// Rolls back to stable and ends the rollout as aborted by `actor`.
    pub fn abort(&mut self, _now: Duration, actor: &str) -> Result<Decision, TransitionError> {
        if !self.is_live() {
            return Err(self.refuse("abort"));
        }
        self.phase = Phase::Aborted {
            actor: actor.to_string(),
            reason: None,
        };
        self.weight_bp = 0;
        self.pending = None;
        Ok(Decision::Rollback {
            gate: Gate::Operator,
            reason: format!("aborted by {actor}"),
        })
    }

    /// 100% to stable, ending the rollout. Always allowed; a no-op unless live.
    pub fn rollback(&mut self, _now: Duration, gate: Gate, reason: String) -> Decision {
        if !self.is_live() {
            return Decision::None;
        }
        self.phase = Phase::RolledBack {
            gate,
            reason: reason.clone(),
        };
        self.weight_bp = 0;
        self.pending = None;
        Decision::Rollback { gate, reason }
    }

    /// A rollout read back after a restart: a running one comes back paused at the same
    /// weight, its clocks re-anchored on `now`.
    pub fn restored(mut self, now: Duration) -> Rollout {
        if matches!(self.phase, Phase::Progressing { .. } | Phase::Baking) {
            self.phase = Phase::Paused {
                reason: PauseReason::Restarted,
                step: self.step_index(),
            };
            self.pending = None;
        }
        if self.is_live() {
            self.stage_started = now;
            self.samples_from = now;
            self.streaks = NO_STREAKS;
            self.bounds = judge::Bounds::default();
        }
        self
    }

    /// A rollout recorded by another instance of a fleet, taken over here: its phase stays
    /// (a running one keeps running), its clocks re-anchored on `now`, so the current
    /// step's hold starts again on this instance's own samples.
    pub fn taken_over(mut self, now: Duration) -> Rollout {
        if self.is_live() {
            self.stage_started = now;
            self.samples_from = now;
            self.streaks = NO_STREAKS;
        }
        self
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn candidate(&self) -> PoolId {
        self.plan.candidate
    }

    /// The candidate's share in basis points; the driver maps it to green's weight.
    pub fn candidate_weight_bp(&self) -> u16 {
        self.weight_bp
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.phase,
            Phase::Promoted | Phase::RolledBack { .. } | Phase::Aborted { .. }
        )
    }

    /// Progressing, paused or baking: the candidate may carry traffic.
    pub fn is_live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Progressing { .. } | Phase::Paused { .. } | Phase::Baking
        )
    }

    /// Both pools' gates as of the last `step`.
    pub fn gates(&self) -> &[GateReport] {
        &self.reports
    }

    /// Where the judged windows should start: the last weight change plus settle. Hand the
    /// driver's `LiveStats::window_since_at(now, pool, plan.window, this)` to `step`.
    pub fn samples_since(&self) -> Duration {
        self.samples_from
    }

    /// Time left in the current hold (or bake); `None` unless progressing or baking.
    pub fn hold_remaining(&self, now: Duration) -> Option<Duration> {
        let period = match self.phase {
            Phase::Progressing { .. } => self.plan.hold,
            Phase::Baking => self.plan.bake,
            _ => return None,
        };
        Some(period.saturating_sub(now.saturating_sub(self.stage_started)))
    }

    fn step_index(&self) -> usize {
        self.stage.min(self.plan.steps_bp.len().saturating_sub(1))
    }

    fn refuse(&self, verb: &'static str) -> TransitionError {
        TransitionError::Invalid {
            verb,
            phase: self.phase.name(),
        }
    }

    fn enter_step(&mut self, stage: usize, now: Duration) -> Decision {
        self.stage = stage;
        self.weight_bp = self.plan.steps_bp.get(stage).copied().unwrap_or(FULL_BP);
        self.phase = Phase::Progressing { step: stage };
        self.stage_started = now;
        self.samples_from = now + self.plan.settle;
        self.streaks = NO_STREAKS;
        self.bounds = judge::Bounds::default();
        Decision::SetWeight {
            candidate_bp: self.weight_bp,
        }
    }

    fn advance(&mut self, now: Duration) -> Decision {
        let steps = self.plan.steps_bp.len();
        if self.stage + 1 < steps {
            if self.hooks.step {
                return self.wait_for(HookPoint::Step);
            }
            return self.enter_step(self.stage + 1, now);
        }
        if self.phase == Phase::Baking {
            if self.hooks.pre_promote {
                return self.wait_for(HookPoint::PrePromote);
            }
            self.phase = Phase::Promoted;
            return Decision::Promote;
        }
        // The last step is 100%: the bake keeps the weight and the samples.
        self.stage = steps;
        self.phase = Phase::Baking;
        self.stage_started = now;
        Decision::None
    }

    fn pause_for(&mut self, reason: PauseReason) -> Decision {
        // A resume calls the hook again (see `resume`).
        self.pending = None;
        self.phase = Phase::Paused {
            reason,
            step: self.step_index(),
        };
        Decision::Pause { reason }
    }

    fn auto_rollback(&mut self, now: Duration, trip: Trip, eval: &Evaluation) -> Decision {
        if !eval.stable_degraded(trip.gate) {
            return self.rollback(now, trip.gate, trip.reason);
        }
        match self.phase {
            Phase::Paused {
                reason: PauseReason::BothDegraded,
                ..
            } => Decision::None,
            _ => self.pause_for(PauseReason::BothDegraded),
        }
    }

    /// Keeps the reports with the candidate's fail streaks and time-to-enough-samples.
    fn keep_reports(&mut self, now: Duration, eval: &Evaluation) {
        let candidate = self.plan.candidate;
        let window = self.plan.window.as_secs_f64();
        let observed = now
            .saturating_sub(self.samples_from)
            .as_secs_f64()
            .min(window);
        self.reports.clone_from(&eval.reports);
        for r in &mut self.reports {
            if let Some(i) = r.gate.judgment_index() {
                if r.pool == candidate {
                    r.fail_streak = self.streaks[i];
                }
            }
            if r.samples < r.needed {
                let rate = if observed > 0.0 {
                    r.samples as f64 / observed
                } else {
                    0.0
                };
                r.eta_ms = (rate * window >= r.needed as f64)
                    .then(|| ((r.needed - r.samples) as f64 / rate * 1000.0).ceil() as u64);
            }
        }
    }
}
