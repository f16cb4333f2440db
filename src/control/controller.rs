//! CONTROL PLANE: the rollout controller — the async driver of the pure [`Rollout`] machine.
//!
//! [`run`] ticks every `rollout.tick` and also wakes at once when [`LiveStats::tripwire`]
//! fires (a hash violation or the N-th consecutive error on the candidate), so a tripwire
//! rollback does not wait for the tick. Each tick reads an [`Observation`] — the candidate's
//! window from the last weight change plus settle, stable's whole window, the candidate's
//! error run and hash violations since the phase began, each pool's backends in rotation —
//! and steps the machine.
//!
//! Every transition (a decision, or an operator verb from `verbs`) is one
//! [`Control::update`]: the route-table change (candidate weight, 100% stable on a rollback,
//! the candidate as the stable pool on promotion) and the rollout's record are published,
//! saved and audited together, with one generation. Then a `{"event":"rollout",...}` goes to
//! `watch` clients and `switchyard_rollout_phase`, `switchyard_rollbacks_total` follow;
//! `switchyard_gate_value` follows every tick.
//!
//! Gating hooks and query gates (`gating`): their calls run as tasks this instance starts
//! when it leads; their outcomes reach the machine as values on the next tick.
//!
//! Locking: the controller's own mutex is taken before `Control`'s (never the other way);
//! `update` closures here only edit the draft. Ticks run on the blocking pool (an update
//! fsyncs the state file); the route swap itself is published before that fsync.

mod accum;
mod gating;
mod record;
mod verbs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge, Label};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::command::AdminError;
use super::query::QueryRunner;
use super::rollout::{Decision, Gate, GateReport, Observation, Phase, Rollout};
use super::{Actor, Applied, Control, Draft};
use crate::config::{HookConfig, HookEvent, PoolId, QueryGateConfig};
use crate::metrics::names;
use crate::metrics::window::LiveStats;
use crate::metrics::Metrics;
use crate::proxy::route::{PoolState, FULL_BP};
use record::Meta;

/// The label values of `switchyard_rollout_phase{phase}`.
const PHASES: [&str; 7] = [
    "idle",
    "progressing",
    "paused",
    "baking",
    "promoted",
    "rolled_back",
    "aborted",
];

/// The rollout controller: the current (or last) rollout and its metrics.
pub struct Controller {
    stats: Arc<LiveStats>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    phase_gauges: Vec<Gauge>,
    gate_gauges: Mutex<HashMap<(Gate, PoolId), Gauge>>,
    rollbacks: Mutex<HashMap<Gate, Counter>>,
    notifier: super::hooks::Notifier,
    /// The outcome of the last gating hook call: (rollout id, [`Pending::seq`], outcome).
    hook_done: Arc<Mutex<Option<HookOutcome>>>,
    /// Wakes [`run`] when a gating hook call ends, so the rollout goes on without a tick.
    hook_wake: Arc<tokio::sync::Notify>,
}

type HookOutcome = (u64, u32, Result<(), String>);

struct Inner {
    /// `None` until the first rollout; the last one stays after it ends.
    rollout: Option<Rollout>,
    meta: Meta,
    /// The candidate's `violations_total` when the current phase or weight began.
    violations_base: u64,
    /// The sequential gates' summaries of the current rollout.
    accum: accum::Accumulator,
    /// The hooks of the current rollout: the config's when it started.
    hooks: Vec<Arc<HookConfig>>,
    /// The gating hook call started last: (rollout id, [`Pending::seq`]).
    hook_started: Option<(u64, u32)>,
    /// The query gates of the current rollout: the config's when it started.
    query_gates: Vec<Arc<QueryGateConfig>>,
    /// Their evaluations while the rollout is live.
    queries: Option<QueryRunner>,
}

/// Green's share for the candidate's share `candidate_bp`.
pub fn green_bp(candidate: PoolId, candidate_bp: u16) -> u16 {
    match candidate {
        PoolId::Green => candidate_bp,
        PoolId::Blue => FULL_BP - candidate_bp.min(FULL_BP),
    }
}

/// 100% of new requests to `target`, which is made ready (a rollback onto a drained pool
/// would send nothing there).
pub fn send_all_to(d: &mut Draft, target: PoolId) {
    d.green_bp = green_bp(target.other(), 0);
    d.states[target.index()] = PoolState::Ready;
}

