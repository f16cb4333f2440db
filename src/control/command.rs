//! CONTROL PLANE: admin commands — one enum variant per verb, parsed from a line of words.
//!
//! To add a verb: a variant here, a [`VERBS`] line, a match
//! arm in [`AdminCommand::parse`], [`AdminCommand::is_mutation`] if it changes state, and
//! its `apply` arm in `control::execute`.

use std::time::Duration;

use crate::config::{parse_duration, parse_percent_bp, PoolId};
use crate::proxy::route::PoolState;

/// Error codes are part of the admin protocol: tooling (and `ctl`'s exit code) match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
    /// The config key a `reload_failed` is about, when known.
    pub key: Option<String>,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
            key: None,
        }
    }
    pub fn bad_argument(message: impl Into<String>) -> Self {
        Self::new("bad_argument", message)
    }
    pub fn with_key(mut self, key: Option<&str>) -> Self {
        self.key = key.map(str::to_string);
        self
    }
}

/// Every error code the socket can answer with, and when; `help` shows this list.
pub const ERROR_CODES: &[(&str, &str)] = &[
    ("unknown_command", "the verb is not one that `help` lists"),
    (
        "bad_argument",
        "an argument is missing or malformed, or the line is too long or not UTF-8",
    ),
    (
        "conflict",
        "`expect-gen N` did not match the current generation; nothing changed",
    ),
    (
        "store_unavailable",
        "the fleet's etcd cannot be reached; nothing changed (`rollback` still works)",
    ),
    (
        "rollout_active",
        "a manual weight change while a rollout progresses",
    ),
    (
        "permission_denied",
        "the peer's uid/gid may not run this command",
    ),
    (
        "invalid_transition",
        "the rollout is in a state that does not allow this verb",
    ),
    (
        "busy",
        "every connection of the peer's level (admin.max_clients, admin.max_admin_clients) is in use",
    ),
    (
        "ambiguous_pool",
        "`weight PERCENT` while green is stable; name the pool: `weight green N` or `weight blue N`",
    ),
    (
        "state_unwritable",
        "the state file cannot be written; the change was refused and nothing changed (`rollback` applies anyway)",
    ),
    (
        "idle_timeout",
        "the client sent nothing for `admin.idle_timeout`; the socket closes",
    ),
    (
        "reload_failed",
        "the new config is invalid or changes what needs a restart; `key` names it",
    ),
    (
        "timeout",
        "`wait-drained` reached its timeout with requests still in flight",
    ),
    (
        "superseded",
        "this daemon handed its sockets to a new process; talk to that one",
    ),
    ("internal", "the daemon failed; the message says how"),
];

/// `(usage, purpose)` of every verb, for `help`. Mutations take a trailing `expect-gen N`.
pub const VERBS: &[(&str, &str)] = &[
    (
        "status",
        "route table: generation, weights, stable pool, pool states, backends",
    ),
    (
        "weight POOL PERCENT [expect-gen N]",
        "set POOL's share of new requests (0..100, up to two decimals); the other pool gets the rest. \
         `weight PERCENT` sets green's share while blue is stable and is refused (ambiguous_pool) while green is",
    ),
    (
        "rollback [to POOL] [expect-gen N]",
        "send 100% to the stable pool (or POOL) now and mark it ready",
    ),
    (
        "pool POOL ready|drain|maint [expect-gen N]",
        "set a pool's operator state",
    ),
    (
        "backend POOL ADDR enable|disable [expect-gen N]",
        "take one backend in or out of its pool",
    ),
    (
        "reload [expect-gen N]",
        "re-read and validate the config file, swap in pools and settings",
    ),
    (
        "rollout start [to POOL] [steps 10,50,100] [hold 60s] [bake 5m] [expect-gen N]",
        "start a gated rollout to POOL (default: the pool that is not stable)",
    ),
    (
        "rollout pause|resume|promote|abort [expect-gen N]",
        "hold the weight | carry on | make the candidate stable at 100% now | roll back and end it",
    ),
    (
        "rollout status",
        "the rollout: phase, step, weight, hold left, gates",
    ),
    (
        "gates",
        "each gate's value, limit, samples and verdict for both pools, and the wait for enough samples",
    ),
    (
        "watch",
        "turn this connection into a stream of JSON event lines",
    ),
    (
        "wait-drained POOL [timeout D]",
        "wait until POOL has nothing in flight (after `pool POOL drain`); error `timeout` after D (default 5m)",
    ),
    (
        "handover",
        "hand the listening sockets to a new process (`switchyard run --takeover` sends it)",
    ),
    (
        "fleet",
        "with [fleet]: every live instance, its generation and lag, and the leader",
    ),
    ("help", "this list"),
];

