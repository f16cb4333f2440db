//! Admin socket capacity: a peer that is not an admin cannot keep an admin out. The
//! non-admin peer is real other processes: `switchyard ctl --json watch`, run as uid 65534
//! (read-only, may `watch`) or 65533 (in no list), each holding one connection to a socket
//! opened to everyone (`mode = "0666"`) for as long as it runs.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const NOBODY: u32 = 65534;

/// The `ctl watch` processes of another uid, kept running (and their stdout open) until
/// [`Holder::stop`].
struct Holder {
    children: Vec<tokio::process::Child>,
    _out: Vec<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
    _copy: Option<tempfile::TempDir>,
}

impl Holder {
    async fn stop(mut self) {
        for child in &mut self.children {
            // An exited one (busy, refused) has nothing left to kill.
            let _ = child.kill().await;
        }
    }
}

/// Starts `count` `switchyard ctl --json watch` processes as `uid` against `socket`, one
/// after another, and classifies each by its first line: a watch stream (a slot held),
/// `busy`, or refused (`permission_denied`, or closed without a word past the daemon's
/// refusal limit). Returns them with (held, busy, refused).
async fn hold(uid: u32, socket: &std::path::Path, count: usize) -> (Holder, [u32; 3]) {
    let (exe, _copy) = executable_by_others();
    let (mut children, mut outs, mut counts) = (Vec::new(), Vec::new(), [0u32; 3]);
    for _ in 0..count {
        let mut child = Command::new(&exe)
            .args(["ctl", "--json", "--socket"])
            .arg(socket)
            .arg("watch")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("ctl watch says something within 10 s")
            .unwrap()
            .unwrap_or_default();
        let slot = if first.contains("\"watching\"") {
            0
        } else if first.contains("\"busy\"") {
            1
        } else {
            2
        };
        counts[slot] += 1;
        children.push(child);
        outs.push(lines);
    }
    let holder = Holder {
        children,
        _out: outs,
        _copy,
    };
    (holder, counts)
}

/// A proxy whose socket anyone may open; uid 65534 is read-only with `max_clients = 4`.
async fn open_proxy() -> (TestProxy, Upstream, Upstream) {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        "",
        &format!("mode = \"0666\"\nreadonly_uids = [{NOBODY}]\nmax_clients = 4"),
        false,
    )
    .await;
    // The temporary directory is 0700; the other uid must reach the socket inside it.
    std::fs::set_permissions(p.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (p, blue, green)
}

async fn ctl(socket: &std::path::Path, words: &[&str]) -> (i32, Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(BIN)
            .arg("ctl")
            .arg("--socket")
            .arg(socket)
            .args(words)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ctl hung")
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(last).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peer_holding_every_slot_cannot_block_an_admin_rollback() {
    let (p, _blue, _green) = open_proxy().await;
    assert_eq!(p.admin("weight 50").await["ok"], true);
    let (holder, [held, busy, denied]) = hold(NOBODY, &p.socket, 12).await;
    assert_eq!(
        (held, busy, denied),
        (4, 8, 0),
        "the read-only peer holds its 4 slots, the rest are busy"
    );
    // Root (an admin) is not counted against the read-only limit.
    let started = Instant::now();
    let reply = p.admin("rollback").await;
    let took = started.elapsed();
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");
    assert_eq!(p.admin("status").await["green_percent"], 0.0);
    // And through `switchyard ctl`, exit 0.
    let (code, v) = ctl(&p.socket, &["rollback"]).await;
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    holder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_in_no_list_is_answered_and_disconnected_at_once() {
    let (p, _blue, _green) = open_proxy().await;
    // uid 65533 is in no list: every connection is refused at once and holds nothing.
    let (holder, [held, busy, denied]) = hold(NOBODY - 1, &p.socket, 80).await;
    assert_eq!((held, busy), (0, 0), "no slot is held ({denied} denied)");
    assert!(denied > 0);
    let (code, v) = ctl(&p.socket, &["rollback"]).await;
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    holder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admin_level_closes_its_oldest_idle_connection_for_a_new_admin() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        "",
        "max_admin_clients = 2",
        false,
    )
    .await;
    let connect = || async {
        let (r, w) = UnixStream::connect(&p.socket).await.unwrap().into_split();
        (BufReader::new(r), w)
    };
    let line = |mut r: BufReader<tokio::net::unix::OwnedReadHalf>| async move {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut s))
            .await
            .expect("a line within 5 s")
            .unwrap();
        (serde_json::from_str::<Value>(&s).ok(), r)
    };
    let (old_r, mut old_w) = connect().await;
    old_w.write_all(b"status\n").await.unwrap();
    let (v, old_r) = line(old_r).await;
    assert_eq!(v.unwrap()["ok"], true);
    let (watch_r, mut watch_w) = connect().await;
    watch_w.write_all(b"watch\n").await.unwrap();
    let (v, watch_r) = line(watch_r).await;
    assert_eq!(v.unwrap()["watching"], true);
    // Both admin slots are taken: the idle one makes room, the watch stream stays.
    let reply = p.admin("weight 7").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (closed, _) = line(old_r).await;
    assert_eq!(closed.unwrap()["error"]["code"], "idle_timeout");
    let (event, _) = line(watch_r).await;
    let event = event.unwrap();
    assert!(
        event.get("event").is_some(),
        "the watcher still streams: {event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_exits_9_when_every_admin_connection_is_streaming() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        "",
        "max_admin_clients = 1",
        false,
    )
    .await;
    let (r, mut w) = UnixStream::connect(&p.socket).await.unwrap().into_split();
    w.write_all(b"watch\n").await.unwrap();
    let mut first = String::new();
    BufReader::new(r).read_line(&mut first).await.unwrap();
    assert!(first.contains("watching"), "{first}");
    // The daemon answers `busy` and closes, maybe before reading the command: ctl still
    // reports the reply, not a broken pipe.
    let (code, v) = ctl(&p.socket, &["status"]).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (9, Some("busy")),
        "{v}"
    );
}
