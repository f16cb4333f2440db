//! CONTROL PLANE: what operators drive — the admin socket and the operations behind it.
//! Nothing here runs per request; changes reach the data plane only as a new route table.
//!
//! [`Control`] owns the one write path: [`Control::update`] takes the route writer, checks
//! `expect-gen`, lets the caller edit a [`Draft`] (weights, pool states, disabled backends,
//! stable pool, the rollout's record, pools and settings), publishes the result in one swap
//! with the generation bumped, saves it ([`state`]), audits it ([`audit`]) and announces it
//! to `watch` clients. Refusals are audited too. The rollout controller uses the same call.
//!
//! Modules: [`command`] parses a line, [`access`] decides who may run it, [`execute`] runs
//! it, [`admin`] is the socket, [`reload`] re-reads the config, [`crate::ctl`] is `switchyard ctl`
//! ([`follow`] its `--wait`), [`rollout`] is the pure rollout machine and [`controller`]
//! drives it. [`failover`] moves a dead pool's share to the other pool outside a rollout
//! (through the same [`Control::update`]); [`occupant`] names who holds an address the
//! daemon could not bind.

pub mod access;
pub mod admin;
pub mod audit;
pub mod command;
pub mod controller;
mod draft;
pub mod drain;
pub mod execute;
pub mod failover;
pub mod fleet;
pub mod follow;
pub mod handover;
pub mod hooks;
pub mod occupant;
pub mod query;
pub mod reload;
pub mod rollout;
pub mod state;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

use crate::config::{Config, PoolId};
use crate::metrics::{names, Metrics};
use crate::proxy::route::{PoolState, RouteHandle, RouteTable, FULL_BP};
use crate::proxy::tls::TlsTerminator;
pub use draft::Draft;

use draft::diff;

use access::Peer;
use audit::AuditLog;
use command::{state_from_str, state_str, AdminError};
use controller::Controller;
use state::{
    BackendRef, PersistedState, PoolStates, Restore, StateError, StateStore, STATE_VERSION,
};

/// How many events a slow `watch` client may fall behind before it is told it lagged.
const EVENT_BUFFER: usize = 1024;

/// Who asked for a change, for the audit log and events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `admin` (a socket peer), `signal` (SIGHUP), `controller`, `startup`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl Actor {
    pub fn admin(peer: Peer) -> Actor {
        Actor {
            kind: "admin",
            uid: Some(peer.uid),
            gid: Some(peer.gid),
            pid: peer.pid,
        }
    }
    /// The daemon itself (`signal`, `controller`, ...).
    pub fn internal(kind: &'static str) -> Actor {
        Actor {
            kind,
            uid: None,
            gid: None,
            pid: None,
        }
    }
}

/// The outcome of an update that was not refused.
#[derive(Debug, Clone)]
pub struct Applied {
    pub generation: u64,
    /// `{"field","old","new"}` per changed value; empty when nothing changed (no new table).
    pub changes: Vec<Value>,
    /// Set when the change is live but could not be saved.
    pub warning: Option<String>,
    /// Whether the state file holds this change (false: applied but unsaved, see `warning`).
    pub persisted: bool,
    /// The stable pool after the update.
    pub stable: PoolId,
    /// The table in force after the update.
    pub table: Arc<RouteTable>,
}

/// Values that persist with the route table but are not part of it.
struct Extra {
    stable: PoolId,
    rollout: Value,
    disabled: BTreeSet<BackendRef>,
}

/// The operations behind admin commands, over the shared route handle.
pub struct Control {
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    config: ArcSwap<Config>,
    config_path: Option<PathBuf>,
    store: Arc<dyn StateStore>,
    audit: Option<AuditLog>,
    events: broadcast::Sender<Value>,
    extra: Mutex<Extra>,
    restored_rollout: Value,
    rollout_active: AtomicBool,
    /// The pid of the process this daemon handed its sockets to (0: none); see [`handover`].
    superseded_by: std::sync::atomic::AtomicU32,
    /// The TLS listeners' certificates, for `status` and `reload`.
    tls: OnceLock<Vec<Arc<TlsTerminator>>>,
    controller: OnceLock<Arc<Controller>>,
    /// The last failed state save (`null` if none since start), for `status`.
    last_save_failure: Mutex<Value>,
    /// `[fleet]`: the fleet's view (instances, leader) for `status` and `fleet`.
    fleet_view: OnceLock<FleetView>,
    /// `[fleet]`: whether this instance holds the leader key.
    leader: OnceLock<Arc<AtomicBool>>,
    /// `[fleet]`: the other instances' pool totals, merged into the leader's gates.
    fleet_stats: OnceLock<Arc<fleet::stats::Merged>>,
}

