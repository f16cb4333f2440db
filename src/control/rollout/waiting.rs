//! CONTROL PLANE: what a rollout waits for besides its gates — the answer of a gating hook.
//!
//! The machine never calls a hook: when it reaches a point with a gating hook it records a
//! [`Pending`] (with a sequence number) and goes on ticking; the driver runs the call as a
//! task and hands its outcome back with [`super::Rollout::hook_outcome`]. An outcome for
//! another sequence number (a pause, an abort or a newer wait came first) is ignored.

use serde::{Deserialize, Serialize};

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
