//! Query gates against a real Prometheus (started by the test on a loopback port, scraping a
//! test exporter every second): a value crossing `max` rolls back naming the query; a
//! Prometheus stopped mid-rollout leaves the gate inconclusive, never passing; a reload
//! changes the query gates of the next rollout, not of the running one.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::prometheus::{Exporter, Prometheus};
use common::rollout::{rollout_toml, traffic, wait_rollout};
use common::*;
use switchyard::ctl::client::Connection;

const WAIT: Duration = Duration::from_secs(30);

fn query_toml(prometheus: &str) -> String {
    format!(
        "\n[[rollout.gates.query]]\nname = \"error-ratio\"\nprometheus = \"{prometheus}\"\n\
         query = 'max(test_error_ratio{{pool=\"$candidate\"}})'\nmax = 0.05\ninterval = \"1s\"\n\
         timeout = \"1s\"\nfail_windows = 2\n"
    )
}

/// What every test here runs: blue and green upstreams, the test exporter (green's value
/// given, blue's 0), a real Prometheus scraping it, and a proxy with the `error-ratio`
/// query gate and `rollout` settings on top of the test defaults.
struct Rig {
    exporter: Exporter,
    prom: Prometheus,
    p: TestProxy,
    _control: Arc<switchyard::control::Control>,
    _upstreams: (Upstream, Upstream),
}

impl Rig {
    async fn start(green: f64, rollout: &[(&str, &str)]) -> Rig {
        let (blue, green_up) = (upstream("blue").await, upstream("green").await);
        let exporter = Exporter::start().await;
        exporter.set_green(green);
        let prom = Prometheus::start(&[exporter.addr]).await;
        prom.wait_for_series("test_error_ratio", WAIT).await;
        let toml = format!("{}{}", rollout_toml(rollout), query_toml(&prom.url()));
        let (p, control) = proxy_with(&[blue.addr], &[green_up.addr], &toml, "", false).await;
        Rig {
            exporter,
            prom,
            p,
            _control: control,
            _upstreams: (blue, green_up),
        }
    }
}

fn query_report(view: &serde_json::Value) -> serde_json::Value {
    view["queries"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_crossing_max_rolls_back_naming_the_query() {
    let rig = Rig::start(0.01, &[("hold", "\"60s\""), ("max_hold", "\"60s\"")]).await;
    let (p, exporter) = (&rig.p, &rig.exporter);
    let idle = p.admin("gates").await;
    assert_eq!(idle["queries"][0]["name"], "error-ratio", "{idle}");
    let mut watch = Connection::connect(&p.socket).await.unwrap();
    watch.send("watch").await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap()["ok"], true);
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    // The gate passes first, as `ctl gates` shows.
    let r = wait_rollout(p, WAIT, |r| query_report(r)["verdict"] == "pass").await;
    let q = query_report(&r);
    assert_eq!(
        (q["name"].as_str(), q["max"].as_f64()),
        (Some("error-ratio"), Some(0.05))
    );
    assert_eq!(q["value"].as_f64(), Some(0.01), "{q}");
    let gates = p.admin("gates").await;
    assert_eq!(gates["queries"][0]["name"], "error-ratio", "{gates}");
    exporter.set_green(0.5);
    let r = wait_rollout(p, WAIT, |r| r["phase"] == "rolled_back").await;
    assert_eq!(r["gate"], "query", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"error-ratio\"") && reason.contains("0.5 > max 0.05"),
        "{r}"
    );
    assert_eq!(p.routes.load().green_bp, 0);
    // The watch event of the rollback carries the gate's name, value, bound and verdict.
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let e = watch.next().await.unwrap().unwrap();
            if e["event"] == "rollout" && e["phase"] == "rolled_back" {
                return e;
            }
        }
    })
    .await
    .unwrap();
    let q = query_report(&event);
    assert_eq!(
        (
            q["name"].as_str(),
            q["value"].as_f64(),
            q["max"].as_f64(),
            q["verdict"].as_str()
        ),
        (Some("error-ratio"), Some(0.5), Some(0.05), Some("fail")),
        "{event}"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, r#"switchyard_rollbacks_total{reason="query"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_stopped_mid_rollout_is_inconclusive_not_passing() {
    let mut rig = Rig::start(0.01, &[("hold", "\"5s\""), ("max_hold", "\"8s\"")]).await;
    let p = &rig.p;
    let t = traffic(p.addr, 300, Duration::from_secs(60));
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(p, WAIT, |r| query_report(r)["verdict"] == "pass").await;
    assert_eq!(r["step"], 0, "{r}");
    rig.prom.stop();
    // Without answers the step cannot complete: it pauses at max_hold.
    let r = wait_rollout(p, WAIT, |r| r["phase"] != "progressing").await;
    t.stop().await;
    assert_eq!(
        (
            r["phase"].as_str(),
            r["reason"].as_str(),
            r["step"].as_u64()
        ),
        (Some("paused"), Some("insufficient_data"), Some(0)),
        "{r}"
    );
    assert_eq!(r["candidate_percent"], 10.0, "{r}");
    let q = query_report(&r);
    assert_eq!(q["verdict"], "inconclusive", "{q}");
    assert!(q["detail"].as_str().unwrap().contains("connect"), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_query_gates_to_the_next_rollout_only() {
    let rig = Rig::start(0.01, &[("hold", "\"4s\""), ("max_hold", "\"20s\"")]).await;
    let (p, exporter) = (&rig.p, &rig.exporter);
    exporter.set_blue(0.01);
    let t = traffic(p.addr, 300, Duration::from_secs(120));
    assert_eq!(p.admin("rollout start to green").await["ok"], true);
    let r = wait_rollout(p, WAIT, |r| query_report(r)["verdict"] == "pass").await;
    assert_eq!(r["step"], 0, "{r}");
    // A bound the candidate's 0.01 crosses, reloaded while the rollout runs.
    let path = p.dir.path().join("switchyard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("max = 0.05"));
    std::fs::write(&path, text.replace("max = 0.05", "max = 0.005")).unwrap();
    let reloaded = p.admin("reload").await;
    assert_eq!(reloaded["ok"], true, "{reloaded}");
    let r = wait_rollout(p, Duration::from_secs(60), |r| {
        r["phase"] != "progressing" && r["phase"] != "baking"
    })
    .await;
    assert_eq!(r["phase"], "promoted", "{r}");
    assert_eq!(query_report(&r)["max"].as_f64(), Some(0.05), "{r}");
    // The next rollout (back to blue, also at 0.01) is judged by the reloaded bound.
    assert_eq!(p.admin("rollout start to blue").await["ok"], true);
    let r = wait_rollout(p, WAIT, |r| r["phase"] == "rolled_back").await;
    t.stop().await;
    assert_eq!(r["gate"], "query", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("max 0.005"), "{r}");
}
