//! CONTROL PLANE: `switchyard ctl rollout ... --wait` — follows one rollout to its end.
//!
//! `ctl rollout start --to green --wait [--timeout 30m]` (or `ctl rollout status --wait`,
//! which attaches to a rollout someone else started) polls `rollout status` on the same
//! connection. On a terminal it keeps a live display (step, weight, each candidate gate
//! against its limit, time left in the hold) and a line per change; otherwise it prints one
//! JSON line per change. It exits with the design's code — 0 promoted, 3 rolled back by a
//! gate (the gate and its values are printed), 4 aborted or rolled back by an operator,
//! 5 `--timeout` while still progressing, 6 paused (for a human), 7 conflict, 8 invalid
//! transition (also: no rollout to follow), 1 internal, 2 the socket went away — and the
//! last stdout line is a JSON summary: phase, reason, gate, generation, duration_ms, exit.
//! A pause ends the wait at once with 6, whoever paused (a CI job should not hold its
//! runner for a human); resume and `rollout status --wait` to follow on. Attached to a
//! rollout that had already ended, it reports that outcome with `"already_ended": true`
//! in the summary and a note on stderr.
//!
//! The `--to`, `--steps`, `--hold`, `--bake` and `--expect-gen` flags become the socket's
//! `to green`-style words, so `ctl rollout start to green` works too.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::parse_duration;
use crate::ctl::client::{exit_code, Connection, EXIT_UNREACHABLE, EXIT_USAGE, REPLY_TIMEOUT};

/// How often the rollout is polled.
const POLL: Duration = Duration::from_millis(200);

/// What `--wait` and `--timeout` asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub wait: bool,
    pub timeout: Option<Duration>,
}

/// Splits the `--` flags of a `rollout` command into socket words and [`Options`]; other
/// commands pass through unchanged.
pub fn take(words: &[String]) -> Result<(Vec<String>, Options), String> {
    let mut opts = Options::default();
    if words.first().map(String::as_str) != Some("rollout") {
        return Ok((words.to_vec(), opts));
    }
    let (mut out, mut expect_gen) = (Vec::new(), Vec::new());
    let mut it = words.iter();
    while let Some(word) = it.next() {
        let Some(flag) = word.strip_prefix("--") else {
            out.push(word.clone());
            continue;
        };
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (flag, None),
        };
        if flag == "wait" {
            opts.wait = true;
            continue;
        }
        let value = inline
            .or_else(|| it.next().cloned())
            .ok_or_else(|| format!("--{flag} needs a value"))?;
        match flag {
            "timeout" => {
                let d = parse_duration(&value).map_err(|e| format!("--timeout: {e}"))?;
                opts.timeout = Some(d);
            }
            // The daemon reads `expect-gen N` only at the end of the line.
            "expect-gen" => expect_gen = vec!["expect-gen".to_string(), value],
            "to" | "steps" | "hold" | "bake" => out.extend([flag.to_string(), value]),
            other => {
                return Err(format!(
                    "unknown option --{other}; `rollout` takes --to, --steps, --hold, --bake, \
                     --expect-gen, --wait and --timeout"
                ))
            }
        }
    }
    if opts.timeout.is_some() && !opts.wait {
        return Err("--timeout only applies with --wait".into());
    }
    out.extend(expect_gen);
    Ok((out, opts))
}

/// The exit code of a rollout in this state, if the wait is over.
fn outcome(view: &Value) -> Option<u8> {
    match view["phase"].as_str()? {
        "promoted" => Some(0),
        "rolled_back" if view["gate"] == "operator" => Some(4),
        "rolled_back" => Some(3),
        "aborted" => Some(4),
        "paused" => Some(6),
        "idle" => Some(8),
        _ => None,
    }
}

