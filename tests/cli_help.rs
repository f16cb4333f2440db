//! Every subcommand explains itself: a one-line purpose and an example in `--help`; shell
//! completions for bash, zsh and fish.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_subcommand_has_a_purpose_and_an_example() {
    for sub in ["run", "check", "ctl", "demo", "simulate", "completions"] {
        let (code, text) = run(&[sub, "--help"]);
        assert_eq!(code, Some(0), "{sub} --help");
        let purpose = text.lines().next().unwrap_or_default();
        assert!(
            !purpose.trim().is_empty() && purpose.len() <= 100,
            "{sub}: purpose line {purpose:?}"
        );
        assert!(
            text.contains("Example"),
            "{sub} --help has no example:\n{text}"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, text) = run(&["completions", shell]);
        assert_eq!(code, Some(0));
        assert!(
            text.contains("switchyard") && text.contains("ctl") && text.contains("demo"),
            "{shell}"
        );
    }
}

#[test]
fn ctl_help_lists_every_verb_and_its_options_without_a_daemon() {
    let (code, text) = run(&["ctl", "--help"]);
    assert_eq!(code, Some(0));
    for (usage, _) in switchyard::control::command::VERBS {
        assert!(text.contains(usage), "ctl --help lacks {usage:?}:\n{text}");
    }
    for option in [
        "--wait",
        "--timeout",
        "--to",
        "--steps",
        "--hold",
        "expect-gen",
    ] {
        assert!(text.contains(option), "ctl --help lacks {option}:\n{text}");
    }
    // `ctl help` answers from the binary: no socket is reached.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let (code, text) = run(&["ctl", "--socket", missing.to_str().unwrap(), "help"]);
    assert_eq!(code, Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["commands"].as_array().unwrap().len(),
        switchyard::control::command::VERBS.len()
    );
}
