//! Gating rollout hooks end to end (`pre_rollout`, `step`, `pre_promote`): a receiver in the
//! test (a real HTTP server on 127.0.0.1:0) answers go or no-go; the rollout waits for it
//! without blocking the controller, and operators keep control meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::hooks::{hook_toml, Receiver};
use common::rollout::{ctl, rollout_toml, traffic, wait_rollout};
use common::*;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "smoke-token";

fn split() -> String {
    format!("\n[split]\noverride_token = \"{TOKEN}\"\n")
}

/// A `pre_rollout` hook answering 500: the rollout is aborted (`hook_failed`) before any
/// traffic moved, and `ctl rollout start --wait` exits 4 naming the hook and its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_rollout_hook_moves_no_traffic_and_ctl_exits_4() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let rx = Receiver::start(500, Duration::ZERO).await;
    let toml = format!(
        "{}{}",
        rollout_toml(&[]),
        hook_toml(
            "smoke",
            r#"["pre_rollout"]"#,
            &rx.url("/smoke"),
            "retries = 1\ntimeout = \"2s\""
        ),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 200, Duration::from_secs(30));
    let words = ["rollout", "start", "--to", "green", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    t.stop().await;
    assert_eq!(
        (code, summary["phase"].as_str(), summary["gate"].as_str()),
        (4, Some("aborted"), Some("hook_failed")),
        "code {code}: {stdout}"
    );
    let reason = summary["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("hook_failed") && reason.contains("\"smoke\"") && reason.contains("500"),
        "code {code}: {stdout}"
    );
    assert_eq!(green.hits.load(SeqCst), 0, "traffic reached the candidate");
    assert_eq!(p.routes.load().green_bp, 0);
    let calls = rx.calls("/smoke");
    assert_eq!(calls.len(), 2, "one attempt and one retry: {calls:?}");
    let b = &calls[0].body;
    assert_eq!(
        (b["event"].as_str(), b["hook"].as_str()),
        (Some("pre_rollout"), Some("smoke")),
        "{b}"
    );
    assert_eq!(b["rollout"]["candidate"], "green", "{b}");
    assert_eq!(b["rollout"]["candidate_percent"], 0.0, "{b}");
    assert!(b["hash"].is_string() && b["generation"].is_u64(), "{b}");
    let status = p.admin("rollout status").await;
    assert_eq!(status["hooks"]["smoke"]["failures"], 1, "{status}");
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, r#"switchyard_rollbacks_total{reason="hook_failed"}"#),
        1.0
    );
}