/// `rollout pause|resume|promote|abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
            RolloutAction::Abort => "abort",
        }
    }
}

/// The arguments of `rollout start`; `None` takes the config's `[rollout]` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartArgs {
    pub to: Option<PoolId>,
    pub steps_bp: Option<Vec<u16>>,
    pub hold: Option<Duration>,
    pub bake: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `status`
    Status,
    /// `help`
    Help,
    /// `watch`
    Watch,
    /// `weight [POOL] PERCENT [expect-gen N]`: POOL's share; without POOL, green's (refused
    /// with `ambiguous_pool` while green is stable).
    Weight {
        pool: Option<PoolId>,
        bp: u16,
        expect_gen: Option<u64>,
    },
    /// `rollback [to POOL] [expect-gen N]`
    Rollback {
        to: Option<PoolId>,
        expect_gen: Option<u64>,
    },
    /// `pool POOL ready|drain|maint [expect-gen N]`
    Pool {
        pool: PoolId,
        state: PoolState,
        expect_gen: Option<u64>,
    },
    /// `backend POOL ADDR enable|disable [expect-gen N]`
    Backend {
        pool: PoolId,
        addr: String,
        enabled: bool,
        expect_gen: Option<u64>,
    },
    /// `reload [expect-gen N]`
    Reload { expect_gen: Option<u64> },
    /// `rollout start [to POOL] [steps ...] [hold D] [bake D] [expect-gen N]`
    RolloutStart {
        args: StartArgs,
        expect_gen: Option<u64>,
    },
    /// `rollout pause|resume|promote|abort [expect-gen N]`
    Rollout {
        action: RolloutAction,
        expect_gen: Option<u64>,
    },
    /// `rollout status`
    RolloutStatus,
    /// `gates`
    Gates,
    /// `wait-drained POOL [timeout D]`: admin only, changes nothing.
    WaitDrained { pool: PoolId, timeout: Duration },
    /// `handover`: a new process takes over the listening sockets (`run --takeover`).
    Handover,
    /// `fleet`: the fleet's instances and leader (`[fleet]`).
    Fleet,
}

/// Verbs that change state: they need admin rights and are audited even when refused.
const MUTATING_VERBS: &[&str] = &[
    "weight", "rollback", "pool", "backend", "reload", "rollout", "handover",
];

/// Whether the first word of `line` names a verb only admins may run.
pub fn needs_admin_verb(line: &str) -> bool {
    is_mutating_verb(line) || line.split_whitespace().next() == Some("wait-drained")
}

/// Whether the first word of `line` names a mutating verb (parsed or not); `rollout status`
/// only reads.
pub fn is_mutating_verb(line: &str) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("rollout"), Some("status")) => false,
        (Some(verb), _) => MUTATING_VERBS.contains(&verb),
        (None, _) => false,
    }
}

