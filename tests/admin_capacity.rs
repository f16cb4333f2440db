//! Admin socket capacity: a peer that is not an admin cannot keep an admin out. The
//! non-admin peer is a real other process: this test binary run again as uid 65534
//! (`hold_connections`), connecting to a socket opened to everyone (`mode = "0666"`).
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

/// Not a test on its own: the process [`hold`] starts as another uid. Connects
/// `HOLD_COUNT` times to `HOLD_SOCKET`, prints `HELD held busy refused`, and keeps the
/// connections open until its stdin closes (at most 30 s).
#[test]
#[ignore = "helper process started by the capacity tests as another uid"]
fn hold_connections() {
    use std::io::{Read, Write};
    let socket = std::env::var("HOLD_SOCKET").unwrap();
    let count: usize = std::env::var("HOLD_COUNT").unwrap().parse().unwrap();
    let (mut held, mut busy, mut denied) = (Vec::new(), 0, 0);
    for _ in 0..count {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.contains("\"busy\"") {
                    busy += 1;
                } else if text.contains("permission_denied") {
                    denied += 1;
                }
            }
            // Closed without a word: refused too (past the daemon's refusal limit).
            Ok(_) => denied += 1,
            // Nothing said within the wait: a slot is held.
            _ => held.push(s),
        }
    }
    println!("HELD {} {busy} {denied}", held.len());
    std::io::stdout().flush().unwrap();
    let started = Instant::now();
    let mut stdin = std::io::stdin();
    let mut byte = [0u8; 1];
    while started.elapsed() < Duration::from_secs(30) && matches!(stdin.read(&mut byte), Ok(1)) {}
}

/// The holder process and its stdout (kept open until the end, so it exits quietly).
struct Holder {
    child: tokio::process::Child,
    _out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _copy: Option<tempfile::TempDir>,
}

impl Holder {
    async fn stop(mut self) {
        self.child.stdin.take();
        self.child.kill().await.unwrap();
    }
}

/// Starts [`hold_connections`] as `uid` against `socket`; returns it with (held, busy,
/// refused).
async fn hold(uid: u32, socket: &std::path::Path, count: usize) -> (Holder, [u32; 3]) {
    let (exe, _copy) = executable_by_others();
    let mut child = Command::new(exe)
        .args(["--exact", "hold_connections", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("HOLD_SOCKET", socket)
        .env("HOLD_COUNT", count.to_string())
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let counts = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("holder exited early");
            // libtest may print `test hold_connections ... ` on the same line first.
            if let Some((_, rest)) = line.split_once("HELD ") {
                let n: Vec<u32> = rest.split(' ').map(|w| w.parse().unwrap()).collect();
                return [n[0], n[1], n[2]];
            }
        }
    })
    .await
    .expect("the holder reports within 30 s");
    let holder = Holder {
        child,
        _out: lines,
        _copy,
    };
    (holder, counts)
}

/// This test binary, or a copy of it in a world-readable temporary directory when another
/// uid could not reach it where it is (a checkout under a 0700 home directory).
fn executable_by_others() -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    let exe = std::env::current_exe().unwrap();
    let open = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    };
    if exe.ancestors().all(open) {
        return (exe, None);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("holder");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (copy, Some(dir))
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
