//! The fleet's merged gate evidence on a real etcd: every instance publishes its pools'
//! totals under its lease (`stats/NAME`), and the leader's gates judge the merge.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::etcd::Etcd;
use common::rollout::rollout_toml;
use common::{client, get, proxy_with, send, upstream, wait_for, TestProxy, Upstream};
use switchyard::control::Control;

const DEADLINE: Duration = Duration::from_secs(20);

struct Instance {
    proxy: TestProxy,
    _control: Arc<Control>,
}

async fn instance(
    etcd: &Etcd,
    name: &str,
    blue: &Upstream,
    green: &Upstream,
    rollout: &str,
) -> Instance {
    let sections = format!("{}{}", etcd.fleet_toml("/stats/", name), rollout);
    let (proxy, control) = proxy_with(&[blue.addr], &[green.addr], &sections, "", false).await;
    Instance {
        proxy,
        _control: control,
    }
}

async fn requests(i: &Instance, n: usize) {
    let c = client();
    for _ in 0..n {
        let (status, _, _) = send(&c, get(&i.proxy.url("/"))).await;
        assert_eq!(status, 200);
    }
}

/// Reads admin command `cmd` on `i` until `cond` holds; returns that answer.
async fn poll(what: &str, i: &Instance, cmd: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = i.proxy.admin(cmd).await;
        if cond(&v) {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn merged(view: &Value, pool: &str) -> u64 {
    view["merged"]["pools"][pool]["requests"]
        .as_u64()
        .unwrap_or(0)
}

fn evidence(gates: &Value, part: &str) -> u64 {
    gates["evidence"][part]["requests"].as_u64().unwrap_or(0)
}

/// Acceptance 3: traffic split 80/15/5 over three instances; the leader's merged counts are
/// the sum of the three, and a rollout on the leader judges samples that reached only the
/// other instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_judges_the_merge_of_every_instance() {
    let etcd = Etcd::single();
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // One long step, so the rollout stays on it while the test reads its evidence.
    let rollout = rollout_toml(&[
        ("steps", "[50, 100]"),
        ("hold", "\"60s\""),
        ("max_hold", "\"120s\""),
        ("settle", "\"100ms\""),
    ]);
    let names = ["edge-1", "edge-2", "edge-3"];
    let mut fleet = Vec::new();
    for name in names {
        fleet.push(instance(&etcd, name, &blue, &green, &rollout).await);
    }
    let view = poll(
        "three live instances and a leader",
        &fleet[0],
        "fleet",
        |v| v["instances"].as_array().map(Vec::len) == Some(3) && v["leader"].is_string(),
    )
    .await;
    let li = names.iter().position(|n| view["leader"] == *n).unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();

    // 80 / 15 / 5 requests; the leader gets the 5, so its own share cannot reach the sum.
    let order = [followers[0], followers[1], li];
    for (&i, n) in order.iter().zip([80, 15, 5]) {
        requests(&fleet[i], n).await;
    }
    let last = poll(
        "the leader's merged blue count equals the sum, 100",
        &fleet[li],
        "fleet",
        |v| merged(v, "blue") == 100,
    )
    .await;
    assert_eq!(
        last["merged"]["from"].as_array().unwrap().len(),
        3,
        "{last}"
    );
    assert_eq!(merged(&last, "green"), 0, "{last}");
    // A follower reads the same totals.
    poll(
        "a follower's merged count is 100 too",
        &fleet[followers[1]],
        "fleet",
        |v| merged(v, "blue") == 100,
    )
    .await;

    // A rollout driven by the leader: traffic through the followers only reaches its gates.
    let r = fleet[followers[0]]
        .proxy
        .admin("rollout start to green")
        .await;
    assert_eq!(r["ok"], true, "{r}");
    wait_for("every instance at the first step", DEADLINE, || async {
        fleet
            .iter()
            .all(|i| i.proxy.routes.load().green_bp == 5_000)
    })
    .await;
    // Rounds of 15 requests through the followers (the step's settle drops the first ones)
    // until the leader's step evidence holds 60 of them.
    let mut sent = 0u64;
    for _ in 0..100 {
        requests(&fleet[followers[0]], 10).await;
        requests(&fleet[followers[1]], 5).await;
        sent += 15;
        let g = fleet[li].proxy.admin("gates").await;
        if evidence(&g, "candidate_step") + evidence(&g, "stable_step") >= 60 {
            break;
        }
    }
    let gates = poll(
        "the leader's step evidence reaches 60 requests",
        &fleet[li],
        "gates",
        |g| evidence(g, "candidate_step") + evidence(g, "stable_step") >= 60,
    )
    .await;
    let judged = evidence(&gates, "candidate_step") + evidence(&gates, "stable_step");
    // Only the followers' samples, none twice: at most what they were sent since the start.
    assert!(judged <= sent, "judged {judged} of {sent} sent: {gates}");
    assert!(evidence(&gates, "candidate_step") > 0, "{gates}");
    assert_eq!(gates["phase"], "progressing", "{gates}");
}
