//! Per-pool concurrency caps: with green at 10% and a cap of 100 scaled by weight, a burst
//! of slow requests puts at most about 10 (plus the floor) in flight on green; the rest of
//! green's share is answered 503 with Retry-After by the proxy, which the rollout gates
//! never see as green's error; blue is unaffected; and the permits come back when the
//! responses end.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use common::*;
use switchyard::config::{Config, PoolId};
use switchyard::metrics::window::LiveStats;
use switchyard::Switchyard;
use tokio_util::sync::CancellationToken;

const CAP: &str = "[split]\ngreen_percent = 10\n\
     [proxy]\nlisten = [\"127.0.0.1:0\"]\n\
     [proxy.concurrency]\nmax_inflight = { green = 100 }\nby_weight = true\nfloor = 2\n";

struct Outcome {
    green_ok: usize,
    green_busy: usize,
    blue_ok: usize,
    other: Vec<String>,
}

/// Sends `n` slow requests at once and sorts the answers by pool and status.
async fn burst(url: &str, n: usize) -> Outcome {
    let c = client();
    let answers = futures_util::future::join_all((0..n).map(|_| {
        let c = c.clone();
        let url = url.to_string();
        async move { send(&c, get(&url)).await }
    }))
    .await;
    let mut o = Outcome {
        green_ok: 0,
        green_busy: 0,
        blue_ok: 0,
        other: Vec::new(),
    };
    for (status, headers, body) in answers {
        let body = String::from_utf8_lossy(&body).to_string();
        match (status.as_u16(), body.as_str()) {
            (200, "green") => o.green_ok += 1,
            (200, "blue") => o.blue_ok += 1,
            (503, b) if b.contains("\"pool\":\"green\"") => {
                assert_eq!(headers["retry-after"], "1");
                o.green_busy += 1;
            }
            (s, b) => o.other.push(format!("{s} {b}")),
        }
    }
    o
}

async fn start(
    blue: &Upstream,
    green: &Upstream,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    Arc<LiveStats>,
    DropCancel,
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        Config::from_toml_str(&config_text(dir.path(), &[blue.addr], &[green.addr], CAP)).unwrap();
    let server = Switchyard::bind(cfg).await.unwrap();
    let (addr, metrics, stats) = (
        server.http_addrs()[0],
        server.metrics_addr().unwrap(),
        server.stats(),
    );
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let _dir = dir;
        server.run(t).await.unwrap()
    });
    (addr, metrics, stats, DropCancel(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_holds_about_ten_of_a_hundred_and_blue_is_unaffected() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    blue.behavior.delay_ms.store(600, SeqCst);
    green.behavior.delay_ms.store(600, SeqCst);
    let (addr, metrics_addr, stats, _stop) = start(&blue, &green).await;
    let url = format!("http://{addr}/");

    let o = burst(&url, 200).await;
    assert!(o.other.is_empty(), "unexpected answers: {:?}", o.other);
    // ceil(100 * 10%) + floor 2 = 12 at once on green.
    assert!(o.green_ok <= 12, "green held {} at once", o.green_ok);
    assert!(o.green_ok >= 8, "green got only {}", o.green_ok);
    let green_share = o.green_ok + o.green_busy;
    assert!(
        (17..=23).contains(&green_share),
        "green's share was {green_share} of 200"
    );
    assert!(o.green_busy >= 5);
    assert_eq!(
        o.blue_ok,
        200 - green_share,
        "blue answered all of its share"
    );
    assert_eq!(
        green.hits.load(SeqCst),
        o.green_ok,
        "refused requests never reach green"
    );

    let m = TestMetrics(metrics_addr).get().await;
    let busy = o.green_busy as f64;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_pool_concurrency_rejected_total{pool="green"}"#
        ),
        busy
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_pool_concurrency_rejected_total{pool="blue"}"#
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_rejected_requests_total{reason="pool_concurrency"}"#
        ),
        busy
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_requests_total{pool="green",code_class="5xx"}"#
        ),
        0.0
    );
    // The gates see green's real answers only: no errors, only the admitted requests.
    let w = stats.window(PoolId::Green);
    assert_eq!((w.requests, w.errors), (o.green_ok as u64, 0));

    // The permits came back with the responses: the next burst is admitted again.
    let again = burst(&url, 40).await;
    assert!(
        again.green_ok >= 1 && again.green_ok <= 12,
        "second burst: {} on green",
        again.green_ok
    );
}

/// The metrics listener of a proxy started without the rig.
struct TestMetrics(std::net::SocketAddr);

impl TestMetrics {
    async fn get(&self) -> String {
        let (_, _, body) = send(&client(), get(&format!("http://{}/metrics", self.0))).await;
        String::from_utf8(body.to_vec()).unwrap()
    }
}