impl Controller {
    pub fn new(stats: Arc<LiveStats>, metrics: Arc<Metrics>) -> Controller {
        let phase_gauges = PHASES
            .iter()
            .map(|&p| metrics.gauge(names::ROLLOUT_PHASE, vec![Label::new("phase", p)]))
            .collect::<Vec<_>>();
        let c = Controller {
            stats,
            metrics: metrics.clone(),
            inner: Mutex::new(Inner {
                rollout: None,
                meta: Meta::default(),
                violations_base: 0,
                accum: accum::Accumulator::default(),
                hooks: Vec::new(),
                hook_started: None,
                query_gates: Vec::new(),
                queries: None,
            }),
            phase_gauges,
            gate_gauges: Mutex::new(HashMap::new()),
            rollbacks: Mutex::new(HashMap::new()),
            notifier: super::hooks::Notifier::new(metrics.clone()),
            hook_done: Arc::new(Mutex::new(None)),
            hook_wake: Arc::new(tokio::sync::Notify::new()),
        };
        c.set_phase_gauge("idle");
        c.register_series();
        c
    }

    /// Every rollback reason and gate series exists from the start (at 0), so alert
    /// rules and dashboards see them before the first rollout, and `increase()` works
    /// on the first rollback.
    fn register_series(&self) {
        let mut rollbacks = self.rollbacks.lock().unwrap_or_else(|e| e.into_inner());
        let mut gauges = self.gate_gauges.lock().unwrap_or_else(|e| e.into_inner());
        for gate in Gate::ALL {
            rollbacks.entry(gate).or_insert_with(|| {
                let c = self.metrics.counter(
                    names::ROLLBACKS_TOTAL,
                    vec![Label::new("reason", gate.as_str())],
                );
                c.increment(0);
                c
            });
            if !gate.has_value() {
                continue;
            }
            for pool in PoolId::ALL {
                gauges.entry((gate, pool)).or_insert_with(|| {
                    let g = self.metrics.gauge(
                        names::GATE_VALUE,
                        vec![
                            Label::new("gate", gate.as_str()),
                            Label::new("pool", pool.as_str()),
                        ],
                    );
                    g.set(0.0);
                    g
                });
            }
        }
    }

