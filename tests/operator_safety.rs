//! What an operator on call relies on: `weight` names its pool once green is stable, a
//! change that cannot be saved is refused (except `rollback`), a second daemon on a taken
//! port refuses to start, and every subcommand ends quietly when its reader goes away.
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
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("command hung")
        .unwrap()
}

/// `switchyard ctl --socket S words...`: exit code, last stdout line parsed, stderr.
async fn ctl(socket: &Path, words: &[&str]) -> (i32, Value, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("ctl").arg("--socket").arg(socket).args(words);
    let out = output(cmd).await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    let v = serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"));
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_names_its_pool_and_a_bare_percent_is_refused_while_green_is_stable() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    // Blue stable: the runbook's bare percent is green's share.
    let r = p.admin("weight 10").await;
    assert_eq!(
        (
            r["green_percent"].as_f64(),
            r["stable"].as_str(),
            r["candidate"].as_str()
        ),
        (Some(10.0), Some("blue"), Some("green")),
        "{r}"
    );
    let r = p.admin("weight blue 70").await;
    assert_eq!(
        (r["green_percent"].as_f64(), r["blue_percent"].as_f64()),
        (Some(30.0), Some(70.0)),
        "{r}"
    );
    // Green becomes stable.
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = p.admin("rollout promote").await;
    assert_eq!(r["ok"], true, "{r}");
    let s = p.admin("status").await;
    assert_eq!(
        (s["stable"].as_str(), s["candidate"].as_str()),
        (Some("green"), Some("blue")),
        "{s}"
    );
    let generation = s["generation"].clone();
    // A bare percent would send 95% to the old build: refused, nothing changes.
    let r = p.admin("weight 5").await;
    assert_eq!(r["error"]["code"], "ambiguous_pool", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("weight blue 5") && message.contains("weight green 5"),
        "{message}"
    );
    let s = p.admin("status").await;
    assert_eq!(
        (s["green_percent"].as_f64(), &s["generation"]),
        (Some(100.0), &generation)
    );
    let (code, v, stderr) = ctl(&p.socket, &["weight", "5"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("ambiguous_pool"))
    );
    assert!(
        stderr.contains("ambiguous"),
        "the error is on stderr too: {stderr}"
    );
    // Naming the pool works.
    let r = p.admin("weight blue 5").await;
    assert_eq!(
        (
            r["green_percent"].as_f64(),
            r["stable"].as_str(),
            r["candidate"].as_str()
        ),
        (Some(95.0), Some("green"), Some("blue")),
        "{r}"
    );
    // The runbook wrapper keeps its literal meaning: green's share.
    let out = output({
        let mut c = Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/load-balancer-switch.sh"),
        );
        c.args(["--green-percentage", "40", "--socket"])
            .arg(&p.socket)
            .env("SWITCHYARD_BIN", BIN);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(p.admin("status").await["green_percent"], 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_refused_but_rollback_applies() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    assert_eq!(p.admin("weight 20").await["persisted"], true);
    // The state file's name becomes a non-empty directory: the rename over it fails, as
    // root too (which ignores mode bits).
    let state = p.dir.path().join("state.json");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("keep"), b"x").unwrap();
    let before = p.admin("status").await;
    let r = p.admin("weight 30").await;
    assert_eq!(r["error"]["code"], "state_unwritable", "{r}");
    let (code, v, stderr) = ctl(&p.socket, &["pool", "green", "maint"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (10, Some("state_unwritable")),
        "{stderr}"
    );
    let s = p.admin("status").await;
    assert_eq!(
        (
            &s["green_percent"],
            &s["generation"],
            &s["pools"]["green"]["state"]
        ),
        (
            &before["green_percent"],
            &before["generation"],
            &before["pools"]["green"]["state"]
        ),
        "nothing changed"
    );
    assert!(s["last_state_save_failure"]["error"].is_string(), "{s}");
    // The emergency path always applies, and says it is not saved.
    let r = p.admin("rollback").await;
    assert_eq!(
        (r["ok"].as_bool(), r["persisted"].as_bool()),
        (Some(true), Some(false)),
        "{r}"
    );
    assert_eq!(p.admin("status").await["green_percent"], 0.0);
    assert!(p.gauge("switchyard_state_save_failures_total").await >= 3.0);
    // Writable again: changes save again.
    std::fs::remove_dir_all(&state).unwrap();
    let r = p.admin("weight 40").await;
    assert_eq!(
        (r["ok"].as_bool(), r["persisted"].as_bool()),
        (Some(true), Some(true)),
        "{r}"
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["green_bp"], 4000);
}

/// A config for the real daemon on `listen`, with its own admin socket and state in `dir`.
fn daemon_config(
    dir: &Path,
    listen: &str,
    blue: &Upstream,
    green: &Upstream,
) -> std::path::PathBuf {
    let text = config_text(
        dir,
        &[blue.addr],
        &[green.addr],
        &format!("[proxy]\nlisten = [\"{listen}\"]\n"),
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_taken_port_exits_1_naming_the_address_and_the_running_daemon() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let first_dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(
        BIN,
        &daemon_config(first_dir.path(), "127.0.0.1:0", &blue, &green),
    )
    .await;
    let addr = first.addr.to_string();
    let socket = first_dir.path().join("admin.sock");
    let generation = admin_at(&socket, "status").await["generation"].clone();
    // Its own socket and state, the same port: refused (the default is no SO_REUSEPORT).
    let second_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(daemon_config(second_dir.path(), &addr, &blue, &green));
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("already taken"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "names the holder: {stderr}"
    );
    // The same config (so the same admin socket): its pid and generation too.
    let mut cmd = Command::new(BIN);
    let same = daemon_config(first_dir.path(), &addr, &blue, &green);
    cmd.args(["run", "--config"]).arg(same);
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is pid {} at generation {generation}",
            first.child.id()
        )),
        "{stderr}"
    );
    // Every request still goes through the first daemon.
    let (status, _, _) = send(&client(), get(&format!("http://{addr}/"))).await;
    assert_eq!(status, 200);
}

