//! Persisted state: kill -9 and restart resumes the weights and the generation; a change of
//! the config's pools makes the config win (and the log says so); pool states, disabled
//! backends and the rollout record survive a restart; a corrupt file does not stop a start.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;

use serde_json::{json, Value};
use switchyard::config::Config;
use switchyard::control::{Actor, Control};
use switchyard::Switchyard;
use tokio_util::sync::CancellationToken;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn write_config(dir: &Path, blue: &[SocketAddr], green: &[SocketAddr]) -> std::path::PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config_text(dir, blue, green, "")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_weight_37_restores_it_and_a_pool_change_makes_the_config_win() {
    let (blue, green, green2) = (
        upstream("blue").await,
        upstream("green").await,
        upstream("green2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[blue.addr], &[green.addr]);
    let socket = dir.path().join("admin.sock");

    let mut first = Daemon::start(BIN, &config).await;
    let r = admin_at(&socket, "weight 37").await;
    assert_eq!(r["ok"], true, "{r}");
    let generation = r["generation"].as_u64().unwrap();
    first.kill9();

    let mut second = Daemon::start(BIN, &config).await;
    let s = admin_at(&socket, "status").await;
    assert_eq!(
        (s["green_percent"].as_f64(), s["generation"].as_u64()),
        (Some(37.0), Some(generation)),
        "{s}"
    );
    assert!(second.log().contains("state wins"), "{}", second.log());
    let (status, _, _) = send(&client(), get(&format!("http://{}/", second.addr))).await;
    assert_eq!(status, 200, "the restarted daemon serves");
    second.kill9();

    write_config(dir.path(), &[blue.addr], &[green.addr, green2.addr]);
    let third = Daemon::start(BIN, &config).await;
    let s = admin_at(&socket, "status").await;
    assert_eq!(s["green_percent"], 0.0, "the config's split wins: {s}");
    assert_eq!(
        s["generation"],
        generation + 1,
        "generations keep increasing"
    );
    assert_eq!(s["pools"]["green"]["backends"].as_array().unwrap().len(), 2);
    let log = third.log();
    assert!(
        log.contains("config wins") && log.contains("pools changed"),
        "{log}"
    );
}

/// An in-process daemon on `dir` (its config written there), stopped when the token drops.
async fn start(
    dir: &Path,
    blue: &[SocketAddr],
    green: &[SocketAddr],
) -> (DropCancel, std::path::PathBuf, Arc<Control>) {
    let cfg = Config::load(&write_config(dir, blue, green)).unwrap();
    let server = Switchyard::bind(cfg).await.unwrap();
    let control = server.control();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { server.run(t).await.unwrap() });
    let stop = DropCancel(token);
    // Keep the task detached; the socket answering is what the tests wait for.
    drop(task);
    (stop, dir.join("admin.sock"), control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_states_disabled_backends_and_the_rollout_record_survive_a_restart() {
    let (b1, b2, green) = (
        upstream("blue").await,
        upstream("blue2").await,
        upstream("green").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let (stop, socket, control) = start(dir.path(), &[b1.addr, b2.addr], &[green.addr]).await;
    let record = json!({ "phase": "progressing", "step": 1 });
    control
        .persist_rollout(
            &Actor::internal("controller"),
            "rollout test",
            record.clone(),
        )
        .unwrap();
    for line in [
        "weight 12.34".to_string(),
        "pool green drain".into(),
        format!("backend blue {} disable", b2.addr),
    ] {
        assert_eq!(admin_at(&socket, &line).await["ok"], true, "{line}");
    }
    let before = admin_at(&socket, "status").await;
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["green_bp"], 1234);
    assert_eq!(saved["generation"], before["generation"]);
    assert_eq!(saved["states"]["green"], "drain");
    assert_eq!(saved["disabled_backends"][0]["addr"], b2.addr.to_string());
    assert_eq!(saved["stable"], "blue");
    assert_eq!(saved["rollout"], record);
    assert!(saved["pools_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fnv1a64:"));
    drop(stop);
    wait_for(
        "the first daemon to remove its socket",
        std::time::Duration::from_secs(5),
        || async { !socket.exists() },
    )
    .await;

    let (_stop, socket, control) = start(dir.path(), &[b2.addr, b1.addr], &[green.addr]).await;
    assert_eq!(control.restored_rollout(), record);
    let after = admin_at(&socket, "status").await;
    assert_eq!(
        after["generation"], before["generation"],
        "reordering backends is not a pool change"
    );
    assert_eq!(after["green_percent"], 12.34);
    assert_eq!(after["rollout"], record, "status shows the restored record");
    assert_eq!(after["pools"]["green"]["state"], "drain");
    let disabled: Vec<&Value> = after["pools"]["blue"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["enabled"] == false)
        .collect();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["addr"], b2.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_ignored_and_replaced() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.json"),
        b"{\"version\":1,\"generation\":",
    )
    .unwrap();
    let (_stop, socket, _control) = start(dir.path(), &[blue.addr], &[green.addr]).await;
    let s = admin_at(&socket, "status").await;
    assert_eq!(s["ok"], true);
    assert_eq!(s["green_percent"], 0.0);
    assert_eq!(admin_at(&socket, "weight 3").await["ok"], true);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["green_bp"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let (_stop, socket, _control) = start(dir.path(), &[blue.addr], &[green.addr]).await;
    assert_eq!(admin_at(&socket, "weight 5").await["ok"], true);
    let cfg = Config::load(&dir.path().join("switchyard.toml")).unwrap();
    let err = Switchyard::bind(cfg)
        .await
        .err()
        .expect("the socket is taken");
    assert!(
        err.to_string().contains("another switchyard daemon"),
        "{err}"
    );
    let s = admin_at(&socket, "status").await;
    assert_eq!(
        s["green_percent"], 5.0,
        "the running daemon and its state are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_applied_and_says_so() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    // A directory where the state file should be: every save fails.
    std::fs::create_dir(dir.path().join("state.json")).unwrap();
    let (_stop, socket, _control) = start(dir.path(), &[blue.addr], &[green.addr]).await;
    let r = admin_at(&socket, "rollback to green").await;
    assert_eq!(
        (r["ok"].as_bool(), r["green_percent"].as_f64()),
        (Some(true), Some(100.0)),
        "{r}"
    );
    assert!(r["warning"].as_str().unwrap().contains("not saved"), "{r}");
}
