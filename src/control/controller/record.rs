//! CONTROL PLANE: how a rollout is written down — the persisted record (also what `status`
//! shows), the `rollout status` view, the `watch` event and the gate reports, as JSON.
//!
//! The record's human fields are regenerated on every write; only `machine` (the
//! [`Rollout`] itself), `id` and the times are read back after a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::audit::rfc3339;
use crate::control::percent;
use crate::control::rollout::{Gate, GateReport, Phase, Rollout};
use crate::proxy::route::FULL_BP;

/// What is known about a rollout besides its machine: which one it is, who started it, when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// One more than the previous rollout's.
    pub id: u64,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    /// The actor of `rollout start`.
    pub started_by: Value,
}

pub fn unix_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The persisted record: [`summary`] plus the machine.
pub fn record(r: &Rollout, meta: &Meta) -> Value {
    let mut v = summary(r, meta);
    // A plain struct of numbers, strings and enums: serialising it cannot fail.
    v["machine"] = serde_json::to_value(r).unwrap_or(Value::Null);
    v
}

/// Reads a record back; `None` if it is not one of ours (e.g. written by an older version).
pub fn parse(v: &Value) -> Option<(Rollout, Meta)> {
    let rollout = Rollout::deserialize(v.get("machine")?).ok()?;
    let meta = Meta {
        id: v["id"].as_u64()?,
        started_unix_ms: v["started_unix_ms"].as_u64().unwrap_or(0),
        ended_unix_ms: v["ended_unix_ms"].as_u64(),
        started_by: v["started_by"].clone(),
    };
    Some((rollout, meta))
}

/// Id, phase, step (0-based), weights, and for an ended rollout its gate and reason. A
/// paused rollout's `reason` is the pause reason (`insufficient_data`, ...).
pub fn summary(r: &Rollout, meta: &Meta) -> Value {
    let plan = r.plan();
    let last = plan.steps_bp.len().saturating_sub(1);
    let (step, gate, reason, aborted_by) = match r.phase() {
        Phase::Idle | Phase::Promoted => (None, None, None, None),
        Phase::Progressing { step } => (Some(*step), None, None, None),
        Phase::Paused { reason, step } => (Some(*step), None, Some(reason.as_str().into()), None),
        Phase::Baking => (Some(last), None, None, None),
        Phase::RolledBack { gate, reason } => (None, Some(*gate), Some(reason.clone()), None),
        Phase::Aborted {
            actor,
            reason: Some(why),
        } => (
            None,
            Some(Gate::HookFailed),
            Some(why.clone()),
            Some(actor.clone()),
        ),
        Phase::Aborted {
            actor,
            reason: None,
        } => (
            None,
            Some(Gate::Operator),
            Some(format!("aborted by {actor}")),
            Some(actor.clone()),
        ),
    };
    json!({
        "id": meta.id,
        "phase": r.phase().name(),
        "step": step,
        "steps_percent": plan.steps_bp.iter().map(|&bp| percent(bp)).collect::<Vec<_>>(),
        "candidate": plan.candidate,
        "stable": plan.candidate.other(),
        "candidate_percent": percent(r.candidate_weight_bp()),
        "gate": gate,
        "reason": reason,
        "aborted_by": aborted_by,
        "hold_ms": millis(plan.hold),
        "bake_ms": millis(plan.bake),
        "window_ms": millis(plan.window),
        "started_unix_ms": meta.started_unix_ms,
        "ended_unix_ms": meta.ended_unix_ms,
        "started_by": meta.started_by,
        "waiting_for": r.pending().map(|p| p.point.as_str()),
    })
}

/// `rollout status`: the summary, time left in the hold, duration, both pools' gates, and
/// for a rollback by a gate that gate's report (`trip`).
pub fn view(r: &Rollout, meta: &Meta, now: Duration) -> Value {
    let mut v = summary(r, meta);
    let end = meta.ended_unix_ms.unwrap_or_else(unix_ms);
    v["duration_ms"] = json!(end.saturating_sub(meta.started_unix_ms));
    v["hold_left_ms"] = json!(r.hold_remaining(now).map(millis));
    v["gates"] = reports(r.gates());
    v["queries"] = json!(r.query_reports());
    if let Phase::RolledBack { gate, .. } = r.phase() {
        let trip = r
            .gates()
            .iter()
            .find(|g| g.gate == *gate && g.pool == r.candidate());
        v["trip"] = trip.map_or(Value::Null, report);
    }
    v
}

/// The `watch` event of a transition.
pub fn event(r: &Rollout, meta: &Meta, actor: &Value, generation: u64) -> Value {
    let mut v = summary(r, meta);
    v["event"] = json!("rollout");
    v["time"] = json!(rfc3339(SystemTime::now()));
    // Name, value, bounds and verdict of each query gate.
    v["queries"] = json!(r.query_reports());
    v["generation"] = json!(generation);
    v["actor"] = actor.clone();
    v
}

/// The body of a rollout hook (`event` and `hook` are added per hook): the rollout's
/// summary with both pools' shares, the step it was at, the generation, the reason, the gate
/// with its evidence (every gate's last report) and the constitutional hash.
pub fn hook_body(
    r: &Rollout,
    previous: Option<&Rollout>,
    meta: &Meta,
    generation: u64,
    control: &crate::control::Control,
) -> Value {
    let mut rollout = summary(r, meta);
    rollout["stable_percent"] = json!(percent(FULL_BP - r.candidate_weight_bp().min(FULL_BP)));
    let step_of = |r: &Rollout| match r.phase() {
        Phase::Progressing { step } | Phase::Paused { step, .. } => Some(*step),
        Phase::Baking => Some(r.plan().steps_bp.len().saturating_sub(1)),
        _ => None,
    };
    let step = step_of(r).or_else(|| previous.and_then(step_of));
    let evidence = match r.phase() {
        Phase::RolledBack { gate, .. } => r
            .gates()
            .iter()
            .filter(|g| g.gate == *gate)
            .map(report)
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "time": rfc3339(SystemTime::now()),
        "rollout": rollout,
        "step": step,
        "generation": generation,
        "reason": rollout["reason"],
        "gate": rollout["gate"],
        "evidence": evidence,
        "gates": reports(r.gates()),
        "hash": control.config().constitution.hash,
    })
}

/// One gate report with its unit.
pub fn report(g: &GateReport) -> Value {
    let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
    v["unit"] = json!(g.unit());
    v
}

pub fn reports(gates: &[GateReport]) -> Value {
    Value::Array(gates.iter().map(report).collect())
}

/// "progressing step 2/3 (50%)", for logs and the audit line.
pub fn describe(r: &Rollout) -> String {
    let weight = percent(r.candidate_weight_bp());
    let steps = r.plan().steps_bp.len();
    match r.phase() {
        Phase::Progressing { step } => {
            format!("progressing step {}/{steps} ({weight}%)", step + 1)
        }
        Phase::Paused { reason, step } => format!(
            "paused ({}) at step {}/{steps} ({weight}%)",
            reason.as_str(),
            step + 1
        ),
        Phase::RolledBack { gate, reason } => {
            format!("rolled back by {}: {reason}", gate.as_str())
        }
        Phase::Aborted {
            reason: Some(why), ..
        } => format!("aborted: {why}"),
        Phase::Aborted { actor, .. } => format!("aborted by {actor}"),
        other => format!("{} ({weight}%)", other.name()),
    }
}