/// Follows the rollout in `first` (the reply of the command just sent) to its end.
pub async fn follow(conn: &mut Connection, first: &Value, opts: &Options, json: bool) -> u8 {
    let started = Instant::now();
    let mut view = first["rollout"].clone();
    let mut generation = first["generation"].clone();
    let id = view["id"].clone();
    let mut display = Display::new(json || !std::io::stdout().is_terminal());
    let mut last = key(&view);
    if let Some(phase) = outcome(&view).and(view["phase"].as_str()) {
        // `rollout status --wait` after the end: the code is that old rollout's, and says so.
        let _ = writeln!(
            std::io::stderr(),
            "switchyard ctl: rollout {} had already ended ({phase}) before this command; \
             its outcome is reported, nothing was followed",
            view["id"]
        );
        view["already_ended"] = json!(true);
    }
    loop {
        if let Some(code) = outcome(&view) {
            display.clear();
            return summarize(&view, &generation, code, started, &mut display);
        }
        if opts.timeout.is_some_and(|t| started.elapsed() >= t) {
            display.clear();
            return summarize(&view, &generation, 5, started, &mut display);
        }
        display.progress(&view);
        tokio::time::sleep(POLL).await;
        let reply = match poll(conn).await {
            Ok(v) => v,
            Err(message) => {
                display.clear();
                eprintln!("switchyard ctl: {message}");
                view["error"] = json!({ "code": "unreachable", "message": message });
                return summarize(&view, &generation, EXIT_UNREACHABLE, started, &mut display);
            }
        };
        if reply["ok"] != true {
            display.clear();
            let code = exit_code(reply["error"]["code"].as_str().unwrap_or("internal"));
            view["error"] = reply["error"].clone();
            return summarize(&view, &generation, code, started, &mut display);
        }
        generation = reply["generation"].clone();
        if reply["rollout"]["id"] != id {
            display.clear();
            eprintln!(
                "switchyard ctl: rollout {id} was replaced by another before it was seen to end"
            );
            return summarize(&view, &generation, EXIT_USAGE, started, &mut display);
        }
        view = reply["rollout"].clone();
        let now = key(&view);
        if now != last {
            display.change(&view, &generation);
            last = now;
        }
    }
}

async fn poll(conn: &mut Connection) -> Result<Value, String> {
    conn.send("rollout status")
        .await
        .map_err(|e| format!("admin socket: {e}"))?;
    match tokio::time::timeout(REPLY_TIMEOUT, conn.next()).await {
        Err(_) => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("admin socket: {e}")),
        Ok(Ok(None)) => Err("the daemon closed the connection".into()),
        Ok(Ok(Some(v))) => Ok(v),
    }
}

/// What counts as a change: phase, step, weight, reason.
fn key(view: &Value) -> [Value; 4] {
    ["phase", "step", "candidate_percent", "reason"].map(|k| view[k].clone())
}

/// The refusal of the command itself (`conflict`, `invalid_transition`) as the summary.
pub fn refused(reply: &Value, code: u8, json: bool) {
    let mut display = Display::new(json || !std::io::stdout().is_terminal());
    let view = json!({ "phase": null, "error": reply["error"] });
    summarize(&view, &Value::Null, code, Instant::now(), &mut display);
}

fn summarize(view: &Value, generation: &Value, code: u8, started: Instant, d: &mut Display) -> u8 {
    let duration = view["duration_ms"]
        .as_u64()
        .unwrap_or_else(|| started.elapsed().as_millis() as u64);
    let mut s = json!({
        "summary": true,
        "id": view["id"],
        "phase": view["phase"],
        "reason": view["reason"],
        "gate": view["gate"],
        "candidate": view["candidate"],
        "candidate_percent": view["candidate_percent"],
        "step": view["step"],
        "generation": generation,
        "duration_ms": duration,
        "exit": code,
    });
    for k in ["trip", "error", "already_ended"] {
        if !view[k].is_null() {
            s[k] = view[k].clone();
        }
    }
    if !d.json {
        d.line(&headline(view, code));
    }
    d.line(&s.to_string());
    code
}

fn headline(view: &Value, code: u8) -> String {
    let phase = view["phase"].as_str().unwrap_or("unknown");
    let reason = view["reason"].as_str().unwrap_or("");
    match code {
        3 => format!(
            "rolled back by {}: {}",
            view["gate"].as_str().unwrap_or("?"),
            view["trip"]["detail"].as_str().unwrap_or(reason)
        ),
        5 => format!("timed out while {phase}; the rollout goes on"),
        _ if !view["error"].is_null() => format!(
            "error [{}]: {}",
            view["error"]["code"].as_str().unwrap_or("?"),
            view["error"]["message"].as_str().unwrap_or("")
        ),
        _ if reason.is_empty() => phase.to_string(),
        _ => format!("{phase}: {reason}"),
    }
}

