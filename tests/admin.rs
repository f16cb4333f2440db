//! The admin socket over a raw `UnixStream` writing plain text lines: every verb, bad
//! input, `expect-gen`, access levels, the audit log, and `watch`.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use common::*;

/// One raw admin connection.
struct Raw {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Raw {
    async fn connect(p: &TestProxy) -> Raw {
        let (read, write) = UnixStream::connect(&p.socket).await.unwrap().into_split();
        Raw {
            read: BufReader::new(read),
            write,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next line as JSON, `None` at EOF; fails after 5 s.
    async fn line(&mut self) -> Option<Value> {
        let mut s = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.read.read_line(&mut s))
            .await
            .expect("no line within 5s")
            .unwrap();
        (n > 0)
            .then(|| serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}")))
    }

    async fn cmd(&mut self, line: &str) -> Value {
        self.send(format!("{line}\n").as_bytes()).await;
        self.line()
            .await
            .expect("connection closed before the reply")
    }
}

fn assert_ok(v: &Value) {
    assert_eq!(v["ok"], true, "{v}");
}

fn assert_err(v: &Value, code: &str) {
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_over_a_raw_unix_stream() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let mut c = Raw::connect(&p).await;

    let help = c.cmd("help").await;
    assert_ok(&help);
    let usages: Vec<&str> = help["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["usage"].as_str().unwrap())
        .collect();
    for verb in [
        "status", "weight", "rollback", "pool", "backend", "reload", "watch", "help",
    ] {
        assert!(
            usages.iter().any(|u| u.starts_with(verb)),
            "help lacks {verb}: {usages:?}"
        );
    }
    assert!(help["error_codes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["code"] == "conflict"));

    let status = c.cmd("status").await;
    assert_ok(&status);
    assert_eq!(status["green_percent"], 0.0);
    assert_eq!(status["stable"], "blue");
    let g0 = status["generation"].as_u64().unwrap();

    let r = c.cmd("weight 25").await;
    assert_ok(&r);
    assert_eq!(
        (r["generation"].as_u64(), r["green_percent"].as_f64()),
        (Some(g0 + 1), Some(25.0))
    );
    assert_eq!(
        r["changes"][0],
        json!({"field": "green_percent", "old": 0.0, "new": 25.0})
    );

    let r = c.cmd("rollback to green").await;
    assert_ok(&r);
    assert_eq!(r["green_percent"], 100.0);
    let r = c.cmd("pool blue drain").await;
    assert_ok(&r);
    assert_eq!(r["states"]["blue"], "drain");
    // `rollback` returns to the stable pool (blue) and makes it ready in the same swap.
    let r = c.cmd("rollback").await;
    assert_ok(&r);
    assert_eq!(
        (r["green_percent"].as_f64(), r["states"]["blue"].as_str()),
        (Some(0.0), Some("ready"))
    );
    assert_eq!(r["changes"].as_array().unwrap().len(), 2, "{r}");
    let g = r["generation"].as_u64().unwrap();
    // Idempotent: a second rollback changes nothing and keeps the generation.
    let r = c.cmd("rollback").await;
    assert_eq!(
        (r["changed"].as_bool(), r["generation"].as_u64()),
        (Some(false), Some(g))
    );

    let addr = green.addr.to_string();
    let r = c.cmd(&format!("backend green {addr} disable")).await;
    assert_ok(&r);
    let s = c.cmd("status").await;
    assert_eq!(s["pools"]["green"]["backends"][0]["enabled"], false, "{s}");
    assert_ok(&c.cmd(&format!("backend green {addr} enable")).await);
    assert_err(
        &c.cmd("backend green 127.0.0.1:1 disable").await,
        "bad_argument",
    );

    let r = c.cmd("reload").await;
    assert_ok(&r);
    assert_eq!(r["green_percent"], 0.0, "a reload keeps the weights");

    let r = c.cmd("watch").await;
    assert_ok(&r);
    assert_eq!(r["watching"], true);
    let r2 = p.admin("weight 5").await;
    assert_ok(&r2);
    let event = c.line().await.unwrap();
    assert_eq!(event["event"], "route");
    assert_eq!(event["generation"], r2["generation"]);
    assert_eq!(event["command"], "weight 5");
    assert_eq!(event["green_percent"], 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_disable_moves_traffic_within_the_pool() {
    let (b1, b2, green) = (
        upstream("blue").await,
        upstream("blue2").await,
        upstream("green").await,
    );
    let (p, _control) = proxy_with(&[b1.addr, b2.addr], &[green.addr], "", "", false).await;
    assert_ok(&p.admin(&format!("backend blue {} disable", b1.addr)).await);
    let before = b1.hits.load(SeqCst);
    let c = client();
    for _ in 0..40 {
        let (status, _, body) = send(&c, get(&p.url("/"))).await;
        assert_eq!((status.as_u16(), &body[..]), (200, &b"blue2"[..]));
    }
    assert_eq!(
        b1.hits.load(SeqCst),
        before,
        "a disabled backend gets no new requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_and_changes_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let g0 = p.admin("status").await["generation"].clone();
    let mut c = Raw::connect(&p).await;
    for (line, code) in [
        ("frobnicate", "unknown_command"),
        ("weight", "bad_argument"),
        ("weight abc", "bad_argument"),
        ("weight 100.01", "bad_argument"),
        ("weight -1", "bad_argument"),
        ("weight 12.345", "bad_argument"),
        ("weight 10 expect-gen soon", "bad_argument"),
        ("pool blue", "bad_argument"),
        ("pool teal ready", "bad_argument"),
        ("backend green", "bad_argument"),
        ("rollback to red", "bad_argument"),
        ("status please", "bad_argument"),
    ] {
        assert_err(&c.cmd(line).await, code);
    }
    // A 1 MiB line: refused, and the same connection keeps working.
    let mut huge = vec![b'w'; 1 << 20];
    huge.push(b'\n');
    c.send(&huge).await;
    let r = c.line().await.unwrap();
    assert_err(&r, "bad_argument");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{r}"
    );
    assert_ok(&c.cmd("status").await);
    // Invalid UTF-8: refused, connection still usable.
    c.send(b"weight \xff\xfe 10\n").await;
    let r = c.line().await.unwrap();
    assert_err(&r, "bad_argument");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("UTF-8"),
        "{r}"
    );
    assert_ok(&c.cmd("help").await);

    let s = p.admin("status").await;
    assert_eq!(
        (s["generation"].clone(), s["green_percent"].as_f64()),
        (g0, Some(0.0)),
        "nothing changed"
    );
    let (status, _, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(
        (status.as_u16(), &body[..]),
        (200, &b"blue"[..]),
        "traffic still flows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_idle_limit_and_others_are_served() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        "",
        "idle_timeout = \"300ms\"",
        false,
    )
    .await;
    let mut silent = Raw::connect(&p).await;
    let mut other = Raw::connect(&p).await;
    assert_ok(&other.cmd("status").await);
    let started = std::time::Instant::now();
    let r = silent
        .line()
        .await
        .expect("an idle_timeout reply before the close");
    assert_err(&r, "idle_timeout");
    assert!(silent.line().await.is_none(), "closed after the reply");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_ok(&p.admin("weight 1").await);
    let (status, _, _) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_gen_stale_conflicts_and_current_applies() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let g = p.admin("status").await["generation"].as_u64().unwrap();
    assert_ok(&p.admin("weight 10").await);
    for stale in [
        format!("weight 50 expect-gen {g}"),
        format!("pool green maint expect-gen {g}"),
        format!("rollback to green expect-gen {g}"),
        format!("backend blue {} disable expect-gen {g}", blue.addr),
        format!("reload expect-gen {g}"),
    ] {
        let r = p.admin(&stale).await;
        assert_err(&r, "conflict");
    }
    let s = p.admin("status").await;
    assert_eq!(
        (s["generation"].as_u64(), s["green_percent"].as_f64()),
        (Some(g + 1), Some(10.0))
    );
    assert_eq!(s["pools"]["green"]["state"], "ready");
    let r = p.admin(&format!("weight 50 expect-gen {}", g + 1)).await;
    assert_ok(&r);
    assert_eq!(
        (r["generation"].as_u64(), r["green_percent"].as_f64()),
        (Some(g + 2), Some(50.0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_peer_can_read_but_not_mutate_and_is_audited() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (uid, _) = own_ids();
    let extra = format!("admin_uids = [4242]\nreadonly_uids = [{uid}]\naudit_log = \"AUDIT\"\n");
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let extra = extra.replace("AUDIT", audit.to_str().unwrap());
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", &extra, true).await;
    for line in ["weight 10", "rollback", "pool green maint", "reload"] {
        let r = p.admin(line).await;
        assert_err(&r, "permission_denied");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&uid.to_string()),
            "{r}"
        );
    }
    let s = p.admin("status").await;
    assert_ok(&s);
    assert_eq!(s["green_percent"], 0.0);
    assert_ok(&p.admin("help").await);
    let mut w = Raw::connect(&p).await;
    assert_ok(&w.cmd("watch").await);

    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "one audit line per refused mutation, none for reads: {lines:?}"
    );
    for l in &lines {
        assert_eq!(l["outcome"], "refused");
        assert_eq!(l["error"]["code"], "permission_denied");
        assert_eq!(l["actor"]["uid"], uid);
        assert_eq!(l["actor"]["pid"], std::process::id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_peer_is_denied_everything() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) =
        proxy_with(&[blue.addr], &[green.addr], "", "admin_uids = [4242]", true).await;
    for line in ["status", "weight 10", "watch"] {
        assert_err(&p.admin(line).await, "permission_denied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_has_one_line_per_mutation_with_uid_and_pid() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let extra = format!("audit_log = \"{}\"", audit.display());
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", &extra, false).await;
    let mutations = [
        "weight 20".to_string(),
        "pool green drain".into(),
        format!("backend blue {} disable", blue.addr),
        "rollback".into(),
        "reload".into(),
        "weight 30 expect-gen 1".into(), // refused: stale
        "weight 500".into(),             // refused: malformed
    ];
    let mut c = Raw::connect(&p).await;
    for m in &mutations {
        c.cmd(m).await;
    }
    c.cmd("status").await;
    c.cmd("help").await;
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), mutations.len(), "{lines:#?}");
    let (uid, _) = own_ids();
    for (l, m) in lines.iter().zip(&mutations) {
        assert_eq!(l["command"], m.as_str());
        assert_eq!(l["actor"]["uid"], uid);
        assert_eq!(l["actor"]["pid"], std::process::id());
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        assert!(l["generation"].as_u64().is_some());
    }
    assert_eq!(
        lines[0]["changes"][0],
        json!({"field": "green_percent", "old": 0.0, "new": 20.0})
    );
    assert_eq!(lines[0]["outcome"], "applied");
    assert_eq!(lines[5]["error"]["code"], "conflict");
    assert_eq!(lines[6]["error"]["code"], "bad_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_blocks_nothing_and_is_told_it_lagged() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let mut slow = Raw::connect(&p).await;
    assert_ok(&slow.cmd("watch").await);
    // Far more than the socket buffers and the event buffer hold, while nobody reads.
    let padding = "x".repeat(1024);
    for i in 0..4000 {
        control.publish_event(json!({ "event": "test", "seq": i, "padding": padding }));
    }
    let started = std::time::Instant::now();
    assert_ok(&p.admin("weight 7").await);
    assert_ok(&p.admin("status").await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "commands are not held up by a stuck watcher"
    );
    let mut saw_lag = false;
    while let Some(line) = slow.line().await {
        if line["event"] == "lagged" {
            assert!(line["missed"].as_u64().unwrap() > 0);
            saw_lag = true;
        }
        if line["event"] == "route" {
            break;
        }
    }
    assert!(saw_lag, "a lagged line before the stream went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0660_and_extra_clients_get_busy() {
    use std::os::unix::fs::PermissionsExt;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // Root is an admin here: admin peers have their own limit, and an idle one would be
    // closed to make room, so the two slots are held by `watch` streams (never closed).
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        "",
        "max_admin_clients = 2",
        false,
    )
    .await;
    let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let mut a = Raw::connect(&p).await;
    let mut b = Raw::connect(&p).await;
    assert_ok(&a.cmd("watch").await);
    assert_ok(&b.cmd("watch").await);
    let mut c = Raw::connect(&p).await;
    assert_err(&c.line().await.unwrap(), "busy");
    drop(a);
    // While the slot is still taken the server answers `busy` and hangs up, possibly
    // before reading the command: a failed exchange here only means "not yet".
    wait_for("a free admin slot", Duration::from_secs(3), || async {
        let reply = switchyard::control::admin::request(&p.socket, "weight 5").await;
        reply
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|v| v["ok"] == true)
    })
    .await;
    let event = b.line().await.unwrap();
    assert_eq!(event["event"], "route", "the watch stream goes on: {event}");
}
