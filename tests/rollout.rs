//! The rollout controller end to end: real traffic through the proxy to in-process blue and
//! green upstreams whose faults the test switches on, holds of a second, and `ctl --wait`.
//! One test per acceptance point of the rollout issue (1–7; 8 and 9 are in rollout_cli.rs).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::rollout::{ctl, rollout_toml, traffic, wait_rollout};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

async fn green_percent(p: &TestProxy) -> f64 {
    p.admin("status").await["green_percent"].as_f64().unwrap()
}

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["phase"] == phase
}

/// Acceptance 1: 10 → 50 → 100 → bake → promoted, `--wait` exits 0, green becomes stable,
/// and the next rollout (no `to`) moves traffic back to blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_green_is_promoted_step_by_step_and_the_next_rollout_goes_to_blue() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, control) = proxy_with(&[blue.addr], &[green.addr], &rollout_toml(&[]), "", false).await;
    let mut events = control.subscribe();
    let t = traffic(p.addr, 400, Duration::from_secs(40));
    wait_for("traffic on blue", WAIT, || async {
        blue.hits.load(SeqCst) >= 100
    })
    .await;
    let gates = p.admin("gates").await;
    assert_eq!(
        (gates["phase"].as_str(), gates["candidate"].as_str()),
        (Some("idle"), Some("green")),
        "{gates}"
    );
    assert_eq!(gates["gates"].as_array().unwrap().len(), 13, "{gates}");
    let words = [
        "rollout",
        "start",
        "--to",
        "green",
        "--wait",
        "--timeout",
        "30s",
    ];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(summary["phase"], "promoted", "{summary}");
    assert!(
        summary["generation"].as_u64().is_some() && summary["duration_ms"].as_u64().is_some(),
        "{summary}"
    );
    let changes: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["event"] == "rollout")
        .collect();
    assert!(
        changes.iter().any(|c| c["phase"] == "baking"),
        "one JSON line per change: {stdout}"
    );
    let status = p.admin("status").await;
    assert_eq!(
        (status["stable"].as_str(), status["green_percent"].as_f64()),
        (Some("green"), Some(100.0)),
        "{status}"
    );

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e["event"] == "rollout" {
            seen.push(format!("{}{}", e["phase"].as_str().unwrap(), e["step"]));
        }
    }
    assert_eq!(
        seen,
        [
            "progressing0",
            "progressing1",
            "progressing2",
            "baking2",
            "promotednull"
        ]
        .map(String::from)
    );
    assert_eq!(
        metric(
            &p.metrics().await,
            r#"switchyard_rollout_phase{phase="promoted"}"#
        ),
        1.0
    );

    let blue_before = blue.hits.load(SeqCst);
    let (code, summary, stdout) = ctl(&p.socket, &["rollout", "start", "--wait"], WAIT).await;
    assert_eq!(
        (code, summary["candidate"].as_str()),
        (0, Some("blue")),
        "{stdout}"
    );
    let status = p.admin("status").await;
    assert_eq!(
        (status["stable"].as_str(), status["green_percent"].as_f64()),
        (Some("blue"), Some(0.0)),
        "{status}"
    );
    assert!(blue.hits.load(SeqCst) > blue_before + 100);
    t.stop().await;
}

/// Acceptance 2: 10% of green's answers are 500 → rolled back by an error gate, exit 3 with
/// the gate and its values in the summary; afterwards every request reaches blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_errors_roll_back_by_the_error_gate_with_exit_3() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    green.behavior.fail_every.store(10, SeqCst);
    let (p, _control) =
        proxy_with(&[blue.addr], &[green.addr], &rollout_toml(&[]), "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(30));
    wait_for("traffic on blue", WAIT, || async {
        blue.hits.load(SeqCst) >= 100
    })
    .await;
    let (code, summary, stdout) = ctl(
        &p.socket,
        &["rollout", "start", "--to", "green", "--wait"],
        WAIT,
    )
    .await;
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(summary["phase"], "rolled_back", "{summary}");
    let gate = summary["gate"].as_str().unwrap();
    assert!(
        ["error_rate", "error_rate_relative", "error_rate_tripwire"].contains(&gate),
        "{summary}"
    );
    let trip = &summary["trip"];
    assert!(
        trip["value"].as_f64().unwrap() > trip["limit"].as_f64().unwrap(),
        "{summary}"
    );
    println!("acceptance 2: rolled back by {gate}: {}", trip["detail"]);
    t.stop().await;

    assert_eq!(green_percent(&p).await, 0.0);
    let (c, before) = (client(), green.hits.load(SeqCst));
    for _ in 0..50 {
        let (status, headers, _) = send(&c, get(&p.url("/"))).await;
        assert_eq!(
            (status.as_u16(), headers["x-upstream"] == "blue"),
            (200, true)
        );
    }
    assert_eq!(green.hits.load(SeqCst), before);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(r#"switchyard_rollbacks_total{{reason="{gate}"}}"#)
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"switchyard_rollout_phase{phase="rolled_back"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"switchyard_rollout_phase{phase="progressing"}"#),
        0.0
    );
}

