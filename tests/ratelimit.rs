//! Per-client rate limits: a client over its limit gets 429 with Retry-After while another
//! keeps being served, and is served again once the window has passed; the client is the
//! address after `proxy.trusted_hops`; API keys count apart; and however many distinct
//! clients appear, the table stays at its cap.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use switchyard::proxy::edge::ratelimit::{Limit, RateTable, Verdict};

fn from(url: &str, xff: &str) -> http::Request<Full<Bytes>> {
    let mut req = get(url);
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    req
}

fn with_key(url: &str, key: &str) -> http::Request<Full<Bytes>> {
    let mut req = get(url);
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_gets_429_while_another_is_served_and_it_recovers() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_hops = 1\n\
         [proxy.rate_limit]\nrequests = 3\nperiod = \"1s\"\n",
    )
    .await;
    let c = client();
    // Both clients come through one trusted proxy that appends their address.
    let (a, b) = ("203.0.113.7, 10.0.0.1", "10.0.0.2");
    for _ in 0..3 {
        assert_eq!(send(&c, from(&p.url("/"), a)).await.0, 200);
    }
    let (status, headers, body) = send(&c, from(&p.url("/"), a)).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "rate_limited");
    for _ in 0..3 {
        assert_eq!(
            send(&c, from(&p.url("/"), b)).await.0,
            200,
            "another client is not limited"
        );
    }
    assert_eq!(
        blue.hits.load(SeqCst),
        6,
        "a limited request never reaches a backend"
    );

    let m = p.metrics().await;
    assert_eq!(metric(&m, "switchyard_rate_limited_total"), 1.0);
    assert_eq!(
        metric(
            &m,
            r#"switchyard_rejected_requests_total{reason="rate_limited"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_requests_total{pool="none",code_class="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_requests_total{pool="blue",code_class="2xx"}"#
        ),
        6.0
    );

    // Retry-After is a promise: after it, the client is served again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(&c, from(&p.url("/"), a)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_hops_a_forged_forwarded_for_does_not_escape_the_limit() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy.rate_limit]\nrequests = 2\nperiod = \"1m\"\n",
    )
    .await;
    let c = client();
    let statuses: Vec<u16> = futures_util::future::join_all((0..4).map(|i| {
        let c = c.clone();
        let url = p.url("/");
        async move {
            send(&c, from(&url, &format!("198.51.100.{i}")))
                .await
                .0
                .as_u16()
        }
    }))
    .await;
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(
        limited, 2,
        "the peer address counts, not the header: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_count_apart_and_the_table_stays_at_its_cap() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy.rate_limit]\nrequests = 1\nperiod = \"1h\"\nkey = \"header:x-api-key\"\nmax_keys = 64\n",
    )
    .await;
    let c = client();
    assert_eq!(send(&c, with_key(&p.url("/"), "steady")).await.0, 200);
    // 1600 one-off keys (25 times the table), while the steady client keeps coming back:
    // it must stay known (and limited) however many new keys push through the full table.
    // Each task alternates a new key with the steady one, so between two visits of the
    // steady client at most 4 new keys arrive: far fewer than the 8 evictions its shard
    // needs before CLOCK could pick it (whatever the scheduling).
    let tasks = (0..4).map(|t| {
        let (c, url) = (c.clone(), p.url("/"));
        tokio::spawn(async move {
            for i in 0..400 {
                let status = send(&c, with_key(&url, &format!("key-{t}-{i}"))).await.0;
                assert_eq!(status, 200, "a new key has a full bucket");
                let status = send(&c, with_key(&url, "steady")).await.0;
                assert_eq!(status, 429, "a returning client was forgotten");
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.unwrap();
    }
    let m = p.metrics().await;
    let cap = metric(&m, "switchyard_rate_limit_keys_max");
    assert!((32.0..=64.0).contains(&cap), "cap {cap}");
    assert_eq!(
        metric(&m, "switchyard_rate_limit_keys"),
        cap,
        "the table is full, not larger"
    );
    assert_eq!(
        metric(&m, "switchyard_rate_limit_evictions_total"),
        1601.0 - cap
    );
    // A request without the header counts by client address.
    assert_eq!(send(&c, get(&p.url("/"))).await.0, 200);
    assert_eq!(send(&c, get(&p.url("/"))).await.0, 429);
}

#[test]
fn a_hundred_thousand_distinct_clients_keep_the_table_at_its_cap() {
    let table = RateTable::new(10_000);
    let limit = Limit::new(10, Duration::from_secs(1), 10);
    for i in 0..100_000u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        assert_eq!(
            table
                .check(table.client_key(0, ip), limit, u64::from(i))
                .verdict,
            Verdict::Allowed
        );
        assert!(i % 1000 != 0 || table.len() <= table.capacity());
    }
    assert_eq!(table.len(), table.capacity());
    assert!(table.capacity() <= 10_000 && table.capacity() >= 5_000);
}
