//! DEMO: the whole job on loopback, with nothing to configure. A blue and a green
//! upstream run in-process, a proxy in front of them, and a steady client load. Then:
//! 1. a rollout to a healthy green, promoted step by step (10 → 50 → 100 → bake);
//! 2. a rollout back to a blue build that goes bad part-way, rolled back by the gate that
//!    matches the fault.
//!
//! The demo drives the proxy only through its admin socket, as an operator or a CI job
//! would, and succeeds only when both outcomes happen as they should.
//!
//! `upstream`: the in-process blue and green services, which can be told to misbehave;
//! `traffic`: the client load and what it sees per pool; `report`: the progress lines and
//! the closing report and verdict.

mod report;
mod traffic;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PoolId};
use crate::control::admin::request;
use crate::Switchyard;
pub use report::Outcome;
use upstream::DemoUpstream;
pub use upstream::Fault;

const HASH: &str = "cdd01ef066bc6cf2";

/// Demo options from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub fault: Fault,
    /// Short holds and bakes, for tests (about 15 s in all).
    pub quick: bool,
    /// One JSON event per line instead of the progress display.
    pub json: bool,
}

/// Timing of one demo flavour.
struct Pace {
    hold: &'static str,
    bake: &'static str,
    window: &'static str,
    settle: &'static str,
    rate: u64,
    /// Second rollout: the fault starts when the candidate reaches this step (1-based).
    fault_at_step: usize,
    deadline: Duration,
}

impl Pace {
    fn of(quick: bool) -> Pace {
        if quick {
            Pace {
                hold: "1s",
                bake: "1s",
                window: "3s",
                settle: "200ms",
                rate: 400,
                fault_at_step: 2,
                deadline: Duration::from_secs(40),
            }
        } else {
            Pace {
                hold: "6s",
                bake: "6s",
                window: "5s",
                settle: "500ms",
                rate: 600,
                fault_at_step: 2,
                deadline: Duration::from_secs(120),
            }
        }
    }
}

fn config_text(
    dir: &Path,
    blue: &DemoUpstream,
    green: &DemoUpstream,
    pace: &Pace,
    quick: bool,
) -> String {
    // Debug builds on a busy machine are slower than the proxy is in production: the
    // quick flavour (tests) keeps the runbook's shape but widens the latency margins.
    let (p99_max, p99_delta) = if quick {
        ("40ms", "20ms")
    } else {
        ("5ms", "2ms")
    };
    format!(
        r#"
[proxy]
listen = ["127.0.0.1:0"]
[pools.blue]
backends = ["{blue}"]
[pools.blue.health]
interval = "500ms"
timeout = "400ms"
[pools.green]
backends = ["{green}"]
[pools.green.health]
interval = "500ms"
timeout = "400ms"
[admin]
socket = "{dir}/admin.sock"
[metrics]
listen = "127.0.0.1:0"
[state]
path = "{dir}/state.json"
[rollout]
steps = [10, 50, 100]
hold = "{hold}"
bake = "{bake}"
window = "{window}"
settle = "{settle}"
max_hold = "30s"
tick = "250ms"
[rollout.gates]
p99_max = "{p99_max}"
p99_min_delta = "{p99_delta}"
error_rate_max = 0.01
min_requests = 60
min_latency_samples = 100
fail_windows = 2
"#,
        blue = blue.addr,
        green = green.addr,
        dir = dir.display(),
        hold = pace.hold,
        bake = pace.bake,
        window = pace.window,
        settle = pace.settle,
    )
}