/// Acceptance 3: green answers 50 ms late → rolled back by a P99 gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_ms_of_added_latency_rolls_back_by_the_p99_gate() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    green.behavior.delay_ms.store(50, SeqCst);
    let toml = rollout_toml(&[
        ("gates.p99_max", "\"45ms\""),
        ("gates.p99_min_delta", "\"20ms\""),
    ]);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(30));
    wait_for("traffic on blue", WAIT, || async {
        blue.hits.load(SeqCst) >= 100
    })
    .await;
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(&p, WAIT, |r| r["phase"] != "progressing").await;
    assert_eq!(r["phase"], "rolled_back", "{r}");
    assert!(
        ["p99_absolute", "p99_relative"].contains(&r["gate"].as_str().unwrap()),
        "{r}"
    );
    assert!(
        r["trip"]["value"].as_f64().unwrap() > r["trip"]["limit"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(green_percent(&p).await, 0.0);
    t.stop().await;
}

/// Acceptance 4: one response without the hash header → rolled back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_response_without_the_hash_rolls_back_at_once() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // A long hold: nothing but the violation can end this rollout. The first tick comes
    // 10 s after the start, so a rollback before that is the tripwire's.
    let toml = rollout_toml(&[
        ("hold", "\"60s\""),
        ("max_hold", "\"60s\""),
        ("window", "\"10s\""),
        ("tick", "\"10s\""),
    ]);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 300, Duration::from_secs(30));
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    wait_for("traffic on green", WAIT, || async {
        green.hits.load(SeqCst) >= 20
    })
    .await;
    let flipped = Instant::now();
    green.behavior.omit_hash_next.store(1, SeqCst);
    let r = wait_rollout(&p, WAIT, phase_is("rolled_back")).await;
    let took = flipped.elapsed();
    assert_eq!(r["gate"], "hash_violation", "{r}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(green_percent(&p).await, 0.0);
    t.stop().await;
}

/// Acceptance 5: green answers every request with 500 under ≥ 200 requests/s; the last
/// request routed to green is less than 1 s after the first failing response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_failing_stops_reaching_green_within_a_second() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    green.behavior.status.store(500, SeqCst);
    // Ticks 10 s apart: only the tripwire can act within the second measured here.
    let toml = rollout_toml(&[
        ("hold", "\"60s\""),
        ("max_hold", "\"60s\""),
        ("window", "\"10s\""),
        ("tick", "\"10s\""),
    ]);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(20));
    wait_for("traffic on blue", WAIT, || async {
        blue.hits.load(SeqCst) >= 100
    })
    .await;
    let started = Instant::now();
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(&p, WAIT, phase_is("rolled_back")).await;
    let seen_at = started.elapsed();
    // Let any request still routed to green show up before counting.
    let after = t.count(|_| true);
    wait_for("a second of traffic after the rollback", WAIT, || async {
        t.count(|_| true) >= after + 400
    })
    .await;
    let samples = t.stop().await;
    let first_fail = samples
        .iter()
        .filter(|s| s.green && s.status == 500)
        .map(|s| s.done)
        .min()
        .unwrap();
    let last_green = samples
        .iter()
        .filter(|s| s.green)
        .map(|s| s.sent)
        .max()
        .unwrap();
    let in_window = samples
        .iter()
        .filter(|s| s.sent >= started && s.sent <= started + seen_at)
        .count();
    let rate = in_window as f64 / seen_at.as_secs_f64().max(0.001);
    let ms = |i: Instant| i.saturating_duration_since(started).as_secs_f64() * 1000.0;
    let gap = last_green.saturating_duration_since(first_fail);
    println!(
        "acceptance 5: rollout started at 0 ms; first failing response from green at {:.1} ms; \
         last request routed to green sent at {:.1} ms; gap {:.1} ms; gate {}; {:.0} requests/s",
        ms(first_fail),
        ms(last_green),
        gap.as_secs_f64() * 1000.0,
        r["gate"],
        rate
    );
    assert!(gap < Duration::from_secs(1), "gap {gap:?}");
    assert!(rate >= 200.0, "only {rate:.0} requests/s");
    assert!(samples
        .iter()
        .filter(|s| s.sent > last_green)
        .all(|s| s.blue || !s.green));
}

/// Acceptance 6: too little traffic for the gates → paused (insufficient_data), exit 6,
/// never rolled back or promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_pauses_with_insufficient_data_and_exit_6() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let toml = rollout_toml(&[
        ("max_hold", "\"2s\""),
        ("gates.min_requests", "100000"),
        ("gates.min_latency_samples", "100000"),
    ]);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 40, Duration::from_secs(20));
    let (code, summary, stdout) = ctl(&p.socket, &["rollout", "start", "--wait"], WAIT).await;
    assert_eq!(code, 6, "{stdout}");
    assert_eq!(
        (summary["phase"].as_str(), summary["reason"].as_str()),
        (Some("paused"), Some("insufficient_data")),
        "{summary}"
    );
    assert_eq!(summary["candidate_percent"], 10.0);
    assert_eq!(green_percent(&p).await, 10.0);
    t.stop().await;
}

/// Acceptance 7: both pools failing → paused (both_degraded), no flip onto the broken
/// stable pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_pools_failing_pause_with_both_degraded_and_do_not_flip() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    blue.behavior.status.store(500, SeqCst);
    green.behavior.status.store(500, SeqCst);
    let (p, _control) =
        proxy_with(&[blue.addr], &[green.addr], &rollout_toml(&[]), "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(20));
    wait_for("blue's errors", WAIT, || async {
        t.count(|s| s.blue && s.status == 500) >= 60
    })
    .await;
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(&p, WAIT, |r| r["phase"] != "progressing").await;
    assert_eq!(
        (r["phase"].as_str(), r["reason"].as_str()),
        (Some("paused"), Some("both_degraded")),
        "{r}"
    );
    // It stays there: gates are still judged, but stable is no better.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let r = p.admin("rollout status").await;
        assert_eq!(r["rollout"]["reason"], "both_degraded", "{r}");
        assert_eq!(green_percent(&p).await, 10.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.stop().await;
}
