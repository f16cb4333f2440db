//! CONTROL PLANE: the rollout controller's side of gating hooks and query gates — the I/O
//! the pure machine waits for, run as tasks so that no tick blocks on it.
//!
//! A gating hook call starts when the machine records a `Pending` (after the transition
//! that recorded it is committed, or on a later tick of a new fleet leader); its outcome is
//! kept in `hook_done`, wakes [`super::run`] and is handed to the machine on that tick. The
//! query gates of a live rollout run while it is live and this instance leads.

use std::time::Duration;

use tracing::{error, info};

use super::record;
use super::{Controller, Inner, Transition};
use crate::config::HookEvent;
use crate::control::query::QueryRunner;
use crate::control::rollout::HookPoint;
use crate::control::{Actor, Control};

impl Controller {
    /// Hands a finished gating hook call to the machine; `true` if that made a transition.
    pub(super) fn take_hook_outcome(
        &self,
        control: &Control,
        inner: &mut Inner,
        now: Duration,
    ) -> bool {
        let outcome = self
            .hook_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((id, seq, outcome)) = outcome.filter(|o| o.0 == inner.meta.id) else {
            return false;
        };
        let Some(current) = inner.rollout.as_ref() else {
            return false;
        };
        let mut next = current.clone();
        let decision = next.hook_outcome(now, seq, outcome.clone());
        if next == *current {
            return false;
        }
        let command = format!("rollout {}", record::describe(&next));
        let actor = Actor::internal("controller");
        let meta = inner.meta.clone();
        let t = Transition::new(&actor, &command, &decision, inner.violations_base);
        if let Err(e) = self.commit(control, inner, next, meta, t) {
            error!(error = %e, "rollout transition refused; retrying on the next tick");
            // Kept for the next tick.
            *self.hook_done.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, seq, outcome));
        }
        true
    }

    /// Starts what the live rollout waits for and is not running yet: its gating hook call
    /// and its query gates. Only the instance that leads calls this.
    pub(super) fn follow_up(&self, control: &Control, inner: &mut Inner, generation: Option<u64>) {
        self.call_gating_hooks(control, inner, generation);
        self.run_query_gates(control, inner);
    }

    /// Starts the gating hook call the rollout waits for, unless it runs already. The call
    /// is a task: its outcome reaches the machine on the next tick, which it wakes.
    fn call_gating_hooks(&self, control: &Control, inner: &mut Inner, generation: Option<u64>) {
        let Some(r) = inner.rollout.as_ref().filter(|r| r.is_live()) else {
            return;
        };
        let Some(p) = r.pending() else { return };
        let key = (inner.meta.id, p.seq);
        if inner.hook_started == Some(key) {
            return;
        }
        inner.hook_started = Some(key);
        let event = match p.point {
            HookPoint::PreRollout => HookEvent::PreRollout,
            HookPoint::Step => HookEvent::Step,
            HookPoint::PrePromote => HookEvent::PrePromote,
        };
        let generation = generation.unwrap_or_else(|| control.routes.load().generation);
        let body = record::hook_body(r, None, &inner.meta, generation, control);
        info!(
            rollout.id = key.0,
            event = event.as_str(),
            "calling the gating rollout hooks"
        );
        let (slot, wake) = (self.hook_done.clone(), self.hook_wake.clone());
        self.notifier
            .gate(&inner.hooks, event, &body, move |outcome| {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((key.0, key.1, outcome));
                wake.notify_one();
            });
    }

    /// Keeps the query gates evaluated while the rollout is live, and only then. A rollout
    /// restored or taken over uses the config's gates of the same names.
    fn run_query_gates(&self, control: &Control, inner: &mut Inner) {
        let Some(r) = inner
            .rollout
            .as_ref()
            .filter(|r| r.is_live() && !r.queries().is_empty())
        else {
            inner.queries = None;
            return;
        };
        if inner.queries.is_none() {
            let config = control.config();
            let gates = if inner.query_gates.is_empty() {
                &config.rollout.queries
            } else {
                &inner.query_gates
            };
            let runner = QueryRunner::start(r.queries(), gates, r.candidate(), self.stats.clone());
            inner.queries = Some(runner);
        }
    }
}
