//! `switchyard ctl` and the runbook scripts against a running in-process daemon: every
//! command, JSON output off a terminal, the exit-code table, `watch`, and the scripts.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

async fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("command hung")
        .unwrap()
}

/// `switchyard ctl --socket S words...`: exit code and the parsed last stdout line.
async fn ctl(socket: &Path, words: &[&str]) -> (i32, Value) {
    let mut cmd = Command::new(BIN);
    cmd.arg("ctl").arg("--socket").arg(socket).args(words);
    parse(output(cmd).await)
}

fn parse(out: Output) -> (i32, Value) {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON lines ({e}): {stdout:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_runs_every_command_and_prints_json_lines_off_a_terminal() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let s = &p.socket;
    let (code, v) = ctl(s, &["status"]).await;
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    let g = v["generation"].as_u64().unwrap();
    let (code, v) = ctl(s, &["--json", "help"]).await;
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    // Green's backend, at 0%: disabling blue's only backend while blue has every request
    // would let failover publish a generation of its own between two commands.
    let backend = green.addr.to_string();
    let steps: [(&[&str], f64); 8] = [
        (&["weight", "12.5"], 12.5),
        (&["rollback", "to", "green"], 100.0),
        (&["rollback"], 0.0),
        (&["pool", "green", "drain"], 0.0),
        (&["pool", "green", "ready"], 0.0),
        (&["backend", "green", &backend, "disable"], 0.0),
        (&["backend", "green", &backend, "enable"], 0.0),
        (&["reload"], 0.0),
    ];
    for (i, (words, green_percent)) in steps.iter().enumerate() {
        let (code, v) = ctl(s, words).await;
        assert_eq!(code, 0, "{words:?}: {v}");
        assert_eq!(v["green_percent"], *green_percent, "{words:?}: {v}");
        assert_eq!(
            v["generation"],
            g + 1 + i as u64,
            "{words:?}: one generation per command"
        );
    }
    // `weight 33 expect-gen G` with the current generation applies.
    let (code, v) = ctl(s, &["weight", "33", "expect-gen", &(g + 8).to_string()]).await;
    assert_eq!((code, v["green_percent"].as_f64()), (0, Some(33.0)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_exit_codes_follow_the_design_table() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let s = &p.socket;
    let (code, v) = ctl(s, &["weight", "10", "expect-gen", "999"]).await;
    assert_eq!((code, v["error"]["code"].as_str()), (7, Some("conflict")));
    let (code, v) = ctl(s, &["weight", "101"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("bad_argument"))
    );
    let (code, v) = ctl(s, &["launch", "rockets"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("unknown_command"))
    );
    let (code, v) = ctl(&p.dir.path().join("nope.sock"), &["status"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (2, Some("unreachable"))
    );
    // A newline inside an argument would smuggle a second command: refused locally.
    let (code, _) = ctl(s, &["status\nweight 100"]).await;
    assert_eq!(code, 1);
    // Usage errors (no command) exit 1, not clap's 2.
    let mut cmd = Command::new(BIN);
    cmd.args(["ctl", "--socket"]).arg(s);
    assert_eq!(output(cmd).await.status.code(), Some(1));
    let mut cmd = Command::new(BIN);
    cmd.args(["ctl", "--help"]);
    assert_eq!(output(cmd).await.status.code(), Some(0));
    assert_eq!(
        p.admin("status").await["green_percent"],
        0.0,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_permission_denied_exits_2() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (uid, _) = own_ids();
    let keys = format!("admin_uids = [4242]\nreadonly_uids = [{uid}]");
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", &keys, true).await;
    let (code, v) = ctl(&p.socket, &["weight", "10"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (2, Some("permission_denied"))
    );
    let (code, _) = ctl(&p.socket, &["status"]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_watch_streams_events() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let mut child = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&p.socket)
        .arg("watch")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next().await["watching"], true);
    assert_eq!(p.admin("weight 9").await["ok"], true);
    let event = next().await;
    assert_eq!(
        (event["event"].as_str(), event["green_percent"].as_f64()),
        (Some("route"), Some(9.0)),
        "{event}"
    );
    child.kill().await.unwrap();
}

fn script(name: &str) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let mut cmd = Command::new(path);
    cmd.env("SWITCHYARD_BIN", BIN)
        .env_remove("SWITCHYARD_SOCKET");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_scripts_move_weights_and_roll_back() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let sock = p.socket.to_str().unwrap();

    let mut cmd = script("load-balancer-switch.sh");
    cmd.args(["--green-percentage", "30", "--socket", sock]);
    let (code, v) = parse(output(cmd).await);
    assert_eq!((code, v["green_percent"].as_f64()), (0, Some(30.0)), "{v}");
    assert_eq!(p.admin("status").await["green_percent"], 30.0);

    // The socket also comes from $SWITCHYARD_SOCKET.
    let mut cmd = script("load-balancer-switch.sh");
    cmd.args(["--green-percentage", "0.5"])
        .env("SWITCHYARD_SOCKET", sock);
    assert_eq!(parse(output(cmd).await).0, 0);
    assert_eq!(p.admin("status").await["green_percent"], 0.5);

    for (target, green_percent) in [
        ("green", 100.0),
        ("blue", 0.0),
        ("green", 100.0),
        ("stable", 0.0),
    ] {
        let mut cmd = script("emergency-rollback.sh");
        cmd.args(["--target", target, "--socket", sock]);
        let (code, v) = parse(output(cmd).await);
        assert_eq!(
            (code, v["green_percent"].as_f64()),
            (0, Some(green_percent)),
            "--target {target}: {v}"
        );
    }

    // Exit codes pass through.
    let mut cmd = script("load-balancer-switch.sh");
    cmd.args(["--green-percentage", "101", "--socket", sock]);
    assert_eq!(output(cmd).await.status.code(), Some(1));
    let mut cmd = script("load-balancer-switch.sh");
    cmd.args([
        "--green-percentage",
        "5",
        "--expect-gen",
        "1",
        "--socket",
        sock,
    ]);
    assert_eq!(output(cmd).await.status.code(), Some(7));
    let mut cmd = script("emergency-rollback.sh");
    cmd.args([
        "--target",
        "blue",
        "--socket",
        p.dir.path().join("gone.sock").to_str().unwrap(),
    ]);
    assert_eq!(output(cmd).await.status.code(), Some(2));
    let mut cmd = script("emergency-rollback.sh");
    cmd.args(["--target", "purple", "--socket", sock]);
    assert_eq!(output(cmd).await.status.code(), Some(1));
    for name in ["load-balancer-switch.sh", "emergency-rollback.sh"] {
        let mut cmd = script(name);
        cmd.arg("--help");
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
    assert_eq!(p.admin("status").await["green_percent"], 0.0);
}