/// Passing gating hooks: a smoke test on `pre_rollout` reaches the candidate through the
/// proxy with the override header, and one receiver sees `pre_rollout`, each `step`,
/// `pre_promote` and then `promoted`, in order, on a promoted rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_gating_hooks_see_their_events_in_order_on_a_promoted_rollout() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let smoke = Receiver::start(200, Duration::ZERO).await;
    let rx = Receiver::start(200, Duration::ZERO).await;
    let all = r#"["pre_rollout", "step", "pre_promote", "promoted"]"#;
    let toml = format!(
        "{}{}{}{}",
        rollout_toml(&[]),
        split(),
        hook_toml("smoke", r#"["pre_rollout"]"#, &smoke.url("/smoke"), ""),
        hook_toml("confirm", all, &rx.url("/all"), ""),
    );
    let (p, control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    *smoke.probe.lock().unwrap() = Some((p.addr, TOKEN.to_string()));
    let t = traffic(p.addr, 400, Duration::from_secs(60));
    let words = ["rollout", "start", "--to", "green", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    t.stop().await;
    assert_eq!(
        (code, summary["phase"].as_str()),
        (0, Some("promoted")),
        "code {code}: {stdout}"
    );
    wait_for("the promoted notification", WAIT, || async {
        rx.calls("/all").len() >= 5
    })
    .await;
    let calls = rx.calls("/all");
    let events: Vec<&str> = calls
        .iter()
        .map(|c| c.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["pre_rollout", "step", "step", "pre_promote", "promoted"],
        "{calls:?}"
    );
    let hash = control.config().constitution.hash.clone();
    let percents: Vec<f64> = calls[..4]
        .iter()
        .map(|c| c.body["rollout"]["candidate_percent"].as_f64().unwrap())
        .collect();
    // Each gating call comes before its weight: 0% before the first step, then 10%, 50%,
    // and 100% (the bake) before promotion.
    assert_eq!(percents, [0.0, 10.0, 50.0, 100.0], "{calls:?}");
    for c in &calls {
        assert_eq!(c.body["hash"], hash.as_str(), "{:?}", c.body);
        assert_eq!(c.body["rollout"]["id"], 1, "{:?}", c.body);
    }
    let probes: Vec<_> = smoke.calls("/smoke").into_iter().map(|c| c.probe).collect();
    assert_eq!(
        probes,
        [Some("green".to_string())],
        "the smoke test saw the candidate"
    );
}

/// A `step` hook answering 503 rolls the rollout back, naming the hook and its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_hook_rolls_back() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let rx = Receiver::start(503, Duration::ZERO).await;
    let toml = format!(
        "{}{}",
        rollout_toml(&[]),
        hook_toml("confirm", r#"["step"]"#, &rx.url("/step"), "retries = 0"),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(60));
    let words = ["rollout", "start", "--to", "green", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    t.stop().await;
    assert_eq!(
        (code, summary["phase"].as_str(), summary["gate"].as_str()),
        (3, Some("rolled_back"), Some("hook_failed")),
        "code {code}: {stdout}"
    );
    let reason = summary["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"confirm\"") && reason.contains("503"),
        "code {code}: {stdout}"
    );
    assert_eq!(p.routes.load().green_bp, 0);
    let calls = rx.calls("/step");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["rollout"]["candidate_percent"], 10.0);
}

/// A hook that has not answered yet: the rollout shows what it waits for, and `pause` and
/// `abort` act at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_and_abort_while_a_hook_is_pending() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let rx = Receiver::start(200, Duration::from_secs(20)).await;
    let toml = format!(
        "{}{}",
        rollout_toml(&[]),
        hook_toml(
            "slow",
            r#"["pre_rollout"]"#,
            &rx.url("/slow"),
            "timeout = \"30s\"\nretries = 0"
        ),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    wait_for("the hook called", WAIT, || async {
        !rx.calls("/slow").is_empty()
    })
    .await;
    let r = wait_rollout(&p, WAIT, |r| r["waiting_for"] == "pre_rollout").await;
    assert_eq!(r["candidate_percent"], 0.0, "{r}");
    let paused = p.admin("rollout pause").await;
    assert_eq!(paused["rollout"]["phase"], "paused", "{paused}");
    let aborted = p.admin("rollout abort").await;
    assert_eq!(aborted["rollout"]["phase"], "aborted", "{aborted}");
    assert_eq!(p.routes.load().green_bp, 0);
}

/// A reload changes the hooks of the next rollout, never those of the running one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_hooks_to_the_next_rollout_only() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let ok = Receiver::start(200, Duration::from_secs(1)).await;
    let bad = Receiver::start(500, Duration::ZERO).await;
    let toml = format!(
        "{}{}",
        rollout_toml(&[]),
        hook_toml("confirm", r#"["step"]"#, &ok.url("/step"), "retries = 0"),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 400, Duration::from_secs(60));
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    wait_for("the first step hook call", WAIT, || async {
        !ok.calls("/step").is_empty()
    })
    .await;
    let path = p.dir.path().join("switchyard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&ok.url("/step"), &bad.url("/step"))).unwrap();
    let reloaded = p.admin("reload").await;
    assert_eq!(reloaded["ok"], true, "{reloaded}");
    let r = wait_rollout(&p, WAIT, |r| r["phase"] == "promoted").await;
    assert_eq!(ok.calls("/step").len(), 2, "{r}");
    assert!(bad.calls("/step").is_empty());
    // The next rollout (back to blue) uses the reloaded hook, which says no.
    let words = ["rollout", "start", "--to", "blue", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    t.stop().await;
    assert_eq!(
        (code, summary["gate"].as_str()),
        (3, Some("hook_failed")),
        "{stdout}"
    );
    assert_eq!(bad.calls("/step").len(), 1);
}

/// A gating hook that never answers ends after its timeout and retries: no-go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_never_answers_ends_at_its_timeout_times_its_attempts() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let rx = Receiver::start(200, Duration::from_secs(60)).await;
    let toml = format!(
        "{}{}",
        rollout_toml(&[]),
        hook_toml(
            "mute",
            r#"["pre_rollout"]"#,
            &rx.url("/mute"),
            "timeout = \"300ms\"\nretries = 1"
        ),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(&p, WAIT, |r| r["phase"] == "aborted").await;
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"mute\" no answer within 300ms (after 2 attempts)"),
        "{r}"
    );
    assert_eq!(rx.calls("/mute").len(), 2, "{r}");
    assert_eq!(green.hits.load(SeqCst), 0);
}