thread_local! {
    /// Set by [`Control::local_first`] for the updates its closure makes on this thread.
    static LOCAL_FIRST: Cell<bool> = const { Cell::new(false) };
    /// Set by [`Control::as_leader`]: a fleet store fences these updates on the leader key.
    static AS_LEADER: Cell<bool> = const { Cell::new(false) };
}

/// Sets `flag` for the duration of `f` on this thread.
fn with_flag<T>(flag: &'static std::thread::LocalKey<Cell<bool>>, f: impl FnOnce() -> T) -> T {
    struct Reset(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _reset = Reset(flag, flag.with(|c| c.replace(true)));
    f()
}

/// What `status` shows of the fleet, kept current by [`fleet`].
pub type FleetView = Arc<dyn Fn() -> Value + Send + Sync>;

impl Control {
    /// Takes over `routes` (built from `config`), restores the saved state unless the
    /// config's pools changed since, and logs which source won and why.
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        routes: Arc<RouteHandle>,
        metrics: Arc<Metrics>,
        store: Arc<dyn StateStore>,
    ) -> Control {
        let audit = config.admin.audit_log.as_deref().map(AuditLog::open);
        let fingerprint = state::config_fingerprint(&config);
        let mut restore = state::choose(&fingerprint, store.load());
        let current = routes.load();
        let mut extra = Extra {
            stable: PoolId::Blue,
            rollout: Value::Null,
            disabled: BTreeSet::new(),
        };
        if let Restore::State(s) = &restore {
            match draft_from_state(s, &current) {
                Ok((d, e)) => {
                    routes.writer().publish_exact(RouteTable {
                        generation: s.generation,
                        green_bp: d.green_bp,
                        states: d.states,
                        ..current.derive()
                    });
                    extra = e;
                }
                Err(why) => {
                    restore = Restore::Config {
                        reason: format!("saved state unusable ({why})"),
                        previous_generation: Some(s.generation),
                    }
                }
            }
        }
        let restored_rollout = extra.rollout.clone();
        let control = Control {
            routes,
            metrics,
            config: ArcSwap::from_pointee(config),
            config_path,
            store,
            audit,
            events: broadcast::channel(EVENT_BUFFER).0,
            extra: Mutex::new(extra),
            restored_rollout,
            rollout_active: AtomicBool::new(false),
            superseded_by: std::sync::atomic::AtomicU32::new(0),
            tls: OnceLock::new(),
            controller: OnceLock::new(),
            last_save_failure: Mutex::new(Value::Null),
            fleet_view: OnceLock::new(),
            fleet_stats: OnceLock::new(),
            leader: OnceLock::new(),
        };
        // Exported from the start, so an alert on its increase sees the zero.
        control
            .metrics
            .counter(names::STATE_SAVE_FAILURES_TOTAL, Vec::new())
            .absolute(0);
        let source = control.store.describe();
        match restore {
            Restore::State(s) => info!(
                source = "state", state = %source, generation = s.generation, green_percent = percent(s.green_bp),
                "state wins: restored the saved route table (the config's pools are unchanged)"
            ),
            Restore::Config {
                reason,
                previous_generation,
            } => {
                let writer = control.routes.writer();
                if let Some(g) = previous_generation {
                    // Generations keep increasing across restarts, so a stale `expect-gen` cannot match.
                    writer.publish_exact(RouteTable {
                        generation: g + 1,
                        ..writer.current().derive()
                    });
                }
                let t = writer.current();
                info!(source = "config", state = %source, generation = t.generation, green_percent = percent(t.green_bp),
                    "config wins: {reason}");
                let extra = control.lock_extra();
                if let Err(e) = control.store.save(&control.persisted(&t, &extra)) {
                    error!(error = %e, "cannot save the state");
                    control.state_save_failed(&e.to_string(), t.generation);
                }
            }
        }
        let t = control.routes.load();
        control.publish_gauges(&t);
        control.pool_states_changed(&t, &t);
        control
    }

    /// The config in force (the last one loaded or reloaded).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The rollout record restored at start (`null` if none); the controller resumes from it.
    pub fn restored_rollout(&self) -> Value {
        self.restored_rollout.clone()
    }

    /// Attaches the rollout controller (once; later calls are ignored). It holds no
    /// reference back: its methods are handed this `Control`.
    pub fn attach_controller(&self, controller: Arc<Controller>) {
        let _ = self.controller.set(controller);
    }

    /// Runs `f` with its updates marked emergency: with a shared store that cannot be
    /// reached they apply here at once and reach the store when it returns (`rollback`).
    pub fn local_first<T>(f: impl FnOnce() -> T) -> T {
        with_flag(&LOCAL_FIRST, f)
    }

    /// Runs `f` with its updates made as the fleet's leader: the store's transaction also
    /// checks that this instance still holds the leader key (fencing).
    pub fn as_leader<T>(f: impl FnOnce() -> T) -> T {
        with_flag(&AS_LEADER, f)
    }

    /// Whether the update being made runs under [`Control::as_leader`].
    pub fn acting_as_leader() -> bool {
        AS_LEADER.with(Cell::get)
    }

    /// Whether this instance leads: always alone, the leader key's holder in a fleet.
    pub fn leads(&self) -> bool {
        self.leader.get().is_none_or(|f| f.load(Ordering::Acquire))
    }

    /// The fleet's leader flag: created (false) on the first call, which makes this
    /// instance a follower until the fleet's membership says it leads.
    pub fn leader_flag(&self) -> Arc<AtomicBool> {
        self.leader
            .get_or_init(|| Arc::new(AtomicBool::new(false)))
            .clone()
    }

    /// Attaches the fleet's view (once, with `[fleet]`): `status` then shows it.
    pub fn attach_fleet_view(&self, view: FleetView) {
        let _ = self.fleet_view.set(view);
    }

    /// Attaches the other instances' pool totals (once, with `[fleet]`).
    pub fn attach_fleet_stats(&self, merged: Arc<fleet::stats::Merged>) {
        let _ = self.fleet_stats.set(merged);
    }

    /// The other instances' pool totals; `None` without `[fleet]`.
    pub fn fleet_stats(&self) -> Option<&Arc<fleet::stats::Merged>> {
        self.fleet_stats.get()
    }

    /// The fleet's instances, leader and lag; `None` without `[fleet]`.
    pub fn fleet_view(&self) -> Option<Value> {
        self.fleet_view.get().map(|v| v())
    }

    /// The rollout controller, once attached (by `Switchyard::bind_with`).
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.get()
    }

    /// The rollout record as last saved.
    pub fn rollout(&self) -> Value {
        self.lock_extra().rollout.clone()
    }

    /// The pool `rollback` without `to` returns to (blue unless the controller set it).
    pub fn stable(&self) -> PoolId {
        self.lock_extra().stable
    }

    /// The rollout controller sets this while a rollout progresses: manual `weight` is then
    /// refused with `rollout_active`.
    pub fn set_rollout_active(&self, active: bool) {
        self.rollout_active.store(active, Ordering::Release);
    }

    pub fn rollout_active(&self) -> bool {
        self.rollout_active.load(Ordering::Acquire)
    }

    /// Sends one event line to every `watch` client; never blocks (slow clients lag).
    pub fn publish_event(&self, event: Value) {
        let _ = self.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// Persists the rollout controller's record (one update: new generation, saved, audited).
    pub fn persist_rollout(
        &self,
        actor: &Actor,
        what: &str,
        rollout: Value,
    ) -> Result<Applied, AdminError> {
        self.update(actor, what, None, |d| {
            d.rollout = rollout;
            Ok(())
        })
    }

    fn lock_extra(&self) -> std::sync::MutexGuard<'_, Extra> {
        // A poisoned lock only means an updater panicked; the values are whole (set last).
        self.extra.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The one write path (see the module doc). `command` is what the audit log and the
    /// event show; a refusal by `change` or by `expect_gen` changes nothing and is audited.
    ///
    /// `change` runs under the route writer and this control's own lock: it must not call
    /// back into `Control` (everything it may read is in the [`Draft`]). The call saves the
    /// state (an fsync, a few ms): from async code, run it on the blocking pool.
    pub fn update(
        &self,
        actor: &Actor,
        command: &str,
        expect_gen: Option<u64>,
        change: impl FnOnce(&mut Draft) -> Result<(), AdminError>,
    ) -> Result<Applied, AdminError> {
        let writer = self.routes.writer();
        let mut extra = self.lock_extra();
        let current = writer.current();
        let before = Draft {
            green_bp: current.green_bp,
            states: current.states,
            salt: current.salt,
            stable: extra.stable,
            rollout: extra.rollout.clone(),
            disabled: extra.disabled.clone(),
            pools: current.pools.clone(),
            settings: current.settings.clone(),
            failover: current.failover,
        };
        let mut draft = before.clone();
        let outcome = self
            .check_superseded()
            .and_then(|()| check_gen(&current, expect_gen))
            .and_then(|()| change(&mut draft));
        if let Err(e) = outcome {
            let key = e.key.as_deref().unwrap_or("-");
            warn!(actor = %json!(actor), command, code = e.code, key, "refused: {}", e.message);
            self.audit(actor, command, current.generation, Err(&e));
            return Err(e);
        }
        draft.green_bp = draft.green_bp.min(FULL_BP);
        let changes = diff(&before, &draft);
        if changes.is_empty() {
            self.audit(actor, command, current.generation, Ok(&[]));
            return Ok(Applied {
                generation: current.generation,
                changes,
                warning: None,
                persisted: true,
                stable: extra.stable,
                table: current,
            });
        }
        let next = RouteTable {
            generation: current.generation + 1,
            green_bp: draft.green_bp,
            states: draft.states,
            salt: draft.salt,
            pools: draft.pools.clone(),
            settings: draft.settings.clone(),
            failover: draft.failover,
        };
        let next_extra = Extra {
            stable: draft.stable,
            rollout: draft.rollout,
            disabled: draft.disabled,
        };
        // Saved before it is published. A shared store (the fleet's etcd) takes the change
        // first: a lost race or an unreachable store leaves this instance's table as it was
        // (except for a change made under [`Control::local_first`]). A state file that
        // cannot hold the change refuses it, unless it must apply anyway (`must_persist`).
        let mut warning = None;
        let saved = self.persisted(&next, &next_extra);
        if self.store.shared() {
            let outcome = if LOCAL_FIRST.with(Cell::get) {
                self.store.save_local_first(&saved)
            } else {
                self.store.save(&saved).map(|()| None)
            };
            match outcome {
                Ok(w) => warning = w,
                Err(e) => {
                    let e = match e {
                        StateError::Conflict(m) => AdminError::new("conflict", m),
                        other => AdminError::new(
                            "store_unavailable",
                            format!(
                                "{other}; nothing changed (only `rollback` works while the \
                                 fleet store is unreachable)"
                            ),
                        ),
                    };
                    warn!(actor = %json!(actor), command, code = e.code, "refused: {}", e.message);
                    self.audit(actor, command, current.generation, Err(&e));
                    return Err(e);
                }
            }
        } else if let Err(e) = self.store.save(&saved) {
            self.state_save_failed(&e.to_string(), next.generation);
            if must_persist(actor, command) {
                let e = AdminError::new(
                    "state_unwritable",
                    format!(
                        "the state cannot be saved ({e}); nothing changed. Fix the state path \
                         ([state] path) or its filesystem and retry; `rollback` still applies"
                    ),
                );
                warn!(actor = %json!(actor), command, code = e.code, "refused: {}", e.message);
                self.audit(actor, command, current.generation, Err(&e));
                return Err(e);
            }
            error!(error = %e, generation = next.generation, "change applied but the state was not saved");
            warning = Some(format!("applied, but the state was not saved: {e}"));
        }
        // Backend flags live on the shared `Backend`s; they flip in this critical section,
        // right before the table of the same change is published.
        for pool in &next.pools {
            for b in pool.backends.iter() {
                b.set_enabled(
                    !next_extra
                        .disabled
                        .contains(&BackendRef::new(pool.id, &b.addr)),
                );
            }
        }
        let next = writer.publish_exact(next);
        self.pool_states_changed(&current, &next);
        *extra = next_extra;
        let summary = Value::Array(changes.clone());
        info!(actor = %json!(actor), command, generation = next.generation, changes = %summary, "route table changed");
        self.publish_gauges(&next);
        self.audit(actor, command, next.generation, Ok(&changes));
        self.publish_event(json!({
            "event": "route",
            "time": audit::rfc3339(SystemTime::now()),
            "generation": next.generation,
            "command": command,
            "actor": actor,
            "changes": changes,
            "green_percent": percent(next.green_bp),
            "effective_green_percent": percent(next.effective_green_bp()),
        }));
        Ok(Applied {
            generation: next.generation,
            changes,
            persisted: warning.is_none(),
            warning,
            stable: extra.stable,
            table: next,
        })
    }

    /// Counts a failed save and keeps it for `status`.
    fn state_save_failed(&self, error: &str, generation: u64) {
        self.metrics
            .counter(names::STATE_SAVE_FAILURES_TOTAL, Vec::new())
            .increment(1);
        let mut last = self
            .last_save_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *last = json!({
            "time": audit::rfc3339(SystemTime::now()),
            "error": error,
            "generation": generation,
        });
    }

    /// What a pool state change does beyond routing: a pool that is not ready keeps no idle
    /// upstream connections (they close now, busy ones when their response ends), and a pool
    /// that leaves `ready` asks every open downstream connection to close gradually over
    /// `proxy.drain_window`, so long-lived clients reconnect and rebalance.
    fn pool_states_changed(&self, before: &RouteTable, after: &RouteTable) {
        for id in PoolId::ALL {
            let (was, now) = (before.states[id.index()], after.states[id.index()]);
            for b in after.pool(id).backends.iter() {
                b.conns.set_keep_idle(now == PoolState::Ready);
            }
            if was == PoolState::Ready && now != PoolState::Ready {
                let window = self.config().proxy.drain_window;
                self.routes.signal_drain(window);
                info!(pool = %id, state = state_str(now), window_ms = window.as_millis() as u64,
                    "pool out of rotation: idle upstream connections closed; downstream connections close over the drain window");
            }
        }
    }

    /// Audits a command refused before it reached [`Control::update`] (parse, permission).
    pub fn audit_refusal(&self, actor: &Actor, command: &str, e: &AdminError) {
        self.audit(actor, command, self.routes.load().generation, Err(e));
    }

    fn audit(
        &self,
        actor: &Actor,
        command: &str,
        generation: u64,
        outcome: Result<&[Value], &AdminError>,
    ) {
        if let Some(log) = &self.audit {
            log.record(actor, command, generation, outcome);
        }
    }

    fn persisted(&self, t: &RouteTable, extra: &Extra) -> PersistedState {
        persisted_parts(
            t.generation,
            t.green_bp,
            t.states,
            &t.pools,
            extra.stable,
            &extra.rollout,
            &extra.disabled,
        )
    }

    /// A fleet member adopts the table another instance wrote (`s`, from the shared
    /// store): one swap to exactly that generation, as a local change would publish.
    /// `accept` runs under the route writer and decides whether `s` is still news (the
    /// store compares revisions there); returns whether the table was applied.
    pub fn apply_shared(
        &self,
        s: &PersistedState,
        accept: impl FnOnce() -> bool,
    ) -> Result<bool, String> {
        let writer = self.routes.writer();
        let mut extra = self.lock_extra();
        let current = writer.current();
        if !accept() {
            return Ok(false);
        }
        let own = state::config_fingerprint(&self.config());
        if s.pools_fingerprint != own {
            warn!(shared = %s.pools_fingerprint, own = %own,
                "the fleet's table was written for other pools than this instance's config; applying its weights and states anyway");
        }
        let (d, e) = draft_from_state(s, &current)?;
        let rollout_changed = e.rollout != extra.rollout;
        let next = writer.publish_exact(RouteTable {
            generation: s.generation,
            green_bp: d.green_bp,
            states: d.states,
            ..current.derive()
        });
        *extra = e;
        drop(extra);
        drop(writer);
        // The controller's lock comes before Control's: adopt once both are released.
        if rollout_changed {
            if let Some(c) = self.controller() {
                c.adopt(self, &s.rollout);
            }
        }
        self.pool_states_changed(&current, &next);
        self.publish_gauges(&next);
        info!(
            generation = next.generation,
            green_percent = percent(next.green_bp),
            "route table changed by the fleet"
        );
        self.publish_event(json!({
            "event": "route",
            "time": audit::rfc3339(SystemTime::now()),
            "generation": next.generation,
            "command": "fleet",
            "actor": Actor::internal("fleet"),
            "changes": [],
            "green_percent": percent(next.green_bp),
            "effective_green_percent": percent(next.effective_green_bp()),
        }));
        Ok(true)
    }

    fn publish_gauges(&self, t: &RouteTable) {
        self.metrics
            .green_weight
            .set(f64::from(t.green_bp) / f64::from(FULL_BP));
        self.metrics.generation.set(t.generation as f64);
        for id in PoolId::ALL {
            let on = t.failover == Some(id);
            self.metrics
                .gauge(
                    names::FAILOVER_ACTIVE,
                    vec![metrics::Label::new("pool", id.as_str())],
                )
                .set(if on { 1.0 } else { 0.0 });
        }
    }

    pub fn status(&self) -> Value {
        let t = self.routes.load();
        let (stable, rollout) = {
            let e = self.lock_extra();
            (e.stable, e.rollout.clone())
        };
        let pools: serde_json::Map<String, Value> = PoolId::ALL
            .iter()
            .map(|&id| {
                let p = t.pool(id);
                let backends: Vec<Value> = p
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.addr,
                            "enabled": b.is_enabled(),
                            "healthy": b.is_healthy(),
                            "ejected": b.is_ejected(),
                            "in_rotation": b.in_rotation(),
                            "inflight": b.inflight(),
                            "last_connect_error": b.conns.last_error(),
                        })
                    })
                    .collect();
                (
                    id.as_str().to_string(),
                    json!({ "state": t.states[id.index()], "backends": backends }),
                )
            })
            .collect();
        let mut v = json!({
            "pid": std::process::id(),
            "generation": t.generation,
            "green_percent": percent(t.green_bp),
            "blue_percent": percent(FULL_BP - t.green_bp),
            "effective_green_percent": percent(t.effective_green_bp()),
            "stable": stable,
            "candidate": stable.other(),
            "failover": t.failover.map(|p| json!({ "from": p, "to": p.other() })),
            "pools": pools,
            "last_state_save_failure": self.last_save_failure.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "rollout": rollout,
            "tls": self.tls_status(),
            "superseded_by": self.superseded_by(),
        });
        if let Some(f) = self.fleet_view() {
            v["fleet"] = f;
        }
        if let Some(c) = self.controller() {
            v["hooks"] = c.hooks_view();
        }
        v
    }

    /// Gives the control plane the TLS listeners (once, at start): `status` shows their
    /// certificates and `reload` re-reads them.
    pub fn attach_tls(&self, terminators: Vec<Arc<TlsTerminator>>) {
        let _ = self.tls.set(terminators);
    }

    pub fn tls_terminators(&self) -> &[Arc<TlsTerminator>] {
        self.tls.get().map_or(&[], Vec::as_slice)
    }

    /// Each TLS listener with its certificates' names and expiry.
    pub fn tls_status(&self) -> Value {
        Value::Array(self.tls_terminators().iter().map(|t| t.status()).collect())
    }

    /// After `handover`: this daemon's route table is frozen (changes are refused with
    /// `superseded` and nothing is saved) while its successor `pid` serves. `None` lifts it
    /// (the successor went away before confirming).
    pub fn set_superseded(&self, pid: Option<u32>) {
        self.superseded_by
            .store(pid.unwrap_or(0), Ordering::Release);
        match pid {
            Some(p) => warn!(
                successor.pid = p,
                "handing over to a new process: route changes are refused from now on"
            ),
            None => info!("hand-over abandoned: this daemon takes route changes again"),
        }
    }

    /// The successor's pid once this daemon handed over.
    pub fn superseded_by(&self) -> Option<u32> {
        Some(self.superseded_by.load(Ordering::Acquire)).filter(|&p| p != 0)
    }

    fn check_superseded(&self) -> Result<(), AdminError> {
        match self.superseded_by() {
            Some(pid) => Err(AdminError::new(
                "superseded",
                format!("this daemon handed its sockets to pid {pid} and is shutting down; send commands to the new daemon"),
            )),
            None => Ok(()),
        }
    }
}

