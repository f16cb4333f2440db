//! Rollout test helpers: a short-hold `[rollout]` config, a bounded traffic generator that
//! logs every response, `switchyard ctl` with its exit code, and waiting for a phase.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{client, get, TestProxy};

/// `[rollout]` and `[rollout.gates]` with holds of a second and small sample minimums.
/// `over` replaces or adds keys; `gates.KEY` for the gates table. Values are TOML.
pub fn rollout_toml(over: &[(&str, &str)]) -> String {
    let mut rollout = vec![
        ("steps", "[10, 50, 100]"),
        ("hold", "\"1s\""),
        ("bake", "\"1s\""),
        ("window", "\"5s\""),
        ("settle", "\"200ms\""),
        ("max_hold", "\"10s\""),
        ("tick", "\"100ms\""),
    ];
    let mut gates = vec![
        ("p99_max", "\"1s\""),
        ("p99_min_delta", "\"100ms\""),
        ("min_requests", "40"),
        ("min_latency_samples", "40"),
        ("tripwire_min_requests", "20"),
        ("fail_windows", "2"),
    ];
    for &(key, value) in over {
        let (table, key) = match key.strip_prefix("gates.") {
            Some(k) => (&mut gates, k),
            None => (&mut rollout, key),
        };
        table.retain(|(k, _)| *k != key);
        table.push((key, value));
    }
    let lines = |t: &[(&str, &str)]| {
        t.iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    };
    format!(
        "\n[rollout]\n{}[rollout.gates]\n{}",
        lines(&rollout),
        lines(&gates)
    )
}

/// One response as the traffic generator saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sent: Instant,
    pub done: Instant,
    pub status: u16,
    /// `x-upstream: green` (answered by green, whatever the status).
    pub green: bool,
    pub blue: bool,
}

/// Requests at a steady rate from 8 keep-alive workers, for at most `limit`.
pub struct Traffic {
    stop: CancellationToken,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn traffic(addr: SocketAddr, per_second: u32, limit: Duration) -> Traffic {
    const WORKERS: u32 = 8;
    let stop = CancellationToken::new();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let period = Duration::from_secs_f64(f64::from(WORKERS) / f64::from(per_second.max(1)));
    let started = Instant::now();
    let url = format!("http://{addr}/");
    let tasks = (0..WORKERS)
        .map(|_| {
            let (stop, samples, url) = (stop.clone(), samples.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while started.elapsed() < limit {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let sent = Instant::now();
                    let resp = tokio::time::timeout(Duration::from_secs(5), c.request(get(&url)));
                    let Ok(Ok(resp)) = resp.await else { continue };
                    let upstream = resp.headers().get("x-upstream").cloned();
                    let status = resp.status().as_u16();
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    let s = Sample {
                        sent,
                        done: Instant::now(),
                        status,
                        green: upstream.as_ref().is_some_and(|u| u == "green"),
                        blue: upstream.as_ref().is_some_and(|u| u == "blue"),
                    };
                    samples.lock().unwrap().push(s);
                }
            })
        })
        .collect();
    Traffic {
        stop,
        samples,
        tasks,
    }
}

impl Traffic {
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    pub fn count(&self, f: impl Fn(&Sample) -> bool) -> usize {
        self.samples.lock().unwrap().iter().filter(|s| f(s)).count()
    }

    /// Stops the workers; every sample.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

/// `switchyard ctl --socket S words...` (stdout not a terminal): exit code, the parsed last
/// stdout line, and all of stdout.
pub async fn ctl(socket: &Path, words: &[&str], deadline: Duration) -> (i32, Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("ctl").arg("--socket").arg(socket).args(words);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ctl {words:?} did not finish within {deadline:?}"))
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("null");
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last stdout line is not JSON ({e}): {stdout:?}; stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v, stdout)
}

/// Polls `rollout status` until `done(rollout)`; the rollout view.
pub async fn wait_rollout(
    p: &TestProxy,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let s = p.admin("rollout status").await;
        assert_eq!(s["ok"], true, "{s}");
        if done(&s["rollout"]) {
            return s["rollout"].clone();
        }
        assert!(
            start.elapsed() < deadline,
            "rollout not there within {deadline:?}: {}",
            s["rollout"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