/// A scratch directory for the admin socket and state file, removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo; the outcome says whether both rollouts ended as they should.
/// `switchyard demo --backends BLUE,GREEN`: only the two demo upstreams, on fixed
/// addresses, until Ctrl-C or SIGTERM; for trying a real config (README, Quick start).
/// Each answers every path with 200, its pool's name and the constitutional hash, `/health`
/// included.
pub async fn serve_backends(blue: SocketAddr, green: SocketAddr) -> Result<(), String> {
    let b = DemoUpstream::start_at(blue, PoolId::Blue, HASH)
        .await
        .map_err(|e| format!("cannot listen on {blue} (blue): {e}"))?;
    let g = DemoUpstream::start_at(green, PoolId::Green, HASH)
        .await
        .map_err(|e| format!("cannot listen on {green} (green): {e}"))?;
    eprintln!(
        "demo backends: blue on {}, green on {} (hash {HASH}); Ctrl-C stops them",
        b.addr, g.addr
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

pub async fn run(opts: Options) -> Result<Outcome, String> {
    let pace = Pace::of(opts.quick);
    let epoch = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "switchyard-demo-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let scratch = Scratch(dir);
    let blue = DemoUpstream::start(PoolId::Blue, HASH)
        .await
        .map_err(|e| format!("blue upstream: {e}"))?;
    let green = DemoUpstream::start(PoolId::Green, HASH)
        .await
        .map_err(|e| format!("green upstream: {e}"))?;
    let cfg = Config::from_toml_str(&config_text(&scratch.0, &blue, &green, &pace, opts.quick))
        .map_err(|e| format!("demo config: {e}"))?;
    let socket = cfg.admin.socket.clone();
    let proxy = Switchyard::bind(cfg)
        .await
        .map_err(|e| format!("proxy: {e}"))?;
    let addr = *proxy.http_addrs().first().ok_or("proxy has no listener")?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(proxy.run(shutdown.clone()));

    let mut out = report::Display::new(opts.json, epoch);
    out.event(
        json!({"event": "started", "proxy": addr.to_string(), "blue": blue.addr.to_string(),
        "green": green.addr.to_string(), "fault": opts.fault.as_str()}),
    );
    let tally = traffic::start(addr, 8, pace.rate, HASH, epoch);

    let first = follow(&socket, PoolId::Green, None, &pace, &mut out, &tally, &blue).await;
    let second = match &first {
        Ok(r) if r.phase == "promoted" => {
            follow(
                &socket,
                PoolId::Blue,
                Some(opts.fault),
                &pace,
                &mut out,
                &tally,
                &blue,
            )
            .await
        }
        _ => Err("the first rollout was not promoted; skipping the second".to_string()),
    };
    tally.stop();
    shutdown.cancel();
    let _ = server.await;
    let outcome = report::Outcome::judge(first, second, opts.fault, &tally);
    out.report(&outcome);
    drop(scratch);
    Ok(outcome)
}

/// What one rollout did, as the demo saw it.
#[derive(Debug, Clone)]
pub struct RolloutRun {
    pub candidate: PoolId,
    pub phase: String,
    pub gate: Option<String>,
    pub reason: Option<String>,
    /// (step label, seconds spent) in order.
    pub steps: Vec<(String, f64)>,
    pub fault_at_ms: Option<u64>,
    pub ended_at_ms: u64,
}

async fn admin(socket: &Path, line: &str) -> Result<Value, String> {
    let reply = request(socket, line)
        .await
        .map_err(|e| format!("admin socket: {e}"))?;
    let v: Value = serde_json::from_str(&reply)
        .map_err(|e| format!("admin reply is not JSON ({e}): {reply}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(format!("`{line}` refused: {}", v["error"]))
    }
}

/// Starts a rollout to `candidate`, injects `fault` part-way, and follows it to its end.
async fn follow(
    socket: &Path,
    candidate: PoolId,
    fault: Option<Fault>,
    pace: &Pace,
    out: &mut report::Display,
    tally: &traffic::Tally,
    blue: &DemoUpstream,
) -> Result<RolloutRun, String> {
    let started = Instant::now();
    admin(socket, &format!("rollout start to {candidate}")).await?;
    out.event(json!({"event": "rollout_started", "candidate": candidate.as_str(), "fault": fault.map(Fault::as_str)}));
    let mut run = RolloutRun {
        candidate,
        phase: String::new(),
        gate: None,
        reason: None,
        steps: Vec::new(),
        fault_at_ms: None,
        ended_at_ms: 0,
    };
    let mut label = String::new();
    let mut since = Instant::now();
    loop {
        if started.elapsed() > pace.deadline {
            return Err(format!(
                "rollout to {candidate} did not finish within {:?}",
                pace.deadline
            ));
        }
        let s = admin(socket, "rollout status").await?;
        let r = &s["rollout"];
        let status = if r.is_object() { r } else { &s };
        let phase = status["phase"].as_str().unwrap_or("unknown").to_string();
        let step = status["step"].as_u64().map(|s| s as usize + 1);
        let now_label = match (phase.as_str(), step) {
            ("progressing", Some(n)) => format!("step {n}"),
            (p, _) => p.to_string(),
        };
        if now_label != label {
            if !label.is_empty() {
                run.steps
                    .push((label.clone(), since.elapsed().as_secs_f64()));
            }
            label = now_label;
            since = Instant::now();
        }
        if let (Some(f), Some(n), None) = (fault, step, run.fault_at_ms) {
            if phase == "progressing" && n >= pace.fault_at_step {
                blue.set_fault(Some(f));
                run.fault_at_ms = Some(out.elapsed_ms());
                out.event(json!({"event": "fault_injected", "pool": candidate.as_str(), "fault": f.as_str()}));
            }
        }
        out.progress(status, tally);
        if matches!(
            phase.as_str(),
            "promoted" | "rolled_back" | "aborted" | "paused"
        ) {
            run.steps
                .push((label.clone(), since.elapsed().as_secs_f64()));
            run.phase = phase;
            run.gate = status["gate"].as_str().map(str::to_string);
            run.reason = status["reason"].as_str().map(str::to_string);
            run.ended_at_ms = out.elapsed_ms();
            out.event(json!({"event": "rollout_ended", "candidate": candidate.as_str(), "phase": run.phase,
                "gate": run.gate, "reason": run.reason}));
            // Let the rolled-back pool's last requests drain before the next act.
            blue.set_fault(None);
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
