//! The fleet when etcd goes away: every instance keeps serving its last table, changes are
//! refused with `store_unavailable` except `rollback`, which applies on each instance at
//! once and reaches etcd when it returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use common::etcd::Etcd;
use common::load::{load, Counts};
use common::{proxy_with, upstream, wait_for, TestProxy};

const DEADLINE: Duration = Duration::from_secs(20);
/// The longest a client loop runs.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// How long etcd stays down under load (acceptance 5).
const OUTAGE: Duration = Duration::from_secs(30);

fn table_in_etcd(etcd: &Etcd, prefix: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoints()[0],
            "--command-timeout",
            "2s",
        ])
        .args(["get", &format!("{prefix}table"), "--print-value-only"])
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Acceptance 5. etcd stays down for 30 s under load (and until every instance served 300
/// requests without it); no client request may fail in that time or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_serving_refuses_weight_and_rollback_applies_locally_then_reaches_etcd() {
    let mut etcd = Etcd::single();
    let prefix = "/down/";
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let mut fleet: Vec<TestProxy> = Vec::new();
    for name in ["edge-1", "edge-2", "edge-3"] {
        let (p, _control) = proxy_with(
            &[blue.addr],
            &[green.addr],
            &etcd.fleet_toml(prefix, name),
            "",
            false,
        )
        .await;
        fleet.push(p);
    }
    let r = fleet[0].admin("weight 30").await;
    assert_eq!(r["ok"], true, "{r}");
    let g = r["generation"].as_u64().unwrap();
    wait_for("every instance at 30%", DEADLINE, || async {
        fleet
            .iter()
            .all(|p| p.routes.load().generation == g && p.routes.load().green_bp == 3000)
    })
    .await;

    let stop = CancellationToken::new();
    let counts: Vec<Arc<Counts>> = (0..3).map(|_| Arc::new(Counts::default())).collect();
    let loads: Vec<_> = fleet
        .iter()
        .zip(&counts)
        .map(|(p, c)| load(p.addr, stop.clone(), c.clone(), LOAD_LIMIT))
        .collect();

    etcd.kill(0);
    let killed = Instant::now();
    let served_before: Vec<usize> = counts
        .iter()
        .map(|c| c.ok.load(Ordering::Relaxed))
        .collect();
    // A change other than rollback is refused, and nothing changes.
    for p in &fleet {
        let r = p.admin("weight 50").await;
        assert_eq!(r["error"]["code"], "store_unavailable", "{r}");
        assert_eq!(p.routes.load().green_bp, 3000);
    }
    wait_for(
        "30 s and 300 requests per instance with etcd down",
        OUTAGE + DEADLINE,
        || async {
            killed.elapsed() >= OUTAGE
                && counts
                    .iter()
                    .zip(&served_before)
                    .all(|(c, b)| c.ok.load(Ordering::Relaxed) >= b + 300)
        },
    )
    .await;
    // rollback applies on each instance at once, without etcd.
    for p in &fleet {
        let t = Instant::now();
        let r = p.admin("rollback").await;
        let took = t.elapsed();
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            r["warning"].as_str().unwrap().contains("unreachable"),
            "{r}"
        );
        assert_eq!(p.routes.load().green_bp, 0, "applied when the reply came");
        assert!(took < Duration::from_secs(1), "rollback took {took:?}");
    }
    let green_after_rollback = green.hits.load(Ordering::SeqCst);
    let served: Vec<usize> = counts
        .iter()
        .map(|c| c.ok.load(Ordering::Relaxed))
        .collect();
    wait_for(
        "100 more requests per instance after the rollback",
        DEADLINE,
        || async {
            counts
                .iter()
                .zip(&served)
                .all(|(c, b)| c.ok.load(Ordering::Relaxed) >= b + 100)
        },
    )
    .await;
    assert_eq!(
        green.hits.load(Ordering::SeqCst),
        green_after_rollback,
        "no request went to green after the rollback"
    );

    // etcd comes back: the rollback is written there and every instance agrees with it.
    etcd.start(0);
    etcd.wait_ready(DEADLINE);
    wait_for(
        "the rollback in etcd and every instance on its generation",
        DEADLINE,
        || async {
            let Some(t) = table_in_etcd(&etcd, prefix) else {
                return false;
            };
            let g = t["generation"].as_u64().unwrap_or(0);
            t["green_bp"] == 0
                && fleet
                    .iter()
                    .all(|p| p.routes.load().generation == g && p.routes.load().green_bp == 0)
        },
    )
    .await;
    // Every instance on etcd's revision, nothing kept back: changes work again.
    wait_for(
        "every instance on etcd's table revision",
        DEADLINE,
        || async {
            let mut ok = true;
            for p in &fleet {
                let v = p.admin("fleet").await;
                ok &= v["store_up"] == true
                    && v["rollback_pending"] == false
                    && v["table_revision"].as_i64().is_some_and(|r| r > 0)
                    && v["table_revision"] == v["applied_revision"];
            }
            ok
        },
    )
    .await;
    let r = fleet[1].admin("weight 5").await;
    assert_eq!(r["ok"], true, "{r}");

    stop.cancel();
    for l in loads {
        l.await.unwrap();
    }
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(
            c.failed.load(Ordering::Relaxed),
            0,
            "instance {i}: failed client requests"
        );
        assert!(c.ok.load(Ordering::Relaxed) >= 400);
    }
}

/// A silent partition (etcd frozen: connections open, no answers) must not hold an emergency
/// rollback for a whole etcd call timeout: it applies on the instance within a second and
/// reaches etcd once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_applies_at_once_while_etcd_is_silent() {
    let etcd = Etcd::single();
    let prefix = "/silent/";
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        &etcd.fleet_toml(prefix, "edge-1"),
        "",
        false,
    )
    .await;
    let r = p.admin("weight 30").await;
    assert_eq!(r["ok"], true, "{r}");

    etcd.freeze(0);
    let t = Instant::now();
    let r = p.admin("rollback").await;
    let took = t.elapsed();
    etcd.thaw(0);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(p.routes.load().green_bp, 0, "applied when the reply came");
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");

    wait_for("the rollback in etcd", DEADLINE, || async {
        table_in_etcd(&etcd, prefix).is_some_and(|t| t["green_bp"] == 0)
    })
    .await;
}
