//! Pool failover outside a rollout (`[split] failover`, on by default): a pool with a
//! share and no backend in rotation hands its share to the other pool until a backend is
//! back; each switch is a `watch` event, an audit line and `switchyard_failover_active`.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use common::rollout::traffic;
use common::*;

const FAST_CHECKS: &str =
    "[pools.blue.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\n\
     [pools.green.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2\n";

/// A `watch` stream: the next event for which `pick` holds (10 s deadline).
struct Watch(tokio::io::Lines<BufReader<UnixStream>>);

impl Watch {
    async fn open(p: &TestProxy) -> Watch {
        let mut s = UnixStream::connect(&p.socket).await.unwrap();
        s.write_all(b"watch\n").await.unwrap();
        let mut lines = BufReader::new(s).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        assert!(first.contains("watching"), "{first}");
        Watch(lines)
    }

    async fn until(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let line = self.0.next_line().await.unwrap().unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                if pick(&v) {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} event within 10 s"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pool_hands_its_share_over_until_it_is_back() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (p, _control) = proxy_with(
        &[blue.addr],
        &[green.addr],
        FAST_CHECKS,
        &format!("audit_log = \"{}\"", audit.display()),
        false,
    )
    .await;
    assert_eq!(p.admin("weight 50").await["ok"], true);
    let mut watch = Watch::open(&p).await;
    let load = traffic(p.addr, 100, Duration::from_secs(40));
    wait_for("both pools to answer", Duration::from_secs(10), || async {
        load.count(|s| s.green) > 5 && load.count(|s| s.blue) > 5
    })
    .await;

    let green_addr = green.addr;
    drop(green);
    let on = watch
        .until("failover", |v| {
            v["event"] == "failover" && v["active"] == true
        })
        .await;
    let switched = Instant::now();
    assert_eq!(
        (on["pool"].as_str(), on["to"].as_str()),
        (Some("green"), Some("blue")),
        "{on}"
    );
    let s = p.admin("status").await;
    assert_eq!(
        (
            s["green_percent"].as_f64(),
            s["effective_green_percent"].as_f64()
        ),
        (Some(50.0), Some(0.0)),
        "the weights stay; the effective share moves: {s}"
    );
    assert_eq!(s["failover"]["from"], "green", "{s}");
    assert_eq!(
        p.gauge(r#"switchyard_failover_active{pool="green"}"#).await,
        1.0
    );
    // From the switch on, no request fails.
    wait_for(
        "traffic after the switch",
        Duration::from_secs(10),
        || async { load.count(|s| s.sent > switched) >= 100 },
    )
    .await;
    let after: Vec<_> = load
        .samples()
        .into_iter()
        .filter(|s| s.sent > switched)
        .collect();
    let failed = after.iter().filter(|s| s.status != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed after the failover",
        after.len()
    );
    assert!(after.iter().all(|s| s.blue));

    // Green comes back: its share returns.
    let _green = upstream_at("green", green_addr).await;
    watch
        .until("failover end", |v| {
            v["event"] == "failover" && v["active"] == false
        })
        .await;
    let back = Instant::now();
    wait_for(
        "green to take requests again",
        Duration::from_secs(10),
        || async { load.count(|s| s.sent > back && s.green) > 10 },
    )
    .await;
    assert_eq!(p.admin("status").await["effective_green_percent"], 50.0);
    assert_eq!(
        p.gauge(r#"switchyard_failover_active{pool="green"}"#).await,
        0.0
    );
    let samples = load.stop().await;
    assert!(samples.len() > 100);
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["command"] == "failover")
        .collect();
    assert_eq!(lines.len(), 2, "one audit line per switch: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_false_keeps_the_weights_whatever_the_health() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let sections = format!("{FAST_CHECKS}[split]\nfailover = false\n");
    let p = proxy(&blue, &green, &sections).await;
    assert_eq!(p.admin("weight 50").await["ok"], true);
    drop(green);
    wait_for(
        "green to leave rotation",
        Duration::from_secs(10),
        || async { p.admin("status").await["pools"]["green"]["backends"][0]["healthy"] == false },
    )
    .await;
    let s = p.admin("status").await;
    assert_eq!(
        (s["effective_green_percent"].as_f64(), &s["failover"]),
        (Some(50.0), &Value::Null),
        "{s}"
    );
}
