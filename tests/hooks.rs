//! Rollout hooks end to end: a webhook receiver in the test (a real HTTP server on
//! 127.0.0.1:0) records what the proxy sends on each rollout event; receivers that are down
//! or slow must not delay a rollback.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::hooks::{hook_toml, Receiver};
use common::rollout::{ctl, rollout_toml, traffic, wait_rollout};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A promoted rollout, then a rolled-back one: the json hook sees `promoted` then
/// `rolled_back` with the documented body (and its token from a file), the slack hook a text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_records_the_events_of_a_promoted_and_a_rolled_back_rollout_in_order() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let rx = Receiver::start(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "Bearer hook-token\n").unwrap();
    let events = r#"["promoted", "rolled_back", "paused", "aborted"]"#;
    let toml = format!(
        "{}{}{}",
        rollout_toml(&[]),
        hook_toml(
            "audit",
            events,
            &rx.url("/json"),
            &format!(
                "timeout = \"2s\"\nretries = 1\nheaders = {{ Authorization = {{ file = \"{}\" }} }}",
                token.display()
            )
        ),
        hook_toml(
            "chat",
            r#"["promoted", "rolled_back"]"#,
            &rx.url("/slack"),
            "format = \"slack\""
        ),
    );
    let (p, control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let hash = control.config().constitution.hash.clone();
    let t = traffic(p.addr, 400, Duration::from_secs(60));
    wait_for("traffic on blue", WAIT, || async {
        blue.hits.load(SeqCst) >= 100
    })
    .await;
    let words = ["rollout", "start", "--to", "green", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    assert_eq!(
        (code, summary["phase"].as_str()),
        (0, Some("promoted")),
        "{stdout}"
    );
    // Green is stable now; a rollout back to a failing blue is rolled back.
    blue.behavior.fail_every.store(5, SeqCst);
    let words = ["rollout", "start", "--to", "blue", "--wait"];
    let (code, summary, stdout) = ctl(&p.socket, &words, WAIT).await;
    assert_eq!(
        (code, summary["phase"].as_str()),
        (3, Some("rolled_back")),
        "{stdout}"
    );
    t.stop().await;
    wait_for("both events at both hooks", WAIT, || async {
        rx.calls("/json").len() >= 2 && rx.calls("/slack").len() >= 2
    })
    .await;

    let json = rx.calls("/json");
    let kinds: Vec<&str> = json
        .iter()
        .map(|c| c.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["promoted", "rolled_back"], "{json:?}");
    for (c, (id, candidate)) in json.iter().zip([(1, "green"), (2, "blue")]) {
        let b = &c.body;
        assert_eq!(c.authorization.as_deref(), Some("Bearer hook-token"));
        assert_eq!(b["hook"], "audit", "{b}");
        assert_eq!(b["hash"], hash.as_str(), "{b}");
        assert_eq!(b["rollout"]["id"], id, "{b}");
        assert_eq!(b["rollout"]["candidate"], candidate, "{b}");
        assert!(b["generation"].as_u64().unwrap() > 0, "{b}");
        assert!(b["step"].is_u64(), "{b}");
        for key in ["candidate_percent", "stable_percent"] {
            assert!(b["rollout"][key].is_number(), "{key}: {b}");
        }
    }
    let (promoted, rolled_back) = (&json[0].body, &json[1].body);
    assert_eq!(
        promoted["rollout"]["candidate_percent"], 100.0,
        "{promoted}"
    );
    assert!(promoted["gate"].is_null() && promoted["reason"].is_null());
    assert_eq!(
        rolled_back["rollout"]["candidate_percent"], 0.0,
        "{rolled_back}"
    );
    let gate = rolled_back["gate"].as_str().unwrap();
    assert!(gate.starts_with("error_rate"), "{rolled_back}");
    assert!(rolled_back["reason"].is_string(), "{rolled_back}");
    let evidence = rolled_back["evidence"].as_array().unwrap();
    assert!(
        evidence
            .iter()
            .any(|e| e["gate"] == gate && e["value"].is_number()),
        "{rolled_back}"
    );
    assert!(
        rolled_back["generation"].as_u64() > promoted["generation"].as_u64(),
        "{json:?}"
    );

    let slack = rx.calls("/slack");
    let texts: Vec<&str> = slack
        .iter()
        .map(|c| c.body["text"].as_str().unwrap())
        .collect();
    assert!(
        texts[0].contains("rollout 1 to green promoted") && texts[1].contains("rolled back"),
        "{texts:?}"
    );
    let status = p.admin("rollout status").await;
    assert_eq!(status["hooks"]["audit"]["sent"], 2, "{status}");
    assert_eq!(status["hooks"]["audit"]["failures"], 0, "{status}");
}

/// A hook whose receiver is down and one that answers after 20 s: the hash tripwire still
/// rolls back within the second the same scenario takes without hooks (tests/rollout.rs,
/// acceptance 4), and the failure is counted and shown in `rollout status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_or_slow_delay_no_rollback() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let slow = Receiver::start(200, Duration::from_secs(20)).await;
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let events = r#"["rolled_back", "paused", "aborted", "promoted"]"#;
    let toml = format!(
        "{}{}{}",
        rollout_toml(&[
            ("hold", "\"60s\""),
            ("max_hold", "\"60s\""),
            ("window", "\"10s\""),
            ("tick", "\"10s\""),
        ]),
        hook_toml(
            "down",
            events,
            &format!("http://{down}/"),
            "retries = 3\ntimeout = \"1s\""
        ),
        hook_toml(
            "slow",
            events,
            &slow.url("/"),
            "retries = 2\ntimeout = \"10s\""
        ),
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &toml, "", false).await;
    let t = traffic(p.addr, 300, Duration::from_secs(30));
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    wait_for("traffic on green", WAIT, || async {
        green.hits.load(SeqCst) >= 20
    })
    .await;
    let flipped = Instant::now();
    green.behavior.omit_hash_next.store(1, SeqCst);
    let r = wait_rollout(&p, WAIT, |r| r["phase"] == "rolled_back").await;
    let took = flipped.elapsed();
    println!("rollback with a down and a slow hook took {took:?}");
    assert_eq!(r["gate"], "hash_violation", "{r}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    t.stop().await;
    wait_for("the down hook's failure counted", WAIT, || async {
        metric(
            &p.metrics().await,
            r#"switchyard_hook_failures_total{hook="down"}"#,
        ) >= 1.0
    })
    .await;
    let status = p.admin("rollout status").await;
    let down = &status["hooks"]["down"];
    assert_eq!(down["failures"], 1, "{status}");
    assert!(
        down["last_error"].as_str().unwrap().contains("4 attempts"),
        "{status}"
    );
    let status = p.admin("status").await;
    assert_eq!(status["hooks"]["down"]["failures"], 1, "{status}");
    assert_eq!(slow.calls("/").len(), 1, "the slow receiver got the event");
}