    /// The machine's clock: [`LiveStats::now_ms`], so windows and holds agree.
    fn now(&self) -> Duration {
        Duration::from_millis(self.stats.now_ms())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic mid-transition leaves the previous rollout in place (it is replaced last).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back the rollout saved before a restart: a running one comes back paused
    /// (`restarted`) at the same weight, which the restored route table already carries.
    pub fn restore(&self, control: &Control) {
        let saved = control.restored_rollout();
        if saved.is_null() {
            return;
        }
        let Some((rollout, meta)) = record::parse(&saved) else {
            warn!("the saved rollout record is not one this version reads; starting idle");
            return;
        };
        let mut inner = self.lock();
        let was_running = matches!(rollout.phase(), Phase::Progressing { .. } | Phase::Baking);
        let rollout = rollout.restored(self.now());
        inner.meta = meta;
        if !was_running {
            let live = rollout.is_live();
            inner.rollout = Some(rollout);
            self.after(control, &mut inner, None, &json!("startup"), None);
            if live {
                info!(rollout.id = inner.meta.id, "restored a paused rollout");
            }
            return;
        }
        let meta = inner.meta.clone();
        let command = format!(
            "rollout restored after a restart: {}",
            record::describe(&rollout)
        );
        let actor = Actor::internal("startup");
        let base = self.stats.violations_total(rollout.candidate());
        if let Err(e) = self.commit(
            control,
            &mut inner,
            rollout,
            meta,
            Transition::new(&actor, &command, &Decision::None, base),
        ) {
            error!(error = %e, "cannot record the restored rollout");
        }
    }

    /// Fleet: the rollout record another instance wrote (applied from etcd) becomes this
    /// controller's rollout, so whichever instance leads next goes on from it.
    pub fn adopt(&self, control: &Control, saved: &Value) {
        if saved.is_null() {
            return;
        }
        let Some((rollout, meta)) = record::parse(saved) else {
            warn!("the fleet's rollout record is not one this version reads; ignoring it");
            return;
        };
        let mut inner = self.lock();
        let previous = inner.rollout.take();
        inner.violations_base = self.stats.violations_total(rollout.candidate());
        inner.rollout = Some(rollout.taken_over(self.now()));
        inner.meta = meta;
        self.after(
            control,
            &mut inner,
            previous.as_ref(),
            &json!("fleet"),
            None,
        );
    }

    /// One evaluation of the live rollout, if any; applies what it decides.
    pub fn tick(&self, control: &Control) {
        // Fleet: what the other instances recorded since the last tick, taken on every tick
        // so that a sample counts once and only in the step it arrived in.
        let others = control.fleet_stats().map(|m| m.take());
        let mut inner = self.lock();
        if !inner.rollout.as_ref().is_some_and(Rollout::is_live) {
            return;
        }
        let now = self.now();
        if self.take_hook_outcome(control, &mut inner, now) {
            return;
        }
        if control.leads() {
            self.follow_up(control, &mut inner, None);
        }
        let Some(current) = inner.rollout.as_ref() else {
            return;
        };
        let (now_ms, since_ms) = (record::millis(now), record::millis(current.samples_since()));
        let key = (inner.meta.id, current.candidate());
        let window = current.plan().window;
        inner
            .accum
            .update(&self.stats, key, since_ms, now_ms, window);
        if let Some(others) = others.filter(|_| control.leads()) {
            inner.accum.add_others(key.1, &others, now_ms);
        }
        let Some(current) = inner.rollout.as_ref() else {
            return;
        };
        let (mut obs, violations) = self.observe(control, current, now, inner.violations_base);
        obs.candidate_step.clone_from(&inner.accum.candidate_step);
        obs.stable_step.clone_from(&inner.accum.stable_step);
        obs.stable_rollout.clone_from(&inner.accum.stable_rollout);
        obs.queries = inner
            .queries
            .as_ref()
            .map(QueryRunner::readings)
            .unwrap_or_default();
        let mut next = current.clone();
        let decision = next.step(now, &obs);
        self.set_gate_gauges(next.gates());
        // A new wait for a gating hook is recorded too: its call starts after the commit.
        let moved = next.phase() != current.phase()
            || next.candidate_weight_bp() != current.candidate_weight_bp()
            || next.pending() != current.pending();
        if !moved && matches!(decision, Decision::None | Decision::Done) {
            inner.rollout = Some(next);
            return;
        }
        let command = format!("rollout {}", record::describe(&next));
        let actor = Actor::internal("controller");
        let meta = inner.meta.clone();
        let t = Transition::new(&actor, &command, &decision, violations);
        if let Err(e) = self.commit(control, &mut inner, next, meta, t) {
            error!(error = %e, "rollout transition refused; retrying on the next tick");
        }
    }

    fn observe(
        &self,
        control: &Control,
        r: &Rollout,
        now: Duration,
        violations_base: u64,
    ) -> (Observation, u64) {
        let (candidate, stable) = (r.candidate(), r.candidate().other());
        let (now_ms, window) = (record::millis(now), r.plan().window);
        let since_ms = record::millis(r.samples_since());
        let table = control.routes.load();
        let violations = self.stats.violations_total(candidate);
        let obs = Observation {
            candidate: self
                .stats
                .window_since_at(now_ms, candidate, window, since_ms),
            // Stable's behaviour does not depend on the candidate's weight: its whole window
            // counts, so "both degraded" is known even right after a weight change.
            stable: self.stats.window_at(now_ms, stable, window),
            candidate_consecutive_errors: self.stats.consecutive_errors(candidate),
            candidate_violations: violations.saturating_sub(violations_base),
            candidate_healthy: table.pool(candidate).in_rotation() > 0,
            stable_healthy: table.pool(stable).in_rotation() > 0,
            ..Observation::default()
        };
        (obs, violations)
    }

    /// Publishes `next` with the route change its decision implies, in one update; on
    /// success it replaces the current rollout and the event, metrics and tripwire follow.
    fn commit(
        &self,
        control: &Control,
        inner: &mut Inner,
        next: Rollout,
        mut meta: Meta,
        t: Transition<'_>,
    ) -> Result<Applied, AdminError> {
        if !next.is_live() && meta.ended_unix_ms.is_none() {
            meta.ended_unix_ms = Some(record::unix_ms());
        }
        let saved = record::record(&next, &meta);
        let candidate = next.candidate();
        let decision = t.decision;
        let (rollback_to, new_salt) = (t.rollback_to, t.new_salt);
        let applied = control.update(t.actor, t.command, t.expect_gen, |d| {
            match decision {
                Decision::SetWeight { candidate_bp } => {
                    d.green_bp = green_bp(candidate, *candidate_bp);
                }
                Decision::Rollback { .. } => {
                    send_all_to(d, rollback_to.unwrap_or(candidate.other()));
                }
                Decision::Promote => {
                    send_all_to(d, candidate);
                    d.stable = candidate;
                }
                Decision::Pause { .. } | Decision::None | Decision::Done => {}
            }
            if let Some(salt) = new_salt {
                d.salt = salt;
            }
            d.rollout = saved;
            Ok(())
        })?;
        let previous = inner.rollout.replace(next);
        inner.meta = meta;
        inner.violations_base = t.violations;
        let actor = serde_json::to_value(t.actor).unwrap_or(Value::Null);
        self.after(
            control,
            inner,
            previous.as_ref(),
            &actor,
            Some(applied.generation),
        );
        Ok(applied)
    }

    /// Everything that follows a transition: the manual-weight lock, the tripwire, metrics,
    /// the log line and (with a generation) the `watch` event.
    fn after(
        &self,
        control: &Control,
        inner: &mut Inner,
        previous: Option<&Rollout>,
        actor: &Value,
        generation: Option<u64>,
    ) {
        let Some(r) = inner.rollout.as_ref() else {
            return;
        };
        let phase = r.phase();
        control.set_rollout_active(matches!(phase, Phase::Progressing { .. } | Phase::Baking));
        if r.is_live() {
            let limits = &r.plan().gates;
            self.stats
                .watch(Some(r.candidate()), limits.consecutive_errors);
        } else {
            self.stats.watch(None, u32::MAX);
        }
        self.set_phase_gauge(phase.name());
        if control.leads() {
            self.follow_up(control, inner, generation);
        } else {
            inner.queries = None;
        }
        let Some(r) = inner.rollout.as_ref() else {
            return;
        };
        let phase = r.phase();
        if previous.is_some_and(Rollout::is_live) {
            match phase {
                Phase::RolledBack { gate, .. } => self.count_rollback(*gate),
                Phase::Aborted {
                    reason: Some(_), ..
                } => self.count_rollback(Gate::HookFailed),
                Phase::Aborted { .. } => self.count_rollback(Gate::Operator),
                _ => {}
            }
        }
        if let Some(generation) = generation {
            info!(
                rollout.id = inner.meta.id,
                candidate = %r.candidate(),
                phase = phase.name(),
                candidate_percent = super::percent(r.candidate_weight_bp()),
                generation,
                "rollout {}",
                record::describe(r)
            );
            control.publish_event(record::event(r, &inner.meta, actor, generation));
            if let Some(event) = notifying_event(previous, phase) {
                let body = record::hook_body(r, previous, &inner.meta, generation, control);
                self.notifier.notify(&inner.hooks, event, &body);
            }
        }
    }

    fn set_phase_gauge(&self, current: &str) {
        for (name, gauge) in PHASES.iter().zip(&self.phase_gauges) {
            gauge.set(if *name == current { 1.0 } else { 0.0 });
        }
    }

    fn set_gate_gauges(&self, reports: &[GateReport]) {
        let mut gauges = self.gate_gauges.lock().unwrap_or_else(|e| e.into_inner());
        for r in reports {
            let Some(value) = r.value else { continue };
            gauges
                .entry((r.gate, r.pool))
                .or_insert_with(|| {
                    self.metrics.gauge(
                        names::GATE_VALUE,
                        vec![
                            Label::new("gate", r.gate.as_str()),
                            Label::new("pool", r.pool.as_str()),
                        ],
                    )
                })
                .set(value);
        }
    }

    fn count_rollback(&self, gate: Gate) {
        let mut counters = self.rollbacks.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .entry(gate)
            .or_insert_with(|| {
                self.metrics.counter(
                    names::ROLLBACKS_TOTAL,
                    vec![Label::new("reason", gate.as_str())],
                )
            })
            .increment(1);
    }
}

/// The notifying hook event of a transition from `previous` (live) into `phase`.
fn notifying_event(previous: Option<&Rollout>, phase: &Phase) -> Option<HookEvent> {
    let previous = previous.filter(|p| p.is_live())?;
    match phase {
        Phase::Promoted => Some(HookEvent::Promoted),
        Phase::RolledBack { .. } => Some(HookEvent::RolledBack),
        Phase::Aborted { .. } => Some(HookEvent::Aborted),
        Phase::Paused { .. } if !matches!(previous.phase(), Phase::Paused { .. }) => {
            Some(HookEvent::Paused)
        }
        _ => None,
    }
}

/// One transition's inputs besides the rollout: who, the audit line, what to do.
struct Transition<'a> {
    actor: &'a Actor,
    command: &'a str,
    decision: &'a Decision,
    expect_gen: Option<u64>,
    /// An operator's `rollback to POOL`; otherwise a rollback goes to the stable pool.
    rollback_to: Option<PoolId>,
    /// A new affinity salt (each rollout moves a different set of users first).
    new_salt: Option<u64>,
    /// The candidate's `violations_total` as observed: the next phase counts from here.
    violations: u64,
}

