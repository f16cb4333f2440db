//! A rollout across three instances on a real etcd: the leader promotes a healthy
//! candidate; a candidate that breaks the hash contract behind one follower only is rolled
//! back on every instance by that follower's own tripwire, within a second of the first bad
//! response, as the upstreams' own request logs show.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::etcd::Etcd;
use common::rollout::{rollout_toml, traffic, wait_rollout};
use common::{proxy_with, upstream, wait_for, TestProxy, Upstream};
use switchyard::control::Control;

const DEADLINE: Duration = Duration::from_secs(60);

struct Instance {
    proxy: TestProxy,
    _control: Arc<Control>,
}

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["phase"] == phase
}

/// Acceptance 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_fault_behind_one_follower_rolls_back_every_instance_at_once() {
    let etcd = Etcd::single();
    // Each instance has its own blue backend (one upstream each) and shares green, so a
    // fault can sit behind one instance only.
    let blues: Vec<Upstream> = vec![
        upstream("blue").await,
        upstream("blue").await,
        upstream("blue").await,
    ];
    let green = upstream("green").await;
    // Ticks 5 s apart: the leader's judgment cannot act within the second measured below,
    // only a tripwire can.
    let rollout = rollout_toml(&[
        ("steps", "[50, 100]"),
        ("hold", "\"1s\""),
        ("bake", "\"1s\""),
        ("window", "\"5s\""),
        ("tick", "\"5s\""),
        ("max_hold", "\"30s\""),
        ("gates.min_requests", "10"),
        ("gates.min_latency_samples", "10"),
        ("gates.tripwire_min_requests", "10"),
    ]);
    let names = ["edge-1", "edge-2", "edge-3"];
    let mut fleet = Vec::new();
    for (name, blue) in names.iter().zip(&blues) {
        let sections = format!("{}{}", etcd.fleet_toml("/trip/", name), rollout);
        let (proxy, control) = proxy_with(&[blue.addr], &[green.addr], &sections, "", false).await;
        fleet.push(Instance {
            proxy,
            _control: control,
        });
    }
    let mut leader = String::new();
    let started = Instant::now();
    while leader.is_empty() {
        let v = fleet[0].proxy.admin("fleet").await;
        if v["instances"].as_array().map(Vec::len) == Some(3) {
            leader = v["leader"].as_str().unwrap_or("").to_string();
        }
        assert!(started.elapsed() < DEADLINE, "no leader: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let li = names.iter().position(|n| *n == leader).unwrap();
    // "Instance 3": a follower, so the fault is never behind the leader.
    let faulty = (0..3).rev().find(|&i| i != li).unwrap();

    let loads: Vec<_> = fleet
        .iter()
        .map(|i| traffic(i.proxy.addr, 60, Duration::from_secs(120)))
        .collect();

    // A healthy candidate: the leader steps it to the end on traffic through all three.
    let r = fleet[faulty].proxy.admin("rollout start to green").await;
    assert_eq!(r["ok"], true, "{r}");
    for i in &fleet {
        let r = wait_rollout(&i.proxy, DEADLINE, phase_is("promoted")).await;
        assert_eq!(r["candidate"], "green", "{r}");
    }
    wait_for(
        "every instance sends all traffic to green",
        DEADLINE,
        || async {
            fleet
                .iter()
                .all(|i| i.proxy.routes.load().green_bp == 10_000)
        },
    )
    .await;

    // Blue as the candidate: once every instance sends it traffic, it answers without the
    // hash behind `faulty` only.
    let before: Vec<usize> = blues.iter().map(|b| b.hits.load(SeqCst)).collect();
    let r = fleet[li].proxy.admin("rollout start to blue").await;
    assert_eq!(r["ok"], true, "{r}");
    wait_for(
        "every instance sends the candidate traffic",
        DEADLINE,
        || async {
            blues
                .iter()
                .zip(&before)
                .all(|(b, &n)| b.hits.load(SeqCst) >= n + 10)
        },
    )
    .await;
    blues[faulty]
        .behavior
        .omit_hash_next
        .store(u64::MAX, SeqCst);
    for i in &fleet {
        let r = wait_rollout(&i.proxy, DEADLINE, phase_is("rolled_back")).await;
        // Only `faulty` counts hash violations: the gate names whose write this is.
        assert_eq!(r["gate"], "hash_violation", "{r}");
    }
    wait_for(
        "every instance sends all traffic to green again",
        DEADLINE,
        || async {
            fleet
                .iter()
                .all(|i| i.proxy.routes.load().green_bp == 10_000)
        },
    )
    .await;
    // Let the traffic run on (200 more requests on green, over a second at 180/s) so that
    // a request still sent to the candidate late would show in its log.
    let g0 = green.hits.load(SeqCst);
    wait_for("200 more requests after the rollback", DEADLINE, || async {
        green.hits.load(SeqCst) >= g0 + 200
    })
    .await;
    for t in loads {
        let samples = t.stop().await;
        assert!(samples.iter().filter(|s| s.status == 200).count() > 0);
    }

    let first_bad = blues[faulty]
        .behavior
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|(_, bad)| *bad)
        .map(|(at, _)| *at)
        .expect("the faulty blue answered at least once");
    for (k, blue) in blues.iter().enumerate() {
        let log = blue.behavior.log.lock().unwrap();
        if let Some((last, _)) = log.iter().rev().find(|(at, _)| *at >= first_bad) {
            let after = last.duration_since(first_bad);
            println!("instance {k}: last candidate request {after:?} after the first bad response");
            assert!(
                after <= Duration::from_secs(1),
                "instance {k} sent a request to the candidate {after:?} after the first bad response"
            );
        }
    }
}
