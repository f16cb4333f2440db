//! Running the real `switchyard` binary as a child process, for what only a process can
//! show: signals, exit codes, restarts, its own memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    /// Every stderr line so far arrives here.
    pub log: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Only the child this test started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `config` and waits (up to 30 s) for its listening line.
pub fn start(config: &Path, socket: &Path) -> Daemon {
    start_with_env(config, socket, &[])
}

/// [`start`] with more environment variables.
pub fn start_with_env(config: &Path, socket: &Path, envs: &[(&str, &str)]) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        // These helpers read the text form (`addr=`); JSON lines are tested in tests/notify.rs.
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut d = Daemon {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        socket: socket.to_path_buf(),
        log: rx,
        seen: Vec::new(),
    };
    let line = d.wait_log("proxy listening", Duration::from_secs(30));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"));
    d.addr = addr.parse().unwrap();
    d
}

impl Daemon {
    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_log(&mut self, needle: &str, deadline: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let start = Instant::now();
        loop {
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "no log line with {needle:?} within {deadline:?}; saw:\n{}",
                    self.seen.join("\n")
                )
            });
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {deadline:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, HUP, KILL, ...) to this child.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the child to exit; its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < deadline,
                "daemon did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        self.status(field)
            .strip_suffix("kB")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status is not in kB"))
    }

    /// A field of /proc/PID/status as text (e.g. THP_enabled).
    pub fn status(&self, field: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        text.lines()
            .find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_string()))
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}