impl AdminCommand {
    pub fn parse(line: &str) -> Result<AdminCommand, AdminError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            return Err(AdminError::new(
                "unknown_command",
                "empty command; try `help`",
            ));
        };
        let (args, expect_gen) = take_expect_gen(args)?;
        let no_args = |cmd: AdminCommand| {
            if args.is_empty() && expect_gen.is_none() {
                Ok(cmd)
            } else {
                Err(AdminError::bad_argument(format!(
                    "`{verb}` takes no arguments"
                )))
            }
        };
        match verb {
            "status" => no_args(AdminCommand::Status),
            "help" => no_args(AdminCommand::Help),
            "watch" => no_args(AdminCommand::Watch),
            "weight" => {
                let (pool, p) = match args {
                    [p] => (None, p),
                    [pool, p] => (Some(parse_pool(pool)?), p),
                    _ => return Err(usage("weight POOL PERCENT [expect-gen N]")),
                };
                parse_percent_bp(p)
                    .map(|bp| AdminCommand::Weight {
                        pool,
                        bp,
                        expect_gen,
                    })
                    .map_err(|e| AdminError::bad_argument(format!("weight: {e}")))
            }
            "rollback" => match args {
                [] => Ok(AdminCommand::Rollback {
                    to: None,
                    expect_gen,
                }),
                ["to", pool] => Ok(AdminCommand::Rollback {
                    to: Some(parse_pool(pool)?),
                    expect_gen,
                }),
                _ => Err(usage("rollback [to POOL] [expect-gen N]")),
            },
            "pool" => match args {
                [pool, state] => Ok(AdminCommand::Pool {
                    pool: parse_pool(pool)?,
                    state: parse_state(state)?,
                    expect_gen,
                }),
                _ => Err(usage("pool POOL ready|drain|maint [expect-gen N]")),
            },
            "backend" => match args {
                [pool, addr, action] => {
                    let enabled = match *action {
                        "enable" => true,
                        "disable" => false,
                        other => {
                            return Err(AdminError::bad_argument(format!(
                                "`{other}` is not enable or disable"
                            )))
                        }
                    };
                    Ok(AdminCommand::Backend {
                        pool: parse_pool(pool)?,
                        addr: addr.to_string(),
                        enabled,
                        expect_gen,
                    })
                }
                _ => Err(usage("backend POOL ADDR enable|disable [expect-gen N]")),
            },
            "reload" => match args {
                [] => Ok(AdminCommand::Reload { expect_gen }),
                _ => Err(usage("reload [expect-gen N]")),
            },
            "rollout" => parse_rollout(args, expect_gen),
            "gates" => no_args(AdminCommand::Gates),
            "wait-drained" => parse_wait_drained(args, expect_gen),
            "handover" => no_args(AdminCommand::Handover),
            "fleet" => no_args(AdminCommand::Fleet),
            other => Err(AdminError::new(
                "unknown_command",
                format!("unknown command `{other}`; try `help`"),
            )),
        }
    }

    /// Whether the command changes state (and so needs admin rights and an audit line).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            AdminCommand::Status
                | AdminCommand::Help
                | AdminCommand::Watch
                | AdminCommand::RolloutStatus
                | AdminCommand::Gates
                | AdminCommand::WaitDrained { .. }
        )
    }

    /// Whether only admins may run it: every mutation, and `wait-drained` (it holds a
    /// connection for as long as the pool drains).
    pub fn needs_admin(&self) -> bool {
        self.is_mutation() || matches!(self, AdminCommand::WaitDrained { .. })
    }
}

const ROLLOUT_USAGE: &str = "rollout start [to POOL] [steps 10,50,100] [hold 60s] [bake 5m] | rollout pause|resume|promote|abort | rollout status";

/// `rollout ...` after the verb; `start` takes `KEY VALUE` pairs in any order.
fn parse_rollout(args: &[&str], expect_gen: Option<u64>) -> Result<AdminCommand, AdminError> {
    let action = |action| Ok(AdminCommand::Rollout { action, expect_gen });
    match args {
        ["start", pairs @ ..] => {
            let mut start = StartArgs::default();
            let mut rest = pairs;
            while let [key, value, tail @ ..] = rest {
                match *key {
                    "to" => start.to = Some(parse_pool(value)?),
                    "steps" => start.steps_bp = Some(parse_steps(value)?),
                    "hold" => start.hold = Some(parse_time("hold", value)?),
                    "bake" => start.bake = Some(parse_time("bake", value)?),
                    other => {
                        return Err(AdminError::bad_argument(format!(
                            "rollout start: unknown option `{other}`; usage: {ROLLOUT_USAGE}"
                        )))
                    }
                }
                rest = tail;
            }
            if let [odd] = rest {
                return Err(AdminError::bad_argument(format!(
                    "rollout start: `{odd}` needs a value; usage: {ROLLOUT_USAGE}"
                )));
            }
            Ok(AdminCommand::RolloutStart {
                args: start,
                expect_gen,
            })
        }
        ["pause"] => action(RolloutAction::Pause),
        ["resume"] => action(RolloutAction::Resume),
        ["promote"] => action(RolloutAction::Promote),
        ["abort"] => action(RolloutAction::Abort),
        ["status"] if expect_gen.is_none() => Ok(AdminCommand::RolloutStatus),
        _ => Err(usage(ROLLOUT_USAGE)),
    }
}

