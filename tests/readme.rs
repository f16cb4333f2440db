//! The README's CI examples, run as written against a running daemon: every
//! `switchyard ctl …` line of its YAML blocks, through `sh`, with the socket in
//! `$SWITCHYARD_SOCKET` as the examples set it. And its Quick start, the whole block, as
//! the user running the tests and (when that is root) as `nobody`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const FAST_ROLLOUT: &str = r#"
[rollout]
hold = "1s"
bake = "1s"
window = "3s"
settle = "200ms"
tick = "250ms"
[rollout.gates]
p99_max = "200ms"
p99_min_delta = "100ms"
min_requests = 40
min_latency_samples = 40
"#;

/// The shell lines of each YAML block in README.md that call `switchyard ctl`.
fn ci_examples() -> Vec<Vec<String>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (line.trim_start(), current.as_mut()) {
            ("```yaml", None) => current = Some(Vec::new()),
            ("```", Some(_)) => blocks.extend(current.take()),
            (l, Some(cmds)) if l.contains("switchyard ctl") => {
                let cmd = l
                    .trim_start_matches("- ")
                    .trim_start_matches("run: ")
                    .trim();
                cmds.push(cmd.to_string());
            }
            _ => {}
        }
    }
    blocks
        .into_iter()
        .filter(|b: &Vec<String>| !b.is_empty())
        .collect()
}

fn sh(cmd: &str, socket: &Path) -> (Option<i32>, String) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .env("PATH", path)
        .env("SWITCHYARD_SOCKET", socket)
        .env("CI_JOB_STATUS", "success")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_ci_examples_promote_a_rollout() {
    let examples = ci_examples();
    assert_eq!(
        examples.len(),
        2,
        "expected the GitHub Actions and GitLab CI examples: {examples:?}"
    );
    for commands in examples {
        assert!(
            commands
                .iter()
                .any(|c| c.contains("rollout start") && c.contains("--wait")),
            "{commands:?}"
        );
        let (blue, green) = (upstream("blue").await, upstream("green").await);
        let p = proxy(&blue, &green, FAST_ROLLOUT).await;
        // Client traffic for the gates to judge, bounded in time.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (url, stop) = (p.url("/"), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    send(&c, get(&url)).await;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        for cmd in &commands {
            let socket = p.socket.clone();
            let c = cmd.clone();
            let (code, stdout) = tokio::task::spawn_blocking(move || sh(&c, &socket))
                .await
                .unwrap();
            assert_eq!(code, Some(0), "`{cmd}` failed:\n{stdout}");
            if cmd.contains("rollout start") {
                let last: serde_json::Value =
                    serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
                assert_eq!(last["phase"], "promoted", "{stdout}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        let status = p.admin("status").await;
        assert_eq!(status["stable"], "green", "{status}");
    }
}

/// The shell block under "## Quick start" in README.md, as written.
fn quick_start() -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = text
        .split_once("\n## Quick start\n")
        .expect("README.md has a Quick start")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the Quick start has a sh block")
        .1;
    block.split_once("\n```").unwrap().0.to_string()
}

/// A port free on loopback right now (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the Quick start through `sh -e` (so a failing command fails the test) with three
/// changes, each for the test's sake: its fixed ports become free ones (tests never use
/// fixed ports), `cargo build --release` is left out and `target/release` is this build's
/// binary directory (the test's binary is that build; a release build would take minutes).
/// `as_user` runs it under another uid (setpriv). Returns stdout.
fn run_quick_start(as_user: Option<(u32, u32)>) -> String {
    // Another user may not be allowed into the checkout (a clone under a private
    // directory): the block runs a copy of this build then.
    let (exe, _copy) = executable_by_others();
    let bin_dir = exe.parent().unwrap().to_path_buf();
    let mut script = quick_start();
    assert!(script.contains("cargo build --release\n"), "{script}");
    script = script.replace("cargo build --release\n", "");
    assert!(script.contains("$PWD/target/release"), "{script}");
    script = script.replace("$PWD/target/release", &bin_dir.display().to_string());
    for port in ["8080", "9001", "9011", "9901"] {
        assert!(script.contains(&format!("127.0.0.1:{port}")), "{port}");
        script = script.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let mut cmd = match as_user {
        Some((uid, gid)) => {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .args(["sh", "-ec", &script]);
            c
        }
        None => {
            let mut c = std::process::Command::new("sh");
            c.args(["-ec", &script]);
            c
        }
    };
    // Its own process group: whatever it started in the background can be stopped by this
    // group id if the script fails half-way.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // `mktemp -d` makes $DIR in here, so that the daemon's and the backends' logs can be
    // shown if the block fails; open to the other user too (sticky, like /tmp).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let logs = || {
        let mut all = String::new();
        for dir in std::fs::read_dir(tmp.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.path().extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                    all.push_str(&format!("--- {}\n{text}\n", f.path().display()));
                }
            }
        }
        all
    };
    let child = cmd
        .current_dir(tmp.path())
        .env("TMPDIR", tmp.path())
        .env_remove("SWITCHYARD_SOCKET")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pgid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // A command failed half-way (sh -e) and what it started in the background still
            // holds the output pipes, or something hangs: stop the group, show what it said.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let said = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(Result::ok)
                .map(|o| {
                    format!(
                        "{}\n{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            panic!(
                "the Quick start did not finish within 60 s:\n{said}\n{}",
                logs()
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
        panic!(
            "the Quick start failed ({:?}):\n{stdout}\n{stderr}\n{}",
            out.status,
            logs()
        );
    }
    stdout
}

fn check_quick_start_output(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        json.iter().any(|v| v["ready"] == true),
        "/ready never said ready:\n{stdout}"
    );
    let blue = lines.iter().position(|&l| l == "blue");
    let green = lines.iter().position(|&l| l == "green");
    assert!(
        blue.is_some() && green.is_some() && blue < green,
        "blue, then green after `weight 100`:\n{stdout}"
    );
    // `ctl` lines (stdout is not a terminal): one JSON reply each, all ok.
    let replies: Vec<&serde_json::Value> = json.iter().filter(|v| v.get("ok").is_some()).collect();
    assert_eq!(replies.len(), 3, "status, weight, rollback:\n{stdout}");
    assert!(replies.iter().all(|r| r["ok"] == true), "{stdout}");
    assert_eq!(replies[1]["green_percent"], 100.0, "weight 100: {stdout}");
    assert_eq!(
        replies[2]["green_percent"], 0.0,
        "rollback to blue: {stdout}"
    );
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    check_quick_start_output(&run_quick_start(None));
}

/// The same block as a user with no rights anywhere but its own temporary directory.
#[test]
fn the_readme_quick_start_runs_as_a_normal_user() {
    if own_ids().0 != 0 {
        // Not root: the test above already ran it as a normal user.
        return;
    }
    check_quick_start_output(&run_quick_start(Some((65534, 65534))));
}