impl<'a> Transition<'a> {
    fn new(
        actor: &'a Actor,
        command: &'a str,
        decision: &'a Decision,
        violations: u64,
    ) -> Transition<'a> {
        Transition {
            actor,
            command,
            decision,
            expect_gen: None,
            rollback_to: None,
            new_salt: None,
            violations,
        }
    }
}

/// Drives the attached controller until `shutdown`: every `rollout.tick` (re-read from the
/// config in force) and at once on a tripwire.
pub async fn run(control: Arc<Control>, shutdown: CancellationToken) {
    let Some(controller) = control.controller().cloned() else {
        return;
    };
    let mut next = tokio::time::Instant::now();
    loop {
        next += control.config().rollout.tick;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        let tripwire = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = controller.stats.tripwire().notified() => true,
            _ = controller.hook_wake.notified() => false,
            _ = shutdown.cancelled() => return,
        };
        // In a fleet only the leader steps the rollout; any instance acts on a tripwire.
        let leads = control.leads();
        if !leads && !tripwire {
            // The others' samples count for the instance that leads when they arrive: a
            // follower that takes over later must not judge them again.
            if let Some(m) = control.fleet_stats() {
                m.take();
            }
            continue;
        }
        let (c, k) = (controller.clone(), control.clone());
        let tick = move || {
            if leads {
                Control::as_leader(|| c.tick(&k))
            } else {
                c.tick(&k)
            }
        };
        if let Err(e) = tokio::task::spawn_blocking(tick).await {
            error!(error = %e, "rollout tick failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_share_maps_to_green_weight() {
        assert_eq!(green_bp(PoolId::Green, 1000), 1000);
        assert_eq!(green_bp(PoolId::Blue, 1000), 9000);
        assert_eq!(green_bp(PoolId::Blue, FULL_BP), 0);
        assert_eq!(green_bp(PoolId::Green, 0), 0);
    }

    /// The steps of "to add a gate" (the top of `rollout/gates.rs`) the compiler cannot check:
    /// `Gate::ALL` lists every gate at its index, and every gate is in `ctl gates`, in the
    /// metrics and in docs/operations.md.
    #[test]
    fn every_gate_is_named_everywhere() {
        for (i, g) in Gate::ALL.iter().enumerate() {
            assert_eq!(g.index(), i, "{g:?} is not at its index in Gate::ALL");
            assert!(!(g.is_tripwire() && g.is_judgment()), "{g:?}");
        }
        assert!(Gate::JUDGMENT.iter().all(|g| Gate::ALL.contains(g)));
        // `ctl gates` during a rollout: the sequential method's first evaluation.
        let (mut r, _) = Rollout::start(crate::sim::default_plan(), Duration::ZERO)
            .expect("the shipped plan is valid");
        let obs = Observation {
            candidate_healthy: true,
            stable_healthy: true,
            ..Observation::default()
        };
        r.step(Duration::from_secs(1), &obs);
        let shown = crate::control::follow::render_gates(&json!({
            "rollout": 1, "phase": "progressing", "candidate": "green", "stable": "blue",
            "window_ms": 30_000, "gates": record::reports(r.gates()),
        }));
        let metrics = Metrics::new();
        let stats = Arc::new(LiveStats::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
        ));
        let _controller = Controller::new(stats, metrics.clone());
        let exported = metrics.render();
        let docs = include_str!("../../docs/operations.md");
        for g in Gate::ALL {
            let name = g.as_str();
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} not in docs/operations.md"
            );
            assert!(
                exported.contains(&format!("reason=\"{name}\"")),
                "{name} not in {}",
                names::ROLLBACKS_TOTAL
            );
            if g.has_value() {
                assert!(shown.contains(name), "{name} not in `ctl gates`:\n{shown}");
                assert!(
                    exported.contains(&format!("gate=\"{name}\"")),
                    "{name} not in {}",
                    names::GATE_VALUE
                );
            }
        }
    }
}