/// `10,50,100` (percents, up to two decimals) in basis points; the plan checks the order.
fn parse_steps(word: &str) -> Result<Vec<u16>, AdminError> {
    word.split(',')
        .map(|p| {
            parse_percent_bp(p.trim())
                .map_err(|e| AdminError::bad_argument(format!("rollout start steps: {e}")))
        })
        .collect()
}

fn parse_time(what: &str, word: &str) -> Result<Duration, AdminError> {
    parse_duration(word).map_err(|e| AdminError::bad_argument(format!("rollout start {what}: {e}")))
}

/// `wait-drained POOL [timeout D]`.
fn parse_wait_drained(args: &[&str], expect_gen: Option<u64>) -> Result<AdminCommand, AdminError> {
    const USAGE: &str = "wait-drained POOL [timeout D]";
    if expect_gen.is_some() {
        return Err(AdminError::bad_argument(
            "`wait-drained` changes nothing; it takes no expect-gen",
        ));
    }
    let (pool, timeout) = match args {
        [pool] => (pool, super::drain::DEFAULT_TIMEOUT),
        [pool, "timeout", d] => {
            let t =
                parse_duration(d).map_err(|e| AdminError::bad_argument(format!("timeout: {e}")))?;
            if t.is_zero() || t > super::drain::MAX_TIMEOUT {
                return Err(AdminError::bad_argument(format!(
                    "timeout {d} is out of range; give more than 0 and at most {:?}",
                    super::drain::MAX_TIMEOUT
                )));
            }
            (pool, t)
        }
        _ => return Err(usage(USAGE)),
    };
    Ok(AdminCommand::WaitDrained {
        pool: parse_pool(pool)?,
        timeout,
    })
}

fn usage(text: &str) -> AdminError {
    AdminError::bad_argument(format!("usage: {text}"))
}

pub fn parse_pool(word: &str) -> Result<PoolId, AdminError> {
    PoolId::parse(word).ok_or_else(|| {
        AdminError::bad_argument(format!("`{word}` is not a pool; expected blue or green"))
    })
}

pub fn parse_state(word: &str) -> Result<PoolState, AdminError> {
    state_from_str(word).ok_or_else(|| {
        AdminError::bad_argument(format!(
            "`{word}` is not a pool state; expected ready, drain or maint"
        ))
    })
}

/// `"ready"`, `"drain"`, `"maint"` (the serialised names of [`PoolState`]).
pub fn state_from_str(word: &str) -> Option<PoolState> {
    match word {
        "ready" => Some(PoolState::Ready),
        "drain" => Some(PoolState::Drain),
        "maint" => Some(PoolState::Maint),
        _ => None,
    }
}

pub fn state_str(state: PoolState) -> &'static str {
    match state {
        PoolState::Ready => "ready",
        PoolState::Drain => "drain",
        PoolState::Maint => "maint",
    }
}

