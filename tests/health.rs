//! Active health checks: a stopped backend leaves rotation after `fall` failed checks and
//! from then on no client request fails; it rejoins after `rise` passes; a /health answer
//! without the constitutional hash counts as unhealthy.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use switchyard::config::PoolId;

const FAST_CHECKS: &str =
    "[pools.blue.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 3\nrise = 2\n";

fn healthy(p: &TestProxy, i: usize) -> bool {
    p.routes.load().pool(PoolId::Blue).backends[i].is_healthy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_leaves_rotation_and_rejoins_after_rise_checks() {
    let (b1, b2, green) = (
        upstream("blue").await,
        upstream("blue").await,
        upstream("green").await,
    );
    let p = proxy_multi(&[b1.addr, b2.addr], &[green.addr], FAST_CHECKS).await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(send(&c, get(&p.url("/"))).await.0, 200);
    }
    let addr2 = b2.addr;
    drop(b2);
    wait_for(
        "the stopped backend to be marked unhealthy",
        Duration::from_secs(10),
        || async { !healthy(&p, 1) },
    )
    .await;
    let before = b1.hits.load(SeqCst);
    for _ in 0..100 {
        let (status, _, body) = send(&c, get(&p.url("/"))).await;
        assert_eq!(
            status, 200,
            "a request failed after the backend left rotation"
        );
        assert_eq!(&body[..], b"blue");
    }
    assert_eq!(b1.hits.load(SeqCst) - before, 100);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(r#"switchyard_backend_healthy{{pool="blue",backend="{addr2}"}}"#)
        ),
        0.0,
        "{m}"
    );

    let b2 = upstream_at("blue", addr2).await;
    wait_for("the backend to rejoin", Duration::from_secs(10), || async {
        healthy(&p, 1)
    })
    .await;
    wait_for(
        "traffic to reach the rejoined backend",
        Duration::from_secs(10),
        || async {
            send(&c, get(&p.url("/"))).await;
            b2.hits.load(SeqCst) > 2
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_answer_without_the_hash_is_unhealthy() {
    let (b1, b2, green) = (
        upstream("blue").await,
        upstream("blue").await,
        upstream("green").await,
    );
    let p = proxy_multi(&[b1.addr, b2.addr], &[green.addr], FAST_CHECKS).await;
    b2.behavior.omit_hash.store(true, SeqCst);
    wait_for(
        "the hashless backend to be marked unhealthy",
        Duration::from_secs(10),
        || async { !healthy(&p, 1) },
    )
    .await;
    assert!(healthy(&p, 0));
    b2.behavior.omit_hash.store(false, SeqCst);
    wait_for("it to come back", Duration::from_secs(10), || async {
        healthy(&p, 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_is_never_emptied_by_its_checks() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // Without failover: with it, blue's share would go to green (tests/failover.rs).
    let sections = format!("{FAST_CHECKS}[split]\nfailover = false\n");
    let p = proxy(&blue, &green, &sections).await;
    blue.behavior.omit_hash.store(true, SeqCst);
    wait_for(
        "the only backend to fail its checks",
        Duration::from_secs(10),
        || async { !healthy(&p, 0) },
    )
    .await;
    // Out of rotation, but the only one: requests still reach it (and its answers are judged).
    blue.behavior.omit_hash.store(false, SeqCst);
    let (status, _, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"blue");
}
