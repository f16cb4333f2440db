//! CONTROL PLANE: pool failover outside a rollout (`split.failover`, on by default).
//!
//! When a pool that has a share of new requests has no backend in rotation (active health
//! checks, passive ejection, or the operator's `backend ... disable`) and the other pool is
//! ready with a backend in rotation, its share goes to the other pool until one of its
//! backends comes back; then the configured weights return. The weights themselves never
//! change: the route table carries `failover` and its effective share follows.
//!
//! Each switch goes through [`Control::update`] like a `weight` change (one published
//! table, a `route` event, an audit line, `switchyard_failover_active{pool}`), so a request
//! pays nothing for it: it reads the share from the one table it loads anyway.
//! During a rollout the controller decides (no healthy candidate rolls back), so failover
//! stands aside and an active one ends.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Actor, Control};
use crate::config::PoolId;
use crate::proxy::route::{PoolState, RouteTable, FULL_BP};

/// How often the pools are looked at: well under the health checks' fall time.
const TICK: Duration = Duration::from_millis(100);

/// The failover a table should have: `Some(pool)` when `pool`'s share should go to the
/// other pool. Pure, so it is tested on built tables.
pub fn wanted(t: &RouteTable, enabled: bool) -> Option<PoolId> {
    if !enabled {
        return None;
    }
    let empty = |p: PoolId| {
        let pool = t.pool(p);
        !pool.backends.is_empty() && pool.in_rotation() == 0
    };
    let green = t.operated_green_bp();
    let share = |p: PoolId| match p {
        PoolId::Green => green,
        PoolId::Blue => FULL_BP - green,
    };
    PoolId::ALL.into_iter().find(|&p| {
        let other = p.other();
        share(p) > 0
            && empty(p)
            && t.states[other.index()] == PoolState::Ready
            && !t.pool(other).backends.is_empty()
            && !empty(other)
    })
}

/// Watches the pools until shutdown and switches failover on and off.
pub async fn run(control: Arc<Control>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if control.superseded_by().is_some() {
            continue; // handed over: the successor decides, and changes would be refused
        }
        let t = control.routes.load();
        let enabled = control.config().split.failover && !control.rollout_active();
        let want = wanted(&t, enabled);
        if want == t.failover {
            continue;
        }
        let c = control.clone();
        // The update saves the state (an fsync): not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || switch(&c, enabled)).await;
    }
}

/// Re-decides under the route writer (the table may have changed since it was looked at)
/// and publishes the switch.
fn switch(control: &Control, enabled: bool) {
    let mut switched = None;
    let command = "failover";
    let applied = control.update(&Actor::internal("failover"), command, None, |d| {
        let probe = RouteTable {
            generation: 0,
            green_bp: d.green_bp,
            salt: d.salt,
            pools: d.pools.clone(),
            states: d.states,
            settings: d.settings.clone(),
            failover: None,
        };
        let want = wanted(&probe, enabled);
        if want != d.failover {
            switched = Some((d.failover, want));
            d.failover = want;
        }
        Ok(())
    });
    let (Ok(applied), Some((was, now))) = (applied, switched) else {
        return;
    };
    match now {
        Some(p) => warn!(pool = %p, to = %p.other(), generation = applied.generation,
            "failover: {p} has no backend in rotation; new requests go to {} until one is back", p.other()),
        None => info!(pool = ?was.map(PoolId::as_str), generation = applied.generation,
            "failover ended: the configured weights apply again"),
    }
    let pool = now.or(was);
    control.publish_event(json!({
        "event": "failover",
        "generation": applied.generation,
        "active": now.is_some(),
        "pool": pool,
        "to": now.map(PoolId::other),
        "effective_green_percent": super::percent(applied.table.effective_green_bp()),
    }));
}
