//! The daemon under a service manager: sd_notify datagrams on a `NOTIFY_SOCKET` of the
//! test's own (READY, STATUS, WATCHDOG with a short `WATCHDOG_USEC`, RELOADING around a
//! SIGHUP, STOPPING at SIGTERM, MAINPID after `--takeover`), and the daemon's JSON log
//! lines, parsed.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The service manager's end: every datagram the daemon sends, as text.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `deadline`) for a datagram, received from now on, for which `want`
    /// holds; returns it.
    fn wait(&mut self, what: &str, deadline: Duration, want: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
        }
        panic!("no {what} within {deadline:?}; saw: {:?}", self.seen);
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only the child this test started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(config: &Path, notify: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            log,
            lines: Vec::new(),
        }
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
            assert!(start.elapsed() < deadline, "no exit within {deadline:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stderr line so far.
    fn drain_log(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }
}

fn write_config(dir: &Path, blue: &Upstream, green: &Upstream) -> PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config_text(dir, &[blue.addr], &[green.addr], "")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_reloading_and_stopping_reach_the_notify_socket() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    tokio::task::block_in_place(|| {
        let mut m = Manager::bind(dir.path());
        let mut d = Proc::start(&config, &m.path, &[], &[("WATCHDOG_USEC", "200000")]);
        let ready = m.wait("READY=1", Duration::from_secs(30), |s| has(s, "READY=1"));
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap();
        assert!(
            status.starts_with("generation ") && status.contains("rollout idle"),
            "{status}"
        );
        assert!(
            !ready.contains("MAINPID="),
            "a plain start keeps its pid: {ready}"
        );
        // Pings every 100 ms: a few within a generous deadline.
        for _ in 0..3 {
            m.wait("WATCHDOG=1", Duration::from_secs(10), |s| {
                has(s, "WATCHDOG=1")
            });
        }

        d.signal("HUP");
        let reloading = m.wait("RELOADING=1", Duration::from_secs(10), |s| {
            has(s, "RELOADING=1")
        });
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        m.wait("READY=1 after the reload", Duration::from_secs(10), |s| {
            has(s, "READY=1")
        });

        d.signal("TERM");
        m.wait("STOPPING=1", Duration::from_secs(10), |s| {
            has(s, "STOPPING=1")
        });
        assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));

        // The daemon's own log: one JSON object per line, with the fields as keys.
        let lines = d.drain_log().to_vec();
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let listening = parsed
            .iter()
            .find(|v| v["message"] == "proxy listening")
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(listening["level"], "INFO");
        assert!(listening["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(listening["timestamp"].is_string());
        assert!(parsed.iter().any(|v| v["message"] == "config reloaded"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_without_watchdog_usec() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    tokio::task::block_in_place(|| {
        let mut m = Manager::bind(dir.path());
        let mut d = Proc::start(&config, &m.path, &[], &[]);
        m.wait("READY=1", Duration::from_secs(30), |s| has(s, "READY=1"));
        d.signal("TERM");
        m.wait("STOPPING=1", Duration::from_secs(10), |s| {
            has(s, "STOPPING=1")
        });
        assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
        assert!(!m.seen.iter().any(|s| has(s, "WATCHDOG=1")), "{:?}", m.seen);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_hands_the_notify_role_to_the_new_process() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    tokio::task::block_in_place(|| {
        let mut m = Manager::bind(dir.path());
        let mut old = Proc::start(&config, &m.path, &[], &[]);
        m.wait("READY=1", Duration::from_secs(30), |s| has(s, "READY=1"));

        let mut new = Proc::start(&config, &m.path, &["--takeover"], &[]);
        let pid = new.child.id();
        let ready = m.wait(
            "MAINPID= of the new process",
            Duration::from_secs(30),
            |s| has(s, "READY=1") && s.contains("MAINPID="),
        );
        assert!(has(&ready, &format!("MAINPID={pid}")), "{ready}");

        // The old process drains without STOPPING=1: the service goes on, in the new one.
        old.signal("TERM");
        assert_eq!(old.wait_exit(Duration::from_secs(30)), Some(0));
        new.signal("TERM");
        m.wait(
            "STOPPING=1 from the new process",
            Duration::from_secs(10),
            |s| has(s, "STOPPING=1"),
        );
        assert_eq!(new.wait_exit(Duration::from_secs(30)), Some(0));
        let stops = m.seen.iter().filter(|s| has(s, "STOPPING=1")).count();
        assert_eq!(stops, 1, "{:?}", m.seen);
    });
}

/// Signals a process this test started (directly, or through the daemon's SIGUSR2), by pid.
fn kill(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_becomes_the_main_pid_and_stops_the_old() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    let socket = dir.path().join("admin.sock");
    let status = tokio::task::block_in_place(|| {
        let mut m = Manager::bind(dir.path());
        let mut old = Proc::start(&config, &m.path, &[], &[("WATCHDOG_USEC", "200000")]);
        let old_pid = old.child.id();
        m.wait("READY=1", Duration::from_secs(30), |s| has(s, "READY=1"));

        old.signal("USR2");
        let ready = m.wait("MAINPID= of the successor", Duration::from_secs(30), |s| {
            has(s, "READY=1") && s.contains("MAINPID=")
        });
        let new_pid: u32 = ready
            .lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(new_pid, old_pid);
        // The successor stops the old process (--stop-old), which drains and exits 0.
        let code = old.wait_exit(Duration::from_secs(30));
        // The successor pings the watchdog itself (WATCHDOG_PID was dropped for it).
        m.seen.clear();
        m.wait(
            "WATCHDOG=1 from the successor",
            Duration::from_secs(10),
            |s| has(s, "WATCHDOG=1"),
        );
        (code, new_pid, m)
    });
    let (code, new_pid, mut m) = status;
    let status = admin_at(&socket, "status").await;
    tokio::task::block_in_place(|| {
        kill(new_pid, "TERM");
        assert_eq!(code, Some(0), "the old process's exit");
        assert_eq!(status["ok"], true, "{status}");
        m.wait(
            "STOPPING=1 from the successor",
            Duration::from_secs(10),
            |s| has(s, "STOPPING=1"),
        );
        let stops = m.seen.iter().filter(|s| has(s, "STOPPING=1")).count();
        assert_eq!(
            stops, 1,
            "only the successor announces a stop: {:?}",
            m.seen
        );
        // Not this test's child, so not reaped here: gone once /proc has no live process
        // under its pid (absent, or a zombie waiting for its new parent).
        let running = || {
            std::fs::read_to_string(format!("/proc/{new_pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                .is_some_and(|zombie| !zombie)
        };
        let start = Instant::now();
        while running() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(), "the successor did not exit");
    });
}