/// Whether a change must be saved to apply: an operator's command other than `rollback`.
/// The emergency path and the daemon's own changes (the rollout controller's steps and
/// rollbacks, failover, SIGHUP) apply unsaved rather than not at all.
fn must_persist(actor: &Actor, command: &str) -> bool {
    actor.kind == "admin" && command.split_whitespace().next() != Some("rollback")
}

/// The saved form of a table's values (see [`Control::update`] and [`state`]).
fn persisted_parts(
    generation: u64,
    green_bp: u16,
    states: [PoolState; 2],
    pools: &[Arc<crate::proxy::backend::Pool>; 2],
    stable: PoolId,
    rollout: &Value,
    disabled: &BTreeSet<BackendRef>,
) -> PersistedState {
    let addrs = |id: PoolId| {
        pools[id.index()]
            .backends
            .iter()
            .map(|b| b.addr.as_str())
            .collect::<Vec<_>>()
    };
    PersistedState {
        version: STATE_VERSION,
        generation,
        green_bp,
        states: PoolStates {
            blue: state_str(states[0]).into(),
            green: state_str(states[1]).into(),
        },
        disabled_backends: disabled.iter().cloned().collect(),
        stable: stable.as_str().into(),
        rollout: rollout.clone(),
        pools_fingerprint: state::pools_fingerprint([&addrs(PoolId::Blue), &addrs(PoolId::Green)]),
    }
}

