//! CONTROL PLANE: admin commands — one enum variant per verb, parsed from a line of words.
//!
//! To add a verb (the rollout verbs, `gates`): a variant here, a [`VERBS`] line, a match
//! arm in [`AdminCommand::parse`], [`AdminCommand::is_mutation`] if it changes state, and
//! its `apply` arm in `control::execute`.

use crate::config::{parse_percent_bp, PoolId};
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
    ("busy", "too many admin clients are connected"),
    (
        "idle_timeout",
        "the client sent nothing for `admin.idle_timeout`; the socket closes",
    ),
    (
        "reload_failed",
        "the new config is invalid or changes what needs a restart; `key` names it",
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
        "weight PERCENT [expect-gen N]",
        "set green's share of new requests (0..100, up to two decimals)",
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
        "watch",
        "turn this connection into a stream of JSON event lines",
    ),
    ("help", "this list"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `status`
    Status,
    /// `help`
    Help,
    /// `watch`
    Watch,
    /// `weight PERCENT [expect-gen N]`
    Weight {
        green_bp: u16,
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
}

/// Verbs that change state: they need admin rights and are audited even when refused.
const MUTATING_VERBS: &[&str] = &["weight", "rollback", "pool", "backend", "reload", "rollout"];

/// Whether the first word of `line` names a mutating verb (parsed or not).
pub fn is_mutating_verb(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|v| MUTATING_VERBS.contains(&v))
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
            "weight" => match args {
                [p] => parse_percent_bp(p)
                    .map(|green_bp| AdminCommand::Weight {
                        green_bp,
                        expect_gen,
                    })
                    .map_err(|e| AdminError::bad_argument(format!("weight: {e}"))),
                _ => Err(usage("weight PERCENT [expect-gen N]")),
            },
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
            AdminCommand::Status | AdminCommand::Help | AdminCommand::Watch
        )
    }
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
                green_bp: 1000,
                expect_gen: None
            })
        );
        assert_eq!(
            AdminCommand::parse("weight 0.5 expect-gen 7"),
            Ok(AdminCommand::Weight {
                green_bp: 50,
                expect_gen: Some(7)
            })
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
        for line in ["status", "help", "watch"] {
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
        ] {
            assert_eq!(
                AdminCommand::parse(bad).map_err(|e| e.code),
                Err("bad_argument"),
                "{bad}"
            );
        }
    }
}