/// Runs `switchyard args...` with stdout a pipe whose reader is already gone.
async fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> Output {
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    let writer = writer.into_blocking_fd().unwrap();
    // Not `Command::output`, which would replace stdout with a pipe of its own.
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("command hung")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_ends_quietly_when_stdout_is_closed() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let config = p.dir.path().join("switchyard.toml");
    let s = p.socket.as_os_str();
    let cases: [(&[&std::ffi::OsStr], i32); 5] = [
        (&["completions".as_ref(), "zsh".as_ref()], 0),
        (
            &["check".as_ref(), "--config".as_ref(), config.as_os_str()],
            0,
        ),
        (
            &["ctl".as_ref(), "--socket".as_ref(), s, "status".as_ref()],
            0,
        ),
        (
            &["ctl".as_ref(), "--socket".as_ref(), s, "watch".as_ref()],
            0,
        ),
        (
            &[
                "ctl".as_ref(),
                "--socket".as_ref(),
                s,
                "weight".as_ref(),
                "purple".as_ref(),
            ],
            1,
        ),
    ];
    for (args, code) in cases {
        let out = with_closed_stdout(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_when_its_reader_goes_away_even_with_no_event() {
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
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("watching"), "{first}");
    // `| grep -m1 watching`: the reader exits.
    drop(lines);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("watch exits once nobody reads its output")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_rollout_that_already_ended_says_it_is_old() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    assert_eq!(p.admin("rollout promote").await["ok"], true);
    let (code, summary, stderr) = ctl(&p.socket, &["rollout", "status", "--wait"]).await;
    assert_eq!(code, 0, "{summary} {stderr}");
    assert_eq!(
        (
            summary["phase"].as_str(),
            summary["already_ended"].as_bool()
        ),
        (Some("promoted"), Some(true)),
        "{summary}"
    );
    assert!(stderr.contains("already ended"), "{stderr}");
}
