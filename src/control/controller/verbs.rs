//! CONTROL PLANE: the operator's side of the rollout controller — `rollout start`,
//! `rollout pause|resume|promote|abort`, `rollback`, `rollout status` and `gates`.
//!
//! Each mutation is one transition through [`Controller::commit`]; a refusal is audited.
//! Codes: `conflict` (a rollout is live, or `expect-gen` did not match),
//! `invalid_transition` (the verb does not apply to the rollout's phase, or the candidate is
//! the stable pool or not ready), `bad_argument` (an invalid plan).

use std::time::Duration;

use serde_json::{json, Value};

use super::record::{self, Meta};
use super::{send_all_to, Controller, Transition};
use crate::config::PoolId;
use crate::control::command::{AdminError, RolloutAction, StartArgs};
use crate::control::rollout::{
    evaluate, Baseline, Gate, GateReport, Observation, Plan, Rollout, TransitionError,
};
use crate::control::{percent, Actor, Applied, Control};
use crate::proxy::route::{PoolState, FULL_BP};

/// "uid 1000", or the internal actor's kind.
fn actor_name(actor: &Actor) -> String {
    actor
        .uid
        .map_or_else(|| actor.kind.to_string(), |uid| format!("uid {uid}"))
}

fn transition_error(e: TransitionError) -> AdminError {
    AdminError::new(e.code(), e.to_string())
}

/// The reply of a rollout mutation: the route change and the rollout as it now stands.
fn reply(applied: &Applied, view: Value) -> Value {
    let mut v = json!({
        "generation": applied.generation,
        "changed": !applied.changes.is_empty(),
        "changes": applied.changes,
        "green_percent": percent(applied.table.green_bp),
        "effective_green_percent": percent(applied.table.effective_green_bp()),
        "rollout": view,
    });
    if let Some(w) = &applied.warning {
        v["warning"] = json!(w);
    }
    v
}

impl Controller {
    /// `rollout start`: refused while a rollout is live (`conflict`).
    pub fn start(
        &self,
        control: &Control,
        actor: &Actor,
        line: &str,
        args: &StartArgs,
        expect_gen: Option<u64>,
    ) -> Result<Value, AdminError> {
        let refuse = |e: AdminError| {
            control.audit_refusal(actor, line, &e);
            e
        };
        let mut inner = self.lock();
        if let Some(r) = inner.rollout.as_ref().filter(|r| r.is_live()) {
            return Err(refuse(AdminError::new(
                "conflict",
                format!(
                    "rollout {} to {} is already {}; pause, abort or `rollback` it first",
                    inner.meta.id,
                    r.candidate(),
                    record::describe(r)
                ),
            )));
        }
        let stable = control.stable();
        let candidate = args.to.unwrap_or(stable.other());
        if candidate == stable {
            return Err(refuse(AdminError::new(
                "invalid_transition",
                format!(
                    "{candidate} is already the stable pool; a rollout goes to {}",
                    stable.other()
                ),
            )));
        }
        let state = control.routes.load().states[candidate.index()];
        if state != PoolState::Ready {
            return Err(refuse(AdminError::new(
                "invalid_transition",
                format!("pool {candidate} is not ready; run `pool {candidate} ready` first"),
            )));
        }
        let mut plan = Plan::from_config(candidate, &control.config().rollout);
        if let Some(steps) = &args.steps_bp {
            plan.steps_bp.clone_from(steps);
        }
        plan.hold = args.hold.unwrap_or(plan.hold);
        plan.bake = args.bake.unwrap_or(plan.bake);
        let now = self.now();
        // A reload applies hooks to the next rollout, never to a running one.
        let hooks = control.config().rollout.hooks.clone();
        let query_gates = control.config().rollout.queries.clone();
        let mut rollout = Rollout::idle(plan)
            .with_hooks(crate::control::hooks::gating(&hooks))
            .with_queries(crate::control::query::bounds(&query_gates));
        let decision = rollout
            .begin(now)
            .map_err(|e| refuse(transition_error(e)))?;
        let meta = Meta {
            id: inner.meta.id + 1,
            started_unix_ms: record::unix_ms(),
            ended_unix_ms: None,
            started_by: serde_json::to_value(actor).unwrap_or(Value::Null),
        };
        self.stats.reset_consecutive_errors(candidate);
        inner.hooks = hooks;
        self.notifier.register(&inner.hooks);
        inner.query_gates = query_gates;
        inner.queries = None;
        let t = Transition {
            expect_gen,
            new_salt: Some(fastrand::u64(..)),
            ..Transition::new(
                actor,
                line,
                &decision,
                self.stats.violations_total(candidate),
            )
        };
        let applied = self.commit(control, &mut inner, rollout, meta, t)?;
        Ok(reply(&applied, self.view(&inner)))
    }

