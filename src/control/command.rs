//! CONTROL PLANE: admin commands — one enum variant per verb, parsed from a line of words.

use crate::config::parse_percent_bp;

/// Error codes are part of the admin protocol: tooling matches on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        AdminError { code, message: message.into() }
    }
    pub fn bad_argument(message: impl Into<String>) -> Self {
        Self::new("bad_argument", message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `status`
    Status,
    /// `weight PERCENT [expect-gen N]`
    Weight { green_bp: u16, expect_gen: Option<u64> },
    /// `help`
    Help,
}

/// `(usage, purpose)` of every verb, for `help`.
pub const VERBS: &[(&str, &str)] = &[
    ("status", "route table, weights, pools and generation"),
    ("weight PERCENT [expect-gen N]", "set green's share of new requests (0..100, up to two decimals)"),
    ("help", "this list"),
];

impl AdminCommand {
    pub fn parse(line: &str) -> Result<AdminCommand, AdminError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            return Err(AdminError::new("unknown_command", "empty command; try `help`"));
        };
        let (args, expect_gen) = take_expect_gen(args)?;
        let no_args = |cmd: AdminCommand| {
            if args.is_empty() {
                Ok(cmd)
            } else {
                Err(AdminError::bad_argument(format!("`{verb}` takes no arguments")))
            }
        };
        match verb {
            "status" => no_args(AdminCommand::Status),
            "help" => no_args(AdminCommand::Help),
            "weight" => match args {
                [p] => parse_percent_bp(p)
                    .map(|green_bp| AdminCommand::Weight { green_bp, expect_gen })
                    .map_err(|e| AdminError::bad_argument(format!("weight: {e}"))),
                _ => Err(AdminError::bad_argument("usage: weight PERCENT [expect-gen N]")),
            },
            other => Err(AdminError::new("unknown_command", format!("unknown command `{other}`; try `help`"))),
        }
    }

    /// Whether the command changes state (and so needs admin rights and an audit line).
    pub fn is_mutation(&self) -> bool {
        matches!(self, AdminCommand::Weight { .. })
    }
}

/// Splits off a trailing `expect-gen N`.
fn take_expect_gen<'a, 'b>(args: &'b [&'a str]) -> Result<(&'b [&'a str], Option<u64>), AdminError> {
    match args {
        [rest @ .., "expect-gen", n] => n
            .parse::<u64>()
            .map(|g| (rest, Some(g)))
            .map_err(|_| AdminError::bad_argument(format!("expect-gen takes a generation number, got `{n}`"))),
        [.., "expect-gen"] => Err(AdminError::bad_argument("expect-gen needs a generation number")),
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
            Ok(AdminCommand::Weight { green_bp: 1000, expect_gen: None })
        );
        assert_eq!(
            AdminCommand::parse("weight 0.5 expect-gen 7"),
            Ok(AdminCommand::Weight { green_bp: 50, expect_gen: Some(7) })
        );
    }

    #[test]
    fn refuses_bad_input_with_codes() {
        assert_eq!(AdminCommand::parse("frobnicate").map_err(|e| e.code), Err("unknown_command"));
        assert_eq!(AdminCommand::parse("").map_err(|e| e.code), Err("unknown_command"));
        for bad in ["weight", "weight 101", "weight 12.345", "weight x", "weight 5 expect-gen", "status now"] {
            assert_eq!(AdminCommand::parse(bad).map_err(|e| e.code), Err("bad_argument"), "{bad}");
        }
    }
}
