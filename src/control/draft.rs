//! CONTROL PLANE: the [`Draft`] an update edits, and the `old → new` list of what an
//! update changed (for the reply, the audit log and the `watch` event).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::percent;
use super::state::BackendRef;
use crate::config::PoolId;
use crate::proxy::backend::Pool;
use crate::proxy::route::PoolState;
use crate::proxy::settings::Settings;

/// Everything one [`Control::update`](super::Control::update) may change, as a mutable copy of the current values.
#[derive(Debug, Clone)]
pub struct Draft {
    pub green_bp: u16,
    pub states: [PoolState; 2],
    pub salt: u64,
    pub stable: PoolId,
    /// The rollout controller's record, persisted as is.
    pub rollout: Value,
    pub disabled: BTreeSet<BackendRef>,
    pub pools: [Arc<Pool>; 2],
    pub settings: Arc<Settings>,
    /// The pool whose share goes to the other while it has no backend in rotation.
    pub failover: Option<PoolId>,
}

/// `{"field","old","new"}` for every value that differs between two drafts.
pub(super) fn diff(a: &Draft, b: &Draft) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |field: String, old: Value, new: Value| {
        out.push(json!({ "field": field, "old": old, "new": new }))
    };
    if a.green_bp != b.green_bp {
        push(
            "green_percent".into(),
            json!(percent(a.green_bp)),
            json!(percent(b.green_bp)),
        );
    }
    if a.failover != b.failover {
        push("failover".into(), json!(a.failover), json!(b.failover));
    }
    for id in PoolId::ALL {
        let i = id.index();
        if a.states[i] != b.states[i] {
            push(
                format!("pools.{id}.state"),
                json!(a.states[i]),
                json!(b.states[i]),
            );
        }
        if !Arc::ptr_eq(&a.pools[i], &b.pools[i]) {
            let addrs = |p: &Pool| {
                p.backends
                    .iter()
                    .map(|b| b.addr.clone())
                    .collect::<Vec<_>>()
            };
            push(
                format!("pools.{id}.backends"),
                json!(addrs(&a.pools[i])),
                json!(addrs(&b.pools[i])),
            );
        }
    }
    let enabled = |d: &Draft, r: &BackendRef| {
        if d.disabled.contains(r) {
            "disabled"
        } else {
            "enabled"
        }
    };
    for r in a.disabled.symmetric_difference(&b.disabled) {
        push(
            format!("backends.{}.{}", r.pool, r.addr),
            json!(enabled(a, r)),
            json!(enabled(b, r)),
        );
    }
    if a.salt != b.salt {
        push("salt".into(), json!(a.salt), json!(b.salt));
    }
    if a.stable != b.stable {
        push("stable".into(), json!(a.stable), json!(b.stable));
    }
    if a.rollout != b.rollout {
        push(
            "rollout".into(),
            rollout_summary(&a.rollout),
            rollout_summary(&b.rollout),
        );
    }
    if !Arc::ptr_eq(&a.settings, &b.settings) {
        push(
            "settings".into(),
            Value::Null,
            json!("rebuilt from the config"),
        );
    }
    out
}

/// The controller's record without its machine state, so audit lines and events stay short.
fn rollout_summary(v: &Value) -> Value {
    const KEEP: [&str; 7] = [
        "id",
        "phase",
        "step",
        "candidate",
        "candidate_percent",
        "gate",
        "reason",
    ];
    match v {
        Value::Object(map) if map.contains_key("machine") => Value::Object(
            map.iter()
                .filter(|(k, _)| KEEP.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}
