//! The rollout from the operator's side: a kill -9 mid-rollout and a restart (the real
//! binary), and `switchyard ctl` refusals and `--wait` exit codes (acceptance 8 and 9).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use common::rollout::{ctl, rollout_toml};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Acceptance 8: kill -9 during a rollout, restart: paused (restarted) at the same weight,
/// and `rollout resume` carries on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_comes_back_paused_at_the_same_weight() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let toml = rollout_toml(&[("hold", "\"60s\""), ("max_hold", "\"60s\"")]);
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        config_text(dir.path(), &[blue.addr], &[green.addr], &toml),
    )
    .unwrap();
    let socket = dir.path().join("admin.sock");

    let mut first = daemon::start(&path, &socket);
    let started = admin_at(&socket, "rollout start to green steps 25,100").await;
    assert_eq!(started["ok"], true, "{started}");
    let before = admin_at(&socket, "rollout status").await;
    assert_eq!(before["rollout"]["phase"], "progressing", "{before}");
    first.signal("KILL");
    assert_eq!(first.wait_exit(WAIT), None, "killed by a signal");
    drop(first);

    let _second = daemon::start(&path, &socket);
    let after = admin_at(&socket, "rollout status").await;
    let r = &after["rollout"];
    assert_eq!(
        (r["phase"].as_str(), r["reason"].as_str()),
        (Some("paused"), Some("restarted")),
        "{after}"
    );
    assert_eq!(
        (
            r["id"].clone(),
            r["step"].as_u64(),
            r["candidate_percent"].as_f64()
        ),
        (before["rollout"]["id"].clone(), Some(0), Some(25.0))
    );
    assert_eq!(admin_at(&socket, "status").await["green_percent"], 25.0);
    let resumed = admin_at(&socket, "rollout resume").await;
    assert_eq!(resumed["rollout"]["phase"], "progressing", "{resumed}");
    assert_eq!(resumed["green_percent"], 25.0, "{resumed}");
}

/// Acceptance 9: `promote` while idle → exit 8; a second `start` → exit 7; `abort` → the
/// client waiting on the rollout exits 4. Also: a manual weight while progressing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_refusals_and_an_abort_map_to_exit_codes_7_8_and_4() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let toml = rollout_toml(&[("hold", "\"60s\""), ("max_hold", "\"60s\"")]);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let s = &p.socket;

    let (code, v, _) = ctl(s, &["rollout", "promote"], WAIT).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (8, Some("invalid_transition")),
        "{v}"
    );
    let (code, v, out) = ctl(s, &["rollout", "status", "--wait"], WAIT).await;
    assert_eq!(
        (code, v["phase"].as_str()),
        (8, Some("idle")),
        "nothing to follow: {out}"
    );

    let (code, v, _) = ctl(s, &["rollout", "start", "--to", "green"], WAIT).await;
    assert_eq!(
        (code, v["rollout"]["phase"].as_str()),
        (0, Some("progressing")),
        "{v}"
    );
    let (code, v, _) = ctl(s, &["rollout", "start", "--to", "green"], WAIT).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (7, Some("conflict")),
        "{v}"
    );
    let (code, v, _) = ctl(s, &["rollout", "start", "--wait"], WAIT).await;
    assert_eq!(
        (code, v["exit"].as_u64(), v["error"]["code"].as_str()),
        (7, Some(7), Some("conflict")),
        "{v}"
    );
    let (code, v, _) = ctl(s, &["weight", "30"], WAIT).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (7, Some("rollout_active")),
        "{v}"
    );
    let (code, v, _) = ctl(s, &["rollout", "start", "--to", "blue"], WAIT).await;
    assert_eq!(code, 7, "a live rollout refuses any start: {v}");

    let mut waiting = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .arg("--socket")
        .arg(s)
        .args(["rollout", "status", "--wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(waiting.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("\"progressing\""), "attached: {first}");

    let (code, v, _) = ctl(s, &["rollout", "abort"], WAIT).await;
    assert_eq!(
        (code, v["rollout"]["phase"].as_str()),
        (0, Some("aborted")),
        "{v}"
    );
    let mut last = first;
    while let Some(l) = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        last = l;
    }
    let status = tokio::time::timeout(WAIT, waiting.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(4), "{last}");
    let summary: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        (summary["phase"].as_str(), summary["gate"].as_str()),
        (Some("aborted"), Some("operator")),
        "{summary}"
    );
    assert_eq!(p.admin("status").await["green_percent"], 0.0);

    let (code, v, _) = ctl(s, &["rollout", "abort"], WAIT).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (8, Some("invalid_transition")),
        "{v}"
    );
    let (code, v, _) = ctl(s, &["rollback"], WAIT).await;
    assert_eq!(
        (code, v["changed"].as_bool()),
        (0, Some(false)),
        "rollback is idempotent: {v}"
    );
}
