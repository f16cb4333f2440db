//! CONTROL PLANE: the sequential gates' evidence, gathered from the ring of short buckets.
//!
//! Each tick merges the buckets completed since the last one into three summaries: the
//! candidate's and stable's since the step's settle, and stable's since the rollout began (with
//! the window before it). The request path is untouched: it records into the ring as ever, and
//! a step may last far longer than the ring. A bucket is merged once, when complete, so the
//! evidence trails the clock by at most one bucket (the tripwires do not wait for it).

use std::time::Duration;

use crate::config::PoolId;
use crate::metrics::window::{LiveStats, Summary};

#[derive(Debug, Default)]
pub(super) struct Accumulator {
    /// The rollout (id and candidate) these summaries belong to.
    rollout: Option<(u64, PoolId)>,
    /// The step's `samples_since` in ms; `u64::MAX` before the first step.
    since_ms: u64,
    /// The first bucket not merged yet.
    next_epoch: u64,
    pub candidate_step: Summary,
    pub stable_step: Summary,
    pub stable_rollout: Summary,
    /// When the other instances' samples were last added (fleet); kept across resets.
    others_ms: Option<u64>,
}

impl Accumulator {
    /// Brings the summaries up to `now_ms` for rollout `id` moving to `candidate`, whose
    /// current step judges samples from `since_ms`.
    pub fn update(
        &mut self,
        stats: &LiveStats,
        (id, candidate): (u64, PoolId),
        since_ms: u64,
        now_ms: u64,
        window: Duration,
    ) {
        let stable = candidate.other();
        let current = stats.epoch_of(now_ms);
        if self.rollout != Some((id, candidate)) {
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            let first = stats.epoch_of(now_ms.saturating_sub(window_ms));
            *self = Accumulator {
                others_ms: self.others_ms,
                rollout: Some((id, candidate)),
                since_ms: u64::MAX,
                next_epoch: current,
                stable_rollout: stats.summary(stable, first, current.saturating_sub(1)),
                ..Accumulator::default()
            };
            if current == 0 {
                self.stable_rollout = Summary::default();
            }
        }
        if since_ms != self.since_ms {
            self.since_ms = since_ms;
            self.candidate_step = Summary::default();
            self.stable_step = Summary::default();
        }
        if current <= self.next_epoch {
            return;
        }
        let last = current - 1;
        self.stable_rollout
            .merge(&stats.summary(stable, self.next_epoch, last));
        let bucket_ms = u64::try_from(stats.bucket().as_millis())
            .unwrap_or(1)
            .max(1);
        let step_first = self.next_epoch.max(since_ms.div_ceil(bucket_ms));
        if step_first <= last {
            self.candidate_step
                .merge(&stats.summary(candidate, step_first, last));
            self.stable_step
                .merge(&stats.summary(stable, step_first, last));
        }
        self.next_epoch = current;
    }

    /// Adds the other instances' samples taken at `now_ms` (fleet, see
    /// `control::fleet::stats`) to the rollout's evidence, and to the step's when the last
    /// take was already past the step's `samples_since`: samples taken in one lump across a
    /// step's start are not the step's.
    pub fn add_others(&mut self, candidate: PoolId, others: &[Summary; 2], now_ms: u64) {
        let previous = self.others_ms.replace(now_ms);
        if self.rollout.is_none() {
            return;
        }
        let stable = candidate.other();
        self.stable_rollout.merge(&others[stable.index()]);
        if previous.is_some_and(|ms| ms >= self.since_ms) {
            self.candidate_step.merge(&others[candidate.index()]);
            self.stable_step.merge(&others[stable.index()]);
        }
    }
}