/// Basis points as a percent with up to two decimals.
pub fn percent(bp: u16) -> f64 {
    f64::from(bp) / 100.0
}

fn check_gen(t: &RouteTable, expect: Option<u64>) -> Result<(), AdminError> {
    match expect {
        Some(g) if g != t.generation => Err(AdminError::new(
            "conflict",
            format!(
                "generation is {}, not {g}; nothing changed; re-read status and retry",
                t.generation
            ),
        )),
        _ => Ok(()),
    }
}

/// The saved values over the freshly built table; an error names what is unreadable.
fn draft_from_state(s: &PersistedState, t: &RouteTable) -> Result<(Draft, Extra), String> {
    let state = |w: &str| state_from_str(w).ok_or_else(|| format!("pool state `{w}`"));
    let stable = PoolId::parse(&s.stable).ok_or_else(|| format!("stable pool `{}`", s.stable))?;
    if s.green_bp > FULL_BP {
        return Err(format!("green_bp {} is over {FULL_BP}", s.green_bp));
    }
    let disabled: BTreeSet<BackendRef> = s.disabled_backends.iter().cloned().collect();
    for pool in &t.pools {
        for b in pool.backends.iter() {
            b.set_enabled(!disabled.contains(&BackendRef::new(pool.id, &b.addr)));
        }
    }
    let d = Draft {
        green_bp: s.green_bp,
        states: [state(&s.states.blue)?, state(&s.states.green)?],
        salt: t.salt,
        stable,
        rollout: s.rollout.clone(),
        disabled: disabled.clone(),
        pools: t.pools.clone(),
        settings: t.settings.clone(),
        failover: None,
    };
    Ok((
        d,
        Extra {
            stable,
            rollout: s.rollout.clone(),
            disabled,
        },
    ))
}