/// A value in its gate's unit, for people.
fn value(v: &Value, unit: &str) -> String {
    let Some(x) = v.as_f64() else {
        return "-".into();
    };
    match unit {
        "seconds" => format!("{:.2}ms", x * 1000.0),
        "fraction" => format!("{:.2}%", x * 100.0),
        "ratio" => format!("{x:.2}x"),
        _ => format!("{x}"),
    }
}

/// One gate report as a table row.
fn gate_row(g: &Value) -> String {
    let unit = g["unit"].as_str().unwrap_or("");
    let eta = match (g["verdict"].as_str(), g["eta_ms"].as_u64()) {
        (Some("inconclusive"), Some(ms)) => format!(" (enough in ~{:.1}s)", ms as f64 / 1000.0),
        (Some("inconclusive"), None) => " (not at this rate)".into(),
        _ => String::new(),
    };
    // The sequential gates' estimate, bounds, limit and verdict, in words.
    let bounds = if g.get("lower").is_some() || g.get("upper").is_some() {
        format!("\n         {}", g["detail"].as_str().unwrap_or(""))
    } else {
        String::new()
    };
    format!(
        "  {:<6} {:<20} {:>10} / {:<10} {:>6}/{:<6} {}{eta}{bounds}",
        g["pool"].as_str().unwrap_or("?"),
        g["gate"].as_str().unwrap_or("?"),
        value(&g["value"], unit),
        value(&g["limit"], unit),
        g["samples"],
        g["needed"],
        g["verdict"].as_str().unwrap_or("?"),
    )
}

/// `rollout status` (a rollout view) for people: a headline and the candidate's gates.
pub fn render_rollout(view: &Value) -> String {
    let mut s = progress_line(view);
    for g in view["gates"].as_array().into_iter().flatten() {
        if g["pool"] == view["candidate"] {
            s.push('\n');
            s.push_str(&gate_row(g));
        }
    }
    s.push_str(&query_rows(view));
    s
}

/// One line per query gate: name, value against its bounds, verdict, and why if not a pass.
fn query_rows(v: &Value) -> String {
    let mut s = String::new();
    for q in v["queries"].as_array().into_iter().flatten() {
        let bound = |k: &str| q[k].as_f64().map_or("-".to_string(), |x| x.to_string());
        let verdict = q["verdict"].as_str().unwrap_or("?");
        s.push_str(&format!(
            "\n  query  {:<20} {:>10} in [{}, {}] {verdict}",
            q["name"].as_str().unwrap_or("?"),
            q["value"]
                .as_f64()
                .map_or("-".to_string(), |x| x.to_string()),
            bound("min"),
            bound("max"),
        ));
        if verdict != "pass" {
            s.push_str(&format!(": {}", q["detail"].as_str().unwrap_or("")));
        }
    }
    s
}

/// The rollout record in `status`, as one line.
pub fn render_record(record: &Value) -> String {
    if record["phase"].is_string() && !record["id"].is_null() {
        progress_line(record)
    } else {
        format!("rollout {record}")
    }
}

