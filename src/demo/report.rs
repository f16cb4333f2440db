//! DEMO: what the demo shows while it runs, and the closing report and verdict.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};

use super::traffic::Tally;
use super::upstream::Fault;
use super::RolloutRun;
use crate::config::PoolId;

/// Progress output: a live line on a terminal, plain lines otherwise, or JSON events.
pub struct Display {
    json: bool,
    tty: bool,
    epoch: Instant,
    last_line: String,
    last_head: String,
    last_print: Instant,
    last_counts: (u64, u64, Instant),
}

impl Display {
    pub fn new(json: bool, epoch: Instant) -> Self {
        Display {
            json,
            tty: std::io::stdout().is_terminal(),
            epoch,
            last_line: String::new(),
            last_head: String::new(),
            last_print: Instant::now(),
            last_counts: (0, 0, Instant::now()),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A discrete event: a JSON line with `--json`, a sentence otherwise.
    pub fn event(&mut self, mut v: Value) {
        v["t_ms"] = self.elapsed_ms().into();
        if self.json {
            println!("{v}");
            return;
        }
        if self.tty && !self.last_line.is_empty() {
            println!();
            self.last_line.clear();
        }
        let text = match v["event"].as_str() {
            Some("started") => format!(
                "proxy on {} (blue {}, green {}); second rollout's fault: {}",
                v["proxy"].as_str().unwrap_or("?"),
                v["blue"].as_str().unwrap_or("?"),
                v["green"].as_str().unwrap_or("?"),
                v["fault"].as_str().unwrap_or("?")
            ),
            Some("rollout_started") => format!(
                "rollout to {} started",
                v["candidate"].as_str().unwrap_or("?")
            ),
            Some("fault_injected") => format!(
                "{} starts misbehaving ({})",
                v["pool"].as_str().unwrap_or("?"),
                v["fault"].as_str().unwrap_or("?")
            ),
            Some("rollout_ended") => format!(
                "rollout to {} ended: {}{}",
                v["candidate"].as_str().unwrap_or("?"),
                v["phase"].as_str().unwrap_or("?"),
                v["gate"]
                    .as_str()
                    .map(|g| format!(" by gate {g}"))
                    .unwrap_or_default()
            ),
            _ => v.to_string(),
        };
        println!("[{:6.1}s] {text}", self.elapsed_ms() as f64 / 1000.0);
    }

    /// The progress line: phase, step, weight, requests per second per pool, gates.
    pub fn progress(&mut self, status: &Value, tally: &Tally) {
        let (b, g) = (tally.served(PoolId::Blue), tally.served(PoolId::Green));
        let dt = self.last_counts.2.elapsed().as_secs_f64();
        if dt < 0.5 && self.tty {
            return;
        }
        let dt = dt.max(0.001);
        let (rb, rg) = (
            (b - self.last_counts.0) as f64 / dt,
            (g - self.last_counts.1) as f64 / dt,
        );
        self.last_counts = (b, g, Instant::now());
        let step = match (status["phase"].as_str(), status["step"].as_u64()) {
            (Some("progressing"), Some(s)) => format!(" {}", s + 1),
            _ => String::new(),
        };
        let head = format!(
            "{}{step} | {} at {}",
            status["phase"].as_str().unwrap_or("?"),
            status["candidate"].as_str().unwrap_or("?"),
            status["candidate_percent"]
                .as_f64()
                .map(|p| format!("{p}%"))
                .unwrap_or_else(|| "?".into()),
        );
        let line = format!(
            "{head:<28} | blue {rb:>4.0}/s green {rg:>4.0}/s | client errors {} | {}",
            tally.errors.load(Ordering::Relaxed),
            gate_summary(status)
        );
        if self.json {
            return;
        }
        if self.tty {
            print!(
                "\r\x1b[2K[{:6.1}s] {line}",
                self.elapsed_ms() as f64 / 1000.0
            );
            let _ = std::io::stdout().flush();
            self.last_line = line;
        } else if head != self.last_head || self.last_print.elapsed().as_secs_f64() >= 2.0 {
            println!("[{:6.1}s] {line}", self.elapsed_ms() as f64 / 1000.0);
            self.last_head = head;
            self.last_print = Instant::now();
        }
    }

    pub fn report(&mut self, o: &Outcome) {
        if self.json {
            println!("{}", o.summary());
            return;
        }
        if self.tty && !self.last_line.is_empty() {
            println!();
        }
        println!("\n== switchyard demo report ==");
        for (title, run) in [
            ("1. rollout to green", &o.first),
            ("2. rollout to blue (bad build)", &o.second),
        ] {
            match run {
                Ok(r) => {
                    println!(
                        "{title}: {}{}",
                        r.phase,
                        r.gate
                            .as_ref()
                            .map(|g| format!(" by gate {g}"))
                            .unwrap_or_default()
                    );
                    for (step, secs) in &r.steps {
                        println!("     {step:<14} {secs:6.1}s");
                    }
                }
                Err(e) => println!("{title}: did not complete: {e}"),
            }
        }
        if let Some(ms) = o.reaction_ms {
            println!("rollback reaction: last request served by the bad build {ms} ms after the first bad answer");
        }
        println!(
            "requests served: {} (blue {}, green {}); errors seen by clients: {}",
            o.served_blue + o.served_green,
            o.served_blue,
            o.served_green,
            o.client_errors
        );
        println!(
            "verdict: {}",
            if o.ok {
                "PASS (promoted once, rolled back by the expected gate)"
            } else {
                "FAIL"
            }
        );
        for why in &o.problems {
            println!("  - {why}");
        }
    }
}

/// The candidate's P99 and error rate against their limits, and any failing gate.
fn gate_summary(status: &Value) -> String {
    let gates: Vec<&Value> = status["gates"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .filter(|g| g["pool"] == status["candidate"])
                .collect()
        })
        .unwrap_or_default();
    let show = |name: &str| {
        let g = gates.iter().find(|g| g["gate"] == name)?;
        let scale = if g["unit"] == "seconds" {
            (1000.0, "ms")
        } else {
            (100.0, "%")
        };
        let fmt = |v: &Value| {
            v.as_f64().map_or("-".to_string(), |x| {
                format!("{:.1}{}", x * scale.0, scale.1)
            })
        };
        Some(format!("{name} {}/{}", fmt(&g["value"]), fmt(&g["limit"])))
    };
    let mut parts: Vec<String> = ["p99_absolute", "error_rate"]
        .iter()
        .filter_map(|n| show(n))
        .collect();
    let failing: Vec<&str> = gates
        .iter()
        .filter(|g| g["verdict"] == "fail")
        .filter_map(|g| g["gate"].as_str())
        .collect();
    let waiting = gates
        .iter()
        .filter(|g| g["verdict"] == "inconclusive")
        .count();
    if !failing.is_empty() {
        parts.push(format!("FAILING: {}", failing.join(", ")));
    } else if waiting > 0 {
        parts.push(format!("{waiting} gates gathering samples"));
    }
    parts.join(" | ")
}

/// The demo's verdict.
pub struct Outcome {
    pub ok: bool,
    pub first: Result<RolloutRun, String>,
    pub second: Result<RolloutRun, String>,
    pub fault: Fault,
    pub reaction_ms: Option<u64>,
    pub served_blue: u64,
    pub served_green: u64,
    pub client_errors: u64,
    pub problems: Vec<String>,
}

impl Outcome {
    pub fn judge(
        first: Result<RolloutRun, String>,
        second: Result<RolloutRun, String>,
        fault: Fault,
        tally: &Tally,
    ) -> Outcome {
        let mut problems = Vec::new();
        match &first {
            Ok(r) if r.phase == "promoted" => {}
            Ok(r) => problems.push(format!(
                "the healthy rollout ended {} (gate {:?})",
                r.phase, r.gate
            )),
            Err(e) => problems.push(e.clone()),
        }
        match &second {
            Ok(r) if r.phase == "rolled_back" => {
                let gate = r.gate.as_deref().unwrap_or("");
                if !fault.expected_gates().contains(&gate) {
                    problems.push(format!(
                        "rolled back by {gate}, expected one of {:?}",
                        fault.expected_gates()
                    ));
                }
            }
            Ok(r) => problems.push(format!(
                "the bad build's rollout ended {} instead of rolled_back",
                r.phase
            )),
            Err(e) => problems.push(e.clone()),
        }
        let first_bad = tally.first_bad_ms.load(Ordering::Relaxed);
        let last_blue = tally.last_seen_ms[PoolId::Blue.index()].load(Ordering::Relaxed);
        let reaction_ms =
            (first_bad > 0 && second.is_ok()).then(|| last_blue.saturating_sub(first_bad));
        Outcome {
            ok: problems.is_empty(),
            first,
            second,
            fault,
            reaction_ms,
            served_blue: tally.served(PoolId::Blue),
            served_green: tally.served(PoolId::Green),
            client_errors: tally.errors.load(Ordering::Relaxed),
            problems,
        }
    }

    /// One JSON line summing the demo up.
    pub fn summary(&self) -> Value {
        let run = |r: &Result<RolloutRun, String>| match r {
            Ok(r) => {
                json!({"candidate": r.candidate.as_str(), "phase": r.phase, "gate": r.gate, "reason": r.reason,
                "steps": r.steps.iter().map(|(s, t)| json!({"step": s, "seconds": t})).collect::<Vec<_>>()})
            }
            Err(e) => json!({"error": e}),
        };
        json!({
            "event": "report",
            "ok": self.ok,
            "fault": self.fault.as_str(),
            "first": run(&self.first),
            "second": run(&self.second),
            "rollback_reaction_ms": self.reaction_ms,
            "served": {"blue": self.served_blue, "green": self.served_green},
            "client_errors": self.client_errors,
            "problems": self.problems,
        })
    }
}
