//! The fleet on a real etcd (started by the tests on loopback ports): one route table for
//! several instances, compare-and-swap changes, and instances joining late.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::etcd::Etcd;
use common::rollout::ctl;
use common::{client, get, proxy_with, send, upstream, wait_for, TestProxy, Upstream};
use switchyard::control::Control;

const DEADLINE: Duration = Duration::from_secs(15);

struct Instance {
    proxy: TestProxy,
    _control: Arc<Control>,
}

async fn instance(
    etcd: &Etcd,
    prefix: &str,
    name: &str,
    blue: &Upstream,
    green: &Upstream,
) -> Instance {
    let (proxy, control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        &etcd.fleet_toml(prefix, name),
        "",
        false,
    )
    .await;
    Instance {
        proxy,
        _control: control,
    }
}

fn generation(i: &Instance) -> u64 {
    i.proxy.routes.load().generation
}

fn green_bp(i: &Instance) -> u16 {
    i.proxy.routes.load().green_bp
}

/// Waits until every instance serves generation `g` with green at `bp`.
async fn all_apply(fleet: &[&Instance], g: u64, bp: u16) {
    wait_for(
        &format!("every instance on generation {g}, green {bp} bp"),
        DEADLINE,
        || async {
            fleet
                .iter()
                .all(|i| generation(i) == g && green_bp(i) == bp)
        },
    )
    .await;
}

async fn weight_reaches_every_instance(etcd: Etcd, prefix: &str) {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let mut fleet = Vec::new();
    for name in ["edge-1", "edge-2", "edge-3"] {
        fleet.push(instance(&etcd, prefix, name, &blue, &green).await);
    }
    // The first instance created the table; the others took it from etcd.
    let g0 = generation(&fleet[0]);
    wait_for("the three instances agree at start", DEADLINE, || async {
        fleet.iter().all(|i| generation(i) == generation(&fleet[0]))
    })
    .await;
    for (k, pct) in [10u16, 35, 100].into_iter().enumerate() {
        let from = &fleet[k % 3];
        let r = from.proxy.admin(&format!("weight {pct}")).await;
        assert_eq!(r["ok"], true, "{r}");
        let g = r["generation"].as_u64().unwrap();
        assert!(g > g0, "{r}");
        all_apply(&fleet.iter().collect::<Vec<_>>(), g, pct * 100).await;
    }
    // Every instance registered under its lease; exactly one leads; `status`, `fleet`
    // and the gauges show it.
    wait_for("three live instances and one leader", DEADLINE, || async {
        let mut leaders = 0.0;
        for i in &fleet {
            if i.proxy.gauge("switchyard_fleet_instances").await != 3.0
                || i.proxy.gauge("switchyard_store_up").await != 1.0
            {
                return false;
            }
            leaders += i.proxy.gauge("switchyard_fleet_leader").await;
        }
        leaders == 1.0
    })
    .await;
    let status = fleet[2].proxy.admin("status").await;
    let names: Vec<&str> = status["fleet"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edge-1", "edge-2", "edge-3"], "{status}");
    assert!(status["fleet"]["leader"].is_string(), "{status}");
    // `ctl ... --wait-applied` returns once every live instance runs the new generation.
    let (code, view, _) = ctl(
        &fleet[1].proxy.socket,
        &["weight", "20", "--wait-applied"],
        DEADLINE,
    )
    .await;
    assert_eq!(code, 0, "{view}");
    let g = view["generation"].as_u64().unwrap();
    for i in &fleet {
        assert!(
            generation(i) >= g,
            "returned before every instance applied {g}: {view}"
        );
        assert_eq!(green_bp(i), 2000);
    }
    wait_for("every view says all applied", DEADLINE, || async {
        let v = fleet[0].proxy.admin("fleet").await;
        v["all_applied"] == true && v["generation"].as_u64() >= Some(g)
    })
    .await;
    let r = fleet[0].proxy.admin("weight 100").await;
    all_apply(
        &fleet.iter().collect::<Vec<_>>(),
        r["generation"].as_u64().unwrap(),
        10_000,
    )
    .await;
    // At 100% every instance sends traffic to green.
    let c = client();
    for i in &fleet {
        let before = green.hits.load(std::sync::atomic::Ordering::SeqCst);
        let (status, _, _) = send(&c, get(&i.proxy.url("/"))).await;
        assert_eq!(status, 200);
        assert_eq!(
            green.hits.load(std::sync::atomic::Ordering::SeqCst),
            before + 1
        );
    }
    // A late joiner takes the table from etcd, not from its config (green 0%).
    let late = instance(&etcd, prefix, "edge-4", &blue, &green).await;
    assert_eq!(green_bp(&late), 10_000);
    assert_eq!(generation(&late), generation(&fleet[0]));
}

/// Acceptance 1, single-member etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_on_one_instance_is_applied_by_all_three_single_member() {
    weight_reaches_every_instance(Etcd::single(), "/t1/").await;
}

/// Acceptance 1, three-member etcd cluster (each instance lists all three members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_on_one_instance_is_applied_by_all_three_three_members() {
    weight_reaches_every_instance(Etcd::cluster(3), "/t3/").await;
}

/// Acceptance 7: two instances race `weight` on the same generation; exactly one wins,
/// the other answers `conflict` (ctl exits 7), and both end on the winner's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_weights_exactly_one_wins_each_generation() {
    let etcd = Etcd::single();
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let a = instance(&etcd, "/race/", "a", &blue, &green).await;
    let b = instance(&etcd, "/race/", "b", &blue, &green).await;
    wait_for("both instances agree at start", DEADLINE, || async {
        generation(&a) == generation(&b)
    })
    .await;
    for round in 0..10u16 {
        let g = generation(&a);
        let (pa, pb) = (round + 1, round + 51);
        let (la, lb) = (
            format!("weight {pa} expect-gen {g}"),
            format!("weight {pb} expect-gen {g}"),
        );
        let (ra, rb) = tokio::join!(a.proxy.admin(&la), b.proxy.admin(&lb));
        let won: Vec<&Value> = [&ra, &rb].into_iter().filter(|r| r["ok"] == true).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one wins: {ra} / {rb}");
        let lost = if ra["ok"] == true { &rb } else { &ra };
        assert_eq!(lost["error"]["code"], "conflict", "round {round}: {lost}");
        assert_eq!(won[0]["generation"].as_u64(), Some(g + 1), "{}", won[0]);
        let bp = if ra["ok"] == true { pa * 100 } else { pb * 100 };
        all_apply(&[&a, &b], g + 1, bp).await;
    }
    // Without expect-gen, concurrent changes never share a generation.
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..10u16 {
        let (la, lb) = (
            format!("weight {}", round + 1),
            format!("weight {}", round + 60),
        );
        let (ra, rb) = tokio::join!(a.proxy.admin(&la), b.proxy.admin(&lb));
        for r in [&ra, &rb] {
            if r["ok"] == true {
                assert!(
                    seen.insert(r["generation"].as_u64().unwrap()),
                    "two winners of one generation: {ra} / {rb}"
                );
            } else {
                assert_eq!(r["error"]["code"], "conflict", "{r}");
            }
        }
    }
    wait_for("both instances agree at the end", DEADLINE, || async {
        generation(&a) == generation(&b) && green_bp(&a) == green_bp(&b)
    })
    .await;
    // `ctl` exits 7 on a lost race.
    let stale = generation(&a) - 1;
    let (code, v, _) = ctl(
        &b.proxy.socket,
        &["weight", "5", "expect-gen", &stale.to_string()],
        DEADLINE,
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (7, Some("conflict")),
        "{v}"
    );
}
