//! CONTROL PLANE: what each admin verb does — one small `apply` per verb over [`Control`].
//! Every mutation is one [`Control::update`]: one route-table swap, saved and audited.

use std::sync::Arc;

use serde_json::{json, Value};

use super::command::{needs_admin_verb, state_str, AdminCommand, AdminError, ERROR_CODES, VERBS};
use super::controller::{send_all_to, Controller};
use super::state::BackendRef;
use super::{percent, Actor, Applied, Control};
use crate::config::PoolId;
use crate::proxy::route::FULL_BP;

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
        AdminCommand::Fleet => control.fleet_view().ok_or_else(|| {
            AdminError::bad_argument("this instance runs alone (no [fleet] in its config)")
        }),
        AdminCommand::Watch => Err(AdminError::new(
            "internal",
            "watch is served by the socket loop",
        )),
        AdminCommand::WaitDrained { .. } | AdminCommand::Handover => Err(AdminError::new(
            "internal",
            "wait-drained and handover are served by the socket loop",
        )),
        AdminCommand::Weight {
            pool,
            bp,
            expect_gen,
        } => {
            let applied = control.update(actor, line, expect_gen, |d| {
                if control.rollout_active() {
                    return Err(AdminError::new(
                        "rollout_active",
                        "a rollout is progressing; pause or abort it (or `rollback`) before setting a weight",
                    ));
                }
                d.green_bp = green_share(pool, bp, d.stable)?;
                Ok(())
            })?;
            Ok(reply(applied))
        }
        AdminCommand::Rollback { to, expect_gen } => {
            // With a controller, a live rollout ends in the same swap (rolled back by operator).
            // Local first: in a fleet whose etcd is unreachable it applies here at once.
            let applied = Control::local_first(|| match control.controller() {
                Some(c) => c.rollback(control, actor, line, to, expect_gen),
                None => control.update(actor, line, expect_gen, |d| {
                    send_all_to(d, to.unwrap_or(d.stable));
                    Ok(())
                }),
            })?;
            Ok(reply(applied))
        }
        AdminCommand::RolloutStart { args, expect_gen } => {
            controller(control)?.start(control, actor, line, &args, expect_gen)
        }
        AdminCommand::Rollout { action, expect_gen } => {
            controller(control)?.act(control, actor, line, action, expect_gen)
        }
        AdminCommand::RolloutStatus => Ok(controller(control)?.status(control)),
        AdminCommand::Gates => Ok(controller(control)?.gates(control)),
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
            v["tls"] = control.tls_status();
            Ok(v)
        }
    }
}

/// Green's share for `weight [POOL] PERCENT`. A bare percent is green's share, the runbook's
/// habit from when blue was always stable; once green is stable it would send most traffic
/// to the old build, so it is refused and the pool must be named.
fn green_share(pool: Option<PoolId>, bp: u16, stable: PoolId) -> Result<u16, AdminError> {
    match (pool, stable) {
        (Some(PoolId::Green), _) | (None, PoolId::Blue) => Ok(bp),
        (Some(PoolId::Blue), _) => Ok(FULL_BP - bp.min(FULL_BP)),
        (None, PoolId::Green) => Err(AdminError::new(
            "ambiguous_pool",
            format!(
                "green is the stable pool, so a bare `weight {}` is ambiguous: name the pool that \
                 gets the share, e.g. `weight blue {p}` (blue, the candidate, gets {p}%) or \
                 `weight green {p}` (green, the stable pool, keeps {p}%)",
                percent(bp),
                p = percent(bp)
            ),
        )),
    }
}

fn controller(control: &Control) -> Result<&Arc<Controller>, AdminError> {
    control
        .controller()
        .ok_or_else(|| AdminError::new("internal", "no rollout controller is running"))
}

/// `generation`, `changed`, `changes`, and the resulting weights and states.
fn reply(applied: Applied) -> Value {
    let t = &applied.table;
    let mut v = json!({
        "generation": applied.generation,
        "changed": !applied.changes.is_empty(),
        "changes": applied.changes,
        "green_percent": percent(t.green_bp),
        "blue_percent": percent(FULL_BP - t.green_bp),
        "effective_green_percent": percent(t.effective_green_bp()),
        "stable": applied.stable,
        "candidate": applied.stable.other(),
        "states": { "blue": state_str(t.states[0]), "green": state_str(t.states[1]) },
        "persisted": applied.persisted,
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
            .filter(|(usage, _)| !needs_admin_verb(usage))
            .map(|(usage, _)| verb_words(usage))
            .collect::<Vec<_>>(),
    })
}

/// The verb of a usage line: its leading lowercase words (`rollout status`, `gates`).
fn verb_words(usage: &str) -> String {
    usage
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect::<Vec<_>>()
        .join(" ")
}
