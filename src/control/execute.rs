//! CONTROL PLANE: what each admin verb does — one small `apply` per verb over [`Control`].
//! Every mutation is one [`Control::update`]: one route-table swap, saved and audited.

use serde_json::{json, Value};

use super::command::{is_mutating_verb, state_str, AdminCommand, AdminError, ERROR_CODES, VERBS};
use super::state::BackendRef;
use super::{percent, Actor, Applied, Control};
use crate::config::PoolId;
use crate::proxy::route::{PoolState, FULL_BP};

/// Runs one parsed command (not `watch`, which the socket handles) and returns the reply's
/// fields. `line` is the command as the peer sent it, for the audit log.
pub fn execute(
    control: &Control,
    cmd: AdminCommand,
    actor: &Actor,
    line: &str,
) -> Result<Value, AdminError> {
    match cmd {
        AdminCommand::Status => Ok(control.status()),
        AdminCommand::Help => Ok(help()),
        AdminCommand::Watch => Err(AdminError::new(
            "internal",
            "watch is served by the socket loop",
        )),
        AdminCommand::Weight {
            green_bp,
            expect_gen,
        } => {
            let applied = control.update(actor, line, expect_gen, |d| {
                if control.rollout_active() {
                    return Err(AdminError::new(
                        "rollout_active",
                        "a rollout is progressing; pause or abort it (or `rollback`) before setting a weight",
                    ));
                }
                d.green_bp = green_bp;
                Ok(())
            })?;
            Ok(reply(applied))
        }
        AdminCommand::Rollback { to, expect_gen } => {
            let applied = control.update(actor, line, expect_gen, |d| {
                let target = to.unwrap_or(d.stable);
                d.green_bp = match target {
                    PoolId::Blue => 0,
                    PoolId::Green => FULL_BP,
                };
                // A rollback onto a drained pool would send nothing there; the target is
                // made ready in the same swap.
                d.states[target.index()] = PoolState::Ready;
                Ok(())
            })?;
            Ok(reply(applied))
        }
        AdminCommand::Pool {
            pool,
            state,
            expect_gen,
        } => {
            let applied = control.update(actor, line, expect_gen, |d| {
                d.states[pool.index()] = state;
                Ok(())
            })?;
            Ok(reply(applied))
        }
        AdminCommand::Backend {
            pool,
            addr,
            enabled,
            expect_gen,
        } => {
            let applied = control.update(actor, line, expect_gen, |d| {
                let p = &d.pools[pool.index()];
                if !p.backends.iter().any(|b| b.addr == addr) {
                    let known: Vec<&str> = p.backends.iter().map(|b| b.addr.as_str()).collect();
                    return Err(AdminError::bad_argument(format!(
                        "pool {pool} has no backend `{addr}`; its backends are: {}",
                        known.join(", ")
                    )));
                }
                let key = BackendRef::new(pool, &addr);
                if enabled {
                    d.disabled.remove(&key);
                } else {
                    d.disabled.insert(key);
                }
                Ok(())
            })?;
            Ok(reply(applied))
        }
        AdminCommand::Reload { expect_gen } => {
            let (applied, restart_required) = control.reload(actor, line, expect_gen)?;
            let mut v = reply(applied);
            v["restart_required"] = json!(restart_required);
            Ok(v)
        }
    }
}

/// `generation`, `changed`, `changes`, and the resulting weights and states.
fn reply(applied: Applied) -> Value {
    let t = &applied.table;
    let mut v = json!({
        "generation": applied.generation,
        "changed": !applied.changes.is_empty(),
        "changes": applied.changes,
        "green_percent": percent(t.green_bp),
        "effective_green_percent": percent(t.effective_green_bp()),
        "states": { "blue": state_str(t.states[0]), "green": state_str(t.states[1]) },
    });
    if let Some(w) = applied.warning {
        v["warning"] = json!(w);
    }
    v
}

pub fn help() -> Value {
    json!({
        "commands": VERBS.iter().map(|(u, p)| json!({ "usage": u, "purpose": p })).collect::<Vec<_>>(),
        "error_codes": ERROR_CODES.iter().map(|(c, w)| json!({ "code": c, "when": w })).collect::<Vec<_>>(),
        "read_only": VERBS
            .iter()
            .filter(|(usage, _)| !is_mutating_verb(usage))
            .filter_map(|(usage, _)| usage.split_whitespace().next())
            .collect::<Vec<_>>(),
    })
}
