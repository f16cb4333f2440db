//! Zero-downtime restart (acceptance 6): while a client keeps 16 connections busy, a second
//! `switchyard run --takeover` takes the listening sockets, admin socket and state over from
//! the first, the first gets SIGTERM and exits 0 — and no connection is refused and no
//! request fails. The sockets are handed over (SCM_RIGHTS), so the two processes share one
//! accept queue: nothing queued is reset when the old one closes its copy.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A `switchyard run` child; killed (by its pid) if still running when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(config: &Path, takeover: bool) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["run", "--config"]).arg(config);
        if takeover {
            cmd.arg("--takeover");
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            // These helpers read the text form (`addr=`); JSON lines are tested in tests/notify.rs.
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_log(&mut self, needle: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_default();
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no log line with {needle:?} within {deadline:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn addr(&mut self) -> SocketAddr {
        let line = self.wait_log("proxy listening", Duration::from_secs(20));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                start.elapsed() < deadline,
                "process did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// 16 connections kept busy: each task sends one request after another on its own
/// keep-alive client until `stop`, counting successes and recording every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load(addr: SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..16)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tokio::spawn(async move {
                let c = client();
                let url = format!("http://{addr}/?sleep_ms=2");
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(SeqCst) && Instant::now() < deadline {
                    let sent =
                        tokio::time::timeout(Duration::from_secs(10), c.request(get(&url))).await;
                    match sent {
                        Ok(Ok(resp)) if resp.status() == 200 => {
                            use http_body_util::BodyExt;
                            match resp.into_body().collect().await {
                                Ok(_) => ok.fetch_add(1, SeqCst),
                                Err(e) => {
                                    failures.lock().unwrap().push(format!("body: {e}"));
                                    0
                                }
                            };
                        }
                        Ok(Ok(resp)) => failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", resp.status())),
                        Ok(Err(e)) => failures.lock().unwrap().push(format!("request: {e:?}")),
                        Err(_) => failures.lock().unwrap().push("request timed out".into()),
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failures,
        tasks,
    }
}

impl Load {
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_process_takes_over_under_load_and_no_request_fails() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &[blue.addr], &[green.addr], ""),
    )
    .unwrap();
    let socket = dir.path().join("admin.sock");

    let mut a = tokio::task::block_in_place(|| {
        let mut a = Proc::start(&config, false);
        let addr = a.addr();
        (a, addr)
    });
    let addr = a.1;
    // A route change before the restart: the successor must come up with it.
    assert_eq!(admin_at(&socket, "weight 25").await["ok"], true);
    let traffic = load(addr);
    let ok = traffic.ok.clone();
    wait_for(
        "traffic through the first process",
        Duration::from_secs(10),
        || {
            let ok = ok.clone();
            async move { ok.load(SeqCst) > 200 }
        },
    )
    .await;

    // B takes over: same sockets, same port.
    let mut b = tokio::task::block_in_place(|| Proc::start(&config, true));
    let b_addr = tokio::task::block_in_place(|| b.addr());
    assert_eq!(
        b_addr, addr,
        "the successor does not serve the handed-over socket"
    );
    tokio::task::block_in_place(|| b.wait_log("took over", Duration::from_secs(20)));
    let status = admin_at(&socket, "status").await;
    assert_eq!(
        status["superseded_by"],
        serde_json::Value::Null,
        "the admin socket is not the successor's: {status}"
    );
    assert_eq!(
        status["green_percent"], 25.0,
        "the successor lost the route table: {status}"
    );
    let before_term = ok.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A drains and exits while the load goes on.
    a.0.signal("TERM");
    let code = tokio::task::block_in_place(|| a.0.wait_exit(Duration::from_secs(20)));
    assert_eq!(code, Some(0));
    let at_exit = ok.load(SeqCst);
    wait_for(
        "traffic through the successor alone",
        Duration::from_secs(10),
        || {
            let ok = ok.clone();
            async move { ok.load(SeqCst) > at_exit + 200 }
        },
    )
    .await;
    let (done, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        done + failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(done > before_term, "no traffic after the takeover");

    // The old process left the successor's admin socket in place.
    let status = admin_at(&socket, "status").await;
    assert_eq!(status["ok"], true);
    b.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| b.wait_exit(Duration::from_secs(20))),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_without_a_running_daemon_starts_afresh_and_a_second_plain_start_is_refused() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &[blue.addr], &[green.addr], ""),
    )
    .unwrap();
    let mut a = tokio::task::block_in_place(|| Proc::start(&config, true));
    let addr = tokio::task::block_in_place(|| a.addr());
    tokio::task::block_in_place(|| {
        a.wait_log(
            "no daemon answers on the admin socket",
            Duration::from_secs(5),
        )
    });
    let (status, _, _) = send(&client(), get(&format!("http://{addr}/"))).await;
    assert_eq!(status, 200);
    // Without --takeover, a second daemon on the live admin socket refuses and says how.
    let mut second = tokio::task::block_in_place(|| Proc::start(&config, false));
    let code = tokio::task::block_in_place(|| second.wait_exit(Duration::from_secs(20)));
    assert_eq!(code, Some(1));
    let why = tokio::task::block_in_place(|| second.wait_log("--takeover", Duration::from_secs(5)));
    assert!(why.contains("another switchyard daemon"), "{why}");
    a.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| a.wait_exit(Duration::from_secs(20))),
        Some(0)
    );
}