    /// `rollout pause|resume|promote|abort`.
    pub fn act(
        &self,
        control: &Control,
        actor: &Actor,
        line: &str,
        action: RolloutAction,
        expect_gen: Option<u64>,
    ) -> Result<Value, AdminError> {
        let mut inner = self.lock();
        let now = self.now();
        let mut next = inner.rollout.clone().unwrap_or_else(|| {
            Rollout::idle(Plan::from_config(
                control.stable().other(),
                &control.config().rollout,
            ))
        });
        let decision = match action {
            RolloutAction::Pause => next.pause(now),
            RolloutAction::Resume => next.resume(now),
            RolloutAction::Promote => next.promote(now),
            RolloutAction::Abort => next.abort(now, &actor_name(actor)),
        }
        .map_err(|e| {
            let e = transition_error(e);
            control.audit_refusal(actor, line, &e);
            e
        })?;
        if inner.rollout.as_ref() == Some(&next) {
            // `pause` while paused: nothing changes (still checked and audited).
            let applied = control.update(actor, line, expect_gen, |_| Ok(()))?;
            return Ok(reply(&applied, self.view(&inner)));
        }
        let meta = inner.meta.clone();
        let violations = self.stats.violations_total(next.candidate());
        let t = Transition {
            expect_gen,
            ..Transition::new(actor, line, &decision, violations)
        };
        let applied = self.commit(control, &mut inner, next, meta, t)?;
        Ok(reply(&applied, self.view(&inner)))
    }

    /// `rollback [to POOL]`: 100% to POOL (default the stable pool) now, always allowed,
    /// idempotent. A live rollout ends in the same swap as rolled back by `operator`.
    pub fn rollback(
        &self,
        control: &Control,
        actor: &Actor,
        line: &str,
        to: Option<PoolId>,
        expect_gen: Option<u64>,
    ) -> Result<Applied, AdminError> {
        let mut inner = self.lock();
        let Some(mut next) = inner.rollout.clone().filter(Rollout::is_live) else {
            return control.update(actor, line, expect_gen, |d| {
                send_all_to(d, to.unwrap_or(d.stable));
                Ok(())
            });
        };
        let reason = format!("`{line}` by {}", actor_name(actor));
        let decision = next.rollback(self.now(), Gate::Operator, reason);
        let meta = inner.meta.clone();
        let violations = self.stats.violations_total(next.candidate());
        let t = Transition {
            expect_gen,
            rollback_to: to,
            ..Transition::new(actor, line, &decision, violations)
        };
        self.commit(control, &mut inner, next, meta, t)
    }

    /// `rollout status`: `{"generation", "rollout": {...}}`; `phase` is `idle` before the
    /// first rollout.
    pub fn status(&self, control: &Control) -> Value {
        let inner = self.lock();
        json!({
            "generation": control.routes.load().generation,
            "rollout": self.view(&inner),
            "hooks": self.notifier.view(),
        })
    }

    /// Each rollout hook's deliveries and failures (`status` and `rollout status`).
    pub fn hooks_view(&self) -> Value {
        self.notifier.view()
    }

    fn view(&self, inner: &super::Inner) -> Value {
        match &inner.rollout {
            Some(r) => record::view(r, &inner.meta, self.now()),
            None => json!({ "id": null, "phase": "idle", "gates": [] }),
        }
    }