/// `gates` for people: every gate of both pools.
pub fn render_gates(v: &Value) -> String {
    // Without a rollout, the daemon says so and what the next one would start from.
    let mut s = v["note"].as_str().map_or_else(
        || {
            format!(
                "gates over {}s: candidate {}, stable {} ({})",
                v["window_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                v["candidate"].as_str().unwrap_or("?"),
                v["stable"].as_str().unwrap_or("?"),
                v["phase"].as_str().unwrap_or("?"),
            )
        },
        str::to_string,
    );
    for g in v["gates"].as_array().into_iter().flatten() {
        s.push('\n');
        s.push_str(&gate_row(g));
    }
    s.push_str(&query_rows(v));
    s
}

fn progress_line(view: &Value) -> String {
    let phase = view["phase"].as_str().unwrap_or("?");
    let steps = view["steps_percent"].as_array().map_or(0, Vec::len);
    let step = view["step"]
        .as_u64()
        .map(|s| format!(" step {}/{steps}", s + 1))
        .unwrap_or_default();
    let hold = view["hold_left_ms"]
        .as_u64()
        .map(|ms| format!(", {:.1}s left in the hold", ms as f64 / 1000.0))
        .unwrap_or_default();
    let reason = view["reason"]
        .as_str()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let waiting = view["waiting_for"]
        .as_str()
        .map(|h| format!(", waiting for the {h} hook"))
        .unwrap_or_default();
    format!(
        "rollout {} to {}: {phase}{reason}{step} at {}%{hold}{waiting}",
        view["id"],
        view["candidate"].as_str().unwrap_or("?"),
        view["candidate_percent"],
    )
}

/// Stdout for `--wait`: JSON lines, or a live block redrawn in place on a terminal.
struct Display {
    json: bool,
    /// Lines of the live block now on screen.
    drawn: usize,
}

impl Display {
    fn new(json: bool) -> Display {
        Display { json, drawn: 0 }
    }

    fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A change: a JSON line, or a permanent line above the live block.
    fn change(&mut self, view: &Value, generation: &Value) {
        if self.json {
            let gates: Vec<Value> = view["gates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["pool"] == view["candidate"])
                .map(|g| json!({ "gate": g["gate"], "value": g["value"], "lower": g["lower"], "upper": g["upper"], "limit": g["limit"], "verdict": g["verdict"] }))
                .collect();
            let line = json!({
                "event": "rollout", "id": view["id"], "phase": view["phase"], "step": view["step"],
                "candidate_percent": view["candidate_percent"], "reason": view["reason"],
                "gate": view["gate"], "hold_left_ms": view["hold_left_ms"],
                "generation": generation, "gates": gates,
            });
            self.line(&line.to_string());
        } else {
            self.clear();
            self.line(&progress_line(view));
        }
    }

    /// Redraws the live block (terminal only).
    fn progress(&mut self, view: &Value) {
        if self.json {
            return;
        }
        self.clear();
        let text = render_rollout(view);
        self.drawn = text.lines().count();
        self.line(&text);
    }

    /// Erases the live block.
    fn clear(&mut self) {
        if self.drawn > 0 {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            let _ = out.flush();
            self.drawn = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags_become_socket_words() {
        let (w, o) = take(&words(
            "rollout start --expect-gen 4 --to green --steps=10,100 --wait --timeout 30m",
        ))
        .unwrap();
        assert_eq!(w, words("rollout start to green steps 10,100 expect-gen 4"));
        assert_eq!(
            o,
            Options {
                wait: true,
                timeout: Some(Duration::from_secs(1800))
            }
        );
        let (w, o) = take(&words("weight 10")).unwrap();
        assert_eq!((w, o.wait), (words("weight 10"), false));
        assert!(take(&words("rollout start --speed 3")).is_err());
        assert!(take(&words("rollout start --to")).is_err());
        assert!(take(&words("rollout status --timeout 5s")).is_err());
    }

    #[test]
    fn phases_map_to_the_exit_table() {
        let code = |v: Value| outcome(&v);
        assert_eq!(code(json!({"phase": "promoted"})), Some(0));
        assert_eq!(
            code(json!({"phase": "rolled_back", "gate": "error_rate"})),
            Some(3)
        );
        assert_eq!(
            code(json!({"phase": "rolled_back", "gate": "operator"})),
            Some(4)
        );
        assert_eq!(
            code(json!({"phase": "aborted", "gate": "operator"})),
            Some(4)
        );
        assert_eq!(code(json!({"phase": "paused"})), Some(6));
        assert_eq!(code(json!({"phase": "idle"})), Some(8));
        assert_eq!(code(json!({"phase": "progressing"})), None);
        assert_eq!(code(json!({"phase": "baking"})), None);
    }

    #[test]
    fn gate_values_read_in_their_units() {
        assert_eq!(value(&json!(0.0052), "seconds"), "5.20ms");
        assert_eq!(value(&json!(0.1), "fraction"), "10.00%");
        assert_eq!(value(&json!(1.5), "ratio"), "1.50x");
        assert_eq!(value(&Value::Null, "ratio"), "-");
    }

    #[test]
    fn query_gates_and_a_pending_hook_are_shown_to_people() {
        let v = json!({"id": 3, "candidate": "green", "phase": "progressing", "step": 0,
            "steps_percent": [10, 100], "candidate_percent": 10.0, "waiting_for": "step",
            "queries": [{"name": "errors", "value": null, "max": 0.01, "min": null,
                         "verdict": "inconclusive", "detail": "empty result"}]});
        let shown = render_rollout(&v);
        assert!(shown.contains("waiting for the step hook"), "{shown}");
        assert!(
            shown.contains("query  errors")
                && shown.contains("[-, 0.01] inconclusive: empty result"),
            "{shown}"
        );
    }
}
