//! CONTROL PLANE: what a rollout waits for besides its gates — the answer of a gating hook.
//!
//! The machine never calls a hook: when it reaches a point with a gating hook it records a
//! [`Pending`] (with a sequence number) and goes on ticking; the driver runs the call as a
//! task and hands its outcome back with [`super::Rollout::hook_outcome`]. An outcome for
//! another sequence number (a pause, an abort or a newer wait came first) is ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::FULL_BP;
use super::{Decision, Gate, Phase, Rollout};

/// A point of the rollout where gating hooks are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before any traffic moves.
    PreRollout,
    /// Before each step's weight after the first.
    Step,
    /// Before the candidate is promoted (the bake has passed).
    PrePromote,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::PreRollout => "pre_rollout",
            HookPoint::Step => "step",
            HookPoint::PrePromote => "pre_promote",
        }
    }
}

/// The points of a rollout that have at least one gating hook (fixed when it starts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatingHooks {
    pub pre_rollout: bool,
    pub step: bool,
    pub pre_promote: bool,
}

impl GatingHooks {
    pub fn at(self, point: HookPoint) -> bool {
        match point {
            HookPoint::PreRollout => self.pre_rollout,
            HookPoint::Step => self.step,
            HookPoint::PrePromote => self.pre_promote,
        }
    }
}

/// A gating hook call the rollout waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub point: HookPoint,
    /// Tells this wait's outcome from an earlier one's.
    pub seq: u32,
}

impl Rollout {
    /// The points where this rollout waits for gating hooks; set before [`Rollout::begin`].
    pub fn with_hooks(mut self, hooks: GatingHooks) -> Rollout {
        self.hooks = hooks;
        self
    }

    /// The gating hook call this rollout waits for, if any.
    pub fn pending(&self) -> Option<Pending> {
        self.pending
    }

    /// The outcome of the gating hook call `seq`: a pass goes on from where the rollout
    /// waited; a failure (`Err(why)`, naming the hook) aborts before any traffic moved
    /// (`pre_rollout`) or rolls back. An outcome nobody waits for any more is ignored.
    pub fn hook_outcome(
        &mut self,
        now: Duration,
        seq: u32,
        outcome: Result<(), String>,
    ) -> Decision {
        let Some(p) = self.pending.filter(|p| p.seq == seq && self.is_live()) else {
            return Decision::None;
        };
        self.pending = None;
        match (p.point, outcome) {
            (HookPoint::PreRollout, Ok(())) => self.enter_step(0, now),
            (HookPoint::Step, Ok(())) => self.enter_step(self.stage + 1, now),
            (HookPoint::PrePromote, Ok(())) => {
                self.phase = Phase::Promoted;
                self.weight_bp = FULL_BP;
                Decision::Promote
            }
            (HookPoint::PreRollout, Err(why)) => {
                self.phase = Phase::Aborted {
                    actor: "controller".into(),
                    reason: Some(format!("hook_failed: {why}")),
                };
                self.weight_bp = 0;
                // Nothing moved: no route change.
                Decision::Done
            }
            (_, Err(why)) => self.rollback(now, Gate::HookFailed, why),
        }
    }

    pub(super) fn wait_for(&mut self, point: HookPoint) -> Decision {
        self.hook_seq = self.hook_seq.wrapping_add(1);
        self.pending = Some(Pending {
            point,
            seq: self.hook_seq,
        });
        Decision::None
    }
}