/// Splits off a trailing `expect-gen N`.
fn take_expect_gen<'a, 'b>(
    args: &'b [&'a str],
) -> Result<(&'b [&'a str], Option<u64>), AdminError> {
    match args {
        [rest @ .., "expect-gen", n] => n.parse::<u64>().map(|g| (rest, Some(g))).map_err(|_| {
            AdminError::bad_argument(format!("expect-gen takes a generation number, got `{n}`"))
        }),
        [.., "expect-gen"] => Err(AdminError::bad_argument(
            "expect-gen needs a generation number",
        )),
        _ => Ok((args, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weight_with_and_without_expect_gen() {
        assert_eq!(
            AdminCommand::parse("weight 10"),
            Ok(AdminCommand::Weight {
                pool: None,
                bp: 1000,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("weight 0.5 expect-gen 7"),
            Ok(AdminCommand::Weight {
                pool: None,
                bp: 50,
                expect_gen: Some(7)
            })
        );
        assert_eq!(
            AdminCommand::parse("weight blue 10"),
            Ok(AdminCommand::Weight {
                pool: Some(PoolId::Blue),
                bp: 1000,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("weight GREEN 99.5 expect-gen 2"),
            Ok(AdminCommand::Weight {
                pool: Some(PoolId::Green),
                bp: 9950,
                expect_gen: Some(2)
            })
        );
        assert_eq!(
            AdminCommand::parse("weight purple 10").unwrap_err().code,
            "bad_argument"
        );
    }

    #[test]
    fn parses_every_mutation() {
        assert_eq!(
            AdminCommand::parse("rollback"),
            Ok(AdminCommand::Rollback {
                to: None,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("rollback to GREEN expect-gen 3"),
            Ok(AdminCommand::Rollback {
                to: Some(PoolId::Green),
                expect_gen: Some(3)
            })
        );
        assert_eq!(
            AdminCommand::parse("pool blue drain"),
            Ok(AdminCommand::Pool {
                pool: PoolId::Blue,
                state: PoolState::Drain,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("backend green 127.0.0.1:9011 disable"),
            Ok(AdminCommand::Backend {
                pool: PoolId::Green,
                addr: "127.0.0.1:9011".into(),
                enabled: false,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("reload expect-gen 9"),
            Ok(AdminCommand::Reload {
                expect_gen: Some(9)
            })
        );
        for line in [
            "weight 1",
            "rollback",
            "pool blue ready",
            "backend blue a:1 enable",
            "reload",
        ] {
            assert!(AdminCommand::parse(line).unwrap().is_mutation(), "{line}");
            assert!(is_mutating_verb(line));
        }
        for line in ["status", "help", "watch", "rollout status", "gates"] {
            assert!(!AdminCommand::parse(line).unwrap().is_mutation(), "{line}");
            assert!(!is_mutating_verb(line));
        }
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        assert_eq!(
            AdminCommand::parse("frobnicate").map_err(|e| e.code),
            Err("unknown_command")
        );
        assert_eq!(
            AdminCommand::parse("").map_err(|e| e.code),
            Err("unknown_command")
        );
        for bad in [
            "weight",
            "weight 101",
            "weight -1",
            "weight 12.345",
            "weight x",
            "weight 5 expect-gen",
            "weight 5 expect-gen x",
            "status now",
            "status expect-gen 1",
            "rollback to red",
            "rollback blue",
            "pool blue",
            "pool blue sleepy",
            "pool purple ready",
            "backend blue 1.2.3.4:5",
            "backend blue 1.2.3.4:5 toggle",
            "reload now",
            "rollout",
            "rollout start to red",
            "rollout start steps 10,x,100",
            "rollout start hold 5",
            "rollout start hold",
            "rollout start speed 3",
            "rollout status expect-gen 1",
            "rollout frobnicate",
            "gates now",
        ] {
            assert_eq!(
                AdminCommand::parse(bad).map_err(|e| e.code),
                Err("bad_argument"),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_rollout_verbs() {
        assert_eq!(
            AdminCommand::parse(
                "rollout start to green steps 5,25,100 hold 2s bake 1m expect-gen 4"
            ),
            Ok(AdminCommand::RolloutStart {
                args: StartArgs {
                    to: Some(PoolId::Green),
                    steps_bp: Some(vec![500, 2500, 10_000]),
                    hold: Some(Duration::from_secs(2)),
                    bake: Some(Duration::from_secs(60)),
                },
                expect_gen: Some(4)
            })
        );
        assert_eq!(
            AdminCommand::parse("rollout start"),
            Ok(AdminCommand::RolloutStart {
                args: StartArgs::default(),
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("rollout abort expect-gen 9"),
            Ok(AdminCommand::Rollout {
                action: RolloutAction::Abort,
                expect_gen: Some(9)
            })
        );
        for line in ["rollout start", "rollout pause", "rollout promote"] {
            assert!(AdminCommand::parse(line).unwrap().is_mutation(), "{line}");
            assert!(is_mutating_verb(line), "{line}");
        }
    }
}
