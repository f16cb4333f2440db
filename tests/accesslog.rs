//! The access log: every line is one JSON object with every field; after the file is
//! renamed and the daemon gets SIGUSR1, new lines go to a new file and none are lost in
//! between; and a writer that cannot write never holds a request up: its lines are
//! dropped and counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} of {n} lines in {}",
            lines.len(),
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIELDS: [&str; 21] = [
    "time",
    "client",
    "method",
    "path",
    "host",
    "user_agent",
    "status",
    "pool",
    "backend",
    "generation",
    "bytes_in",
    "bytes_out",
    "upstream_ms",
    "total_ms",
    "hash_request",
    "hash_response",
    "request_id",
    "rate_limit",
    "proto",
    "error",
    "complete",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_json_with_every_field() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let sections = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.rate_limit]\nrequests = 3\nperiod = \"1m\"\n\
         [access_log]\npath = \"{}\"\n",
        log.display()
    );
    let p = proxy(&blue, &green, &sections).await;
    let c = client();
    let mut first = get(&p.url("/a/b?token=secret"));
    first.headers_mut().insert(
        "user-agent",
        http::HeaderValue::from_static("probe/1.0 \"x\""),
    );
    assert_eq!(send(&c, first).await.0, 200);
    let upload = http::Request::post(p.url("/upload"))
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(send(&c, upload).await.0, 200);
    let no_hash = http::Request::get(p.url("/nohash"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, no_hash).await.0, 403);
    assert_eq!(send(&c, get(&p.url("/limited"))).await.0, 429);

    let lines = wait_lines(&log, 4).await;
    for l in &lines {
        let mut keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        let mut fields = FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields, "{l}");
        assert_eq!(l["client"], "127.0.0.1");
        assert_eq!(l["proto"], "http");
        assert_eq!(l["complete"], true);
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        assert!(l["total_ms"].as_f64().unwrap() >= 0.0);
        assert!(l["request_id"].as_str().unwrap().len() == 36);
    }
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}"))
    };
    let ok = by_path("/a/b");
    assert_eq!(
        (ok["method"].as_str(), ok["status"].as_u64()),
        (Some("GET"), Some(200))
    );
    assert_eq!(
        (ok["pool"].as_str(), ok["backend"].as_str()),
        (Some("blue"), Some(blue.addr.to_string().as_str()))
    );
    assert_eq!(
        (ok["bytes_in"].as_u64(), ok["bytes_out"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(ok["generation"], 1);
    assert_eq!(ok["host"], p.addr.to_string());
    assert_eq!(ok["user_agent"], "probe/1.0 \"x\"");
    assert_eq!(by_path("/upload")["user_agent"], serde_json::Value::Null);
    assert!(ok["upstream_ms"].as_f64().unwrap() <= ok["total_ms"].as_f64().unwrap());
    assert_eq!(
        (ok["hash_request"].as_str(), ok["hash_response"].as_str()),
        (Some("ok"), Some("ok"))
    );
    assert_eq!(
        (ok["rate_limit"].as_str(), ok["error"].is_null()),
        (Some("pass"), true)
    );
    let up = by_path("/upload");
    assert_eq!(
        (up["bytes_in"].as_u64(), up["bytes_out"].as_u64()),
        (Some(5), Some(1))
    );
    let refused = by_path("/nohash");
    assert_eq!(
        (refused["status"].as_u64(), refused["hash_request"].as_str()),
        (Some(403), Some("missing"))
    );
    assert_eq!(
        (refused["pool"].is_null(), refused["upstream_ms"].is_null()),
        (true, true)
    );
    assert_eq!(refused["error"], "constitutional_hash");
    let limited = by_path("/limited");
    assert_eq!(
        (limited["status"].as_u64(), limited["rate_limit"].as_str()),
        (Some(429), Some("limited"))
    );
}

/// Sends requests over one keep-alive connection until `stop`; counts the 200s.
fn keep_sending(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        while !stop.load(SeqCst) {
            let (status, _, _) = send(&c, get(&format!("http://{addr}/"))).await;
            assert_eq!(status, 200);
            sent.fetch_add(1, SeqCst);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_a_rename_moves_new_lines_to_a_new_file_and_loses_none() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let text = config_text(
        dir.path(),
        &[blue.addr],
        &[green.addr],
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    );
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, text).unwrap();
    let mut d = common::daemon::start(&config, &dir.path().join("admin.sock"));

    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let senders: Vec<_> = (0..2)
        .map(|_| keep_sending(d.addr, stop.clone(), sent.clone()))
        .collect();
    wait_lines(&log, 50).await;
    // What logrotate does: rename, then signal. Traffic keeps flowing throughout.
    std::fs::rename(&log, &rotated).unwrap();
    d.signal("USR1");
    d.wait_log("reopening the access log", Duration::from_secs(5));
    wait_lines(&log, 50).await;
    stop.store(true, SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    let total = sent.load(SeqCst);
    let count = |p: &PathBuf| read_lines(p).len();
    let start = Instant::now();
    while count(&rotated) + count(&log) < total {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "lines lost: {} + {} of {total}",
            count(&rotated),
            count(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (old, new) = (count(&rotated), count(&log));
    assert_eq!(old + new, total, "every request has exactly one line");
    assert!(old >= 50 && new >= 50, "old {old}, new {new}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_writer_drops_and_counts_lines_and_requests_keep_flowing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that opens the FIFO and never reads: the writer fills the pipe, then blocks.
    let reader_path = fifo.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(reader_path).unwrap();
        held_tx.send(f).unwrap();
    });
    let sections = format!("[access_log]\npath = \"{}\"\nqueue = 16\n", fifo.display());
    let p = proxy(&blue, &green, &sections).await;
    let _reader = held_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let started = Instant::now();
    let tasks = (0..4).map(|_| {
        let url = p.url("/");
        tokio::spawn(async move {
            let c = client();
            for _ in 0..400 {
                assert_eq!(send(&c, get(&url)).await.0, 200);
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited for the log writer"
    );
    let m = p.metrics().await;
    let dropped = metric(
        &m,
        r#"switchyard_access_log_dropped_total{reason="queue_full"}"#,
    );
    // The pipe (64 KiB), the writer's buffer (64 KiB) and the queue hold a few hundred lines.
    assert!(dropped >= 800.0, "only {dropped} of 1600 lines dropped");
}