    /// `gates`: the live rollout's last evaluation; without one, the gates of a rollout to
    /// the pool that is not stable judged now, with each wait estimated for its first step.
    pub fn gates(&self, control: &Control) -> Value {
        let inner = self.lock();
        if let Some(r) = inner.rollout.as_ref().filter(|r| r.is_live()) {
            return json!({
                "rollout": inner.meta.id,
                "phase": r.phase().name(),
                "candidate": r.candidate(),
                "stable": r.candidate().other(),
                "window_ms": record::millis(r.plan().window),
                "gates": record::reports(r.gates()),
                "queries": r.query_reports(),
                // The samples the sequential gates judge (in a fleet, the leader's merge).
                "evidence": {
                    "candidate_step": counts(&inner.accum.candidate_step),
                    "stable_step": counts(&inner.accum.stable_step),
                    "stable_rollout": counts(&inner.accum.stable_rollout),
                },
            });
        }
        drop(inner);
        let stable = control.stable();
        let candidate = stable.other();
        let plan = Plan::from_config(candidate, &control.config().rollout);
        let reports = self.judge_now(control, &plan);
        // The query gates a rollout would use: asked only while one is live.
        let queries: Vec<Value> = control
            .config()
            .rollout
            .queries
            .iter()
            .map(|q| {
                json!({ "name": q.name, "value": null, "max": q.max, "min": q.min,
                        "verdict": "inconclusive", "fail_streak": 0, "evaluations": 0,
                        "detail": "asked while a rollout is live" })
            })
            .collect();
        let first = plan
            .steps_bp
            .first()
            .map_or(0.0, |&bp| f64::from(bp) / 100.0);
        json!({
            "rollout": null,
            "phase": "idle",
            "candidate": candidate,
            "stable": stable,
            "window_ms": record::millis(plan.window),
            "note": format!(
                "no rollout is running; the next one would send {first}% of new requests to {candidate} and judge it on the samples after its settle; below, a preview: the gates over the last window as they stand"
            ),
            "gates": record::reports(&reports),
            "queries": queries,
        })
    }

    fn judge_now(&self, control: &Control, plan: &Plan) -> Vec<GateReport> {
        let (candidate, stable) = (plan.candidate, plan.candidate.other());
        let now_ms = self.stats.now_ms();
        let table = control.routes.load();
        let c = self.stats.window_at(now_ms, candidate, plan.window);
        let s = self.stats.window_at(now_ms, stable, plan.window);
        let total_rate = (c.requests + s.requests) as f64 / plan.window.as_secs_f64();
        let first_bp = plan.steps_bp.first().copied().unwrap_or(FULL_BP);
        let share = f64::from(first_bp) / f64::from(FULL_BP);
        let obs = Observation {
            candidate_violations: c.violations,
            candidate: c,
            stable: s,
            candidate_consecutive_errors: self.stats.consecutive_errors(candidate),
            candidate_healthy: table.pool(candidate).in_rotation() > 0,
            stable_healthy: table.pool(stable).in_rotation() > 0,
            ..Observation::default()
        };
        let weight = match candidate {
            PoolId::Green => table.green_bp,
            PoolId::Blue => FULL_BP - table.green_bp,
        };
        let mut reports =
            evaluate(&plan.gates, &obs, candidate, weight, &Baseline::default()).reports;
        for r in &mut reports {
            let rate = total_rate
                * if r.pool == candidate {
                    share
                } else {
                    1.0 - share
                };
            r.eta_ms = eta_ms(r.needed, rate, plan.window);
        }
        reports
    }
}

fn counts(s: &crate::metrics::window::Summary) -> Value {
    json!({ "requests": s.requests, "errors": s.errors, "violations": s.violations })
}

/// Time to gather `needed` samples from zero at `rate` per second; `None` if a window can
/// never hold that many.
fn eta_ms(needed: u64, rate: f64, window: Duration) -> Option<u64> {
    if needed == 0 {
        return Some(0);
    }
    (rate * window.as_secs_f64() >= needed as f64)
        .then(|| (needed as f64 / rate * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_none_when_the_window_cannot_hold_enough() {
        let w = Duration::from_secs(30);
        assert_eq!(eta_ms(300, 100.0, w), Some(3000));
        assert_eq!(eta_ms(300, 5.0, w), None);
        assert_eq!(eta_ms(0, 0.0, w), Some(0));
    }

    #[test]
    fn operators_are_named_by_uid() {
        let admin = Actor::admin(crate::control::access::Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(7),
        });
        assert_eq!(actor_name(&admin), "uid 1000");
        assert_eq!(actor_name(&Actor::internal("controller")), "controller");
    }
}
