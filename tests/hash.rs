//! The constitutional-hash contract: requests without the exact hash are answered 403 and
//! never forwarded; upstream responses without it are counted against their pool and,
//! under enforce, replaced by 502; every response carries the header.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;
use http_body_util::Full;

fn plain_get(url: &str) -> http::Request<Full<bytes::Bytes>> {
    http::Request::get(url)
        .body(Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_exact_hash_get_403_and_are_not_forwarded() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = client();
    let (status, headers, body) = send(&c, plain_get(&p.url("/"))).await;
    assert_eq!(status, 403);
    assert_eq!(headers[HASH_HEADER], HASH);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reason"], "missing", "{v}");

    let mut wrong = plain_get(&p.url("/"));
    wrong
        .headers_mut()
        .insert(HASH_HEADER, "0123456789abcdef".parse().unwrap());
    let (status, headers, body) = send(&c, wrong).await;
    assert_eq!(status, 403);
    assert_eq!(headers[HASH_HEADER], HASH);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reason"], "mismatch", "{v}");

    assert_eq!(
        blue.hits.load(SeqCst) + green.hits.load(SeqCst),
        0,
        "a violating request was forwarded"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="none",direction="request",reason="missing"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="none",direction="request",reason="mismatch"}"#
        ),
        1.0
    );
    // Charged to no pool.
    assert_eq!(
        metric(
            &m,
            r#"switchyard_requests_total{pool="none",code_class="4xx"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="blue",kind="hash"}"#
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_report_mode_forwards_and_counts() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "[constitution]\nrequests = \"report\"\n").await;
    let (status, headers, _) = send(&client(), plain_get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers[HASH_HEADER], HASH);
    assert_eq!(blue.hits.load(SeqCst), 1);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="none",direction="request",reason="missing"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_hash_is_502_under_enforce_and_charged_to_its_pool() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "[split]\ngreen_percent = 100\n").await;
    green.behavior.omit_hash.store(true, SeqCst);
    let (status, headers, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 502);
    assert_eq!(headers[HASH_HEADER], HASH);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reason"], "missing");
    green.behavior.omit_hash.store(false, SeqCst);
    green.behavior.wrong_hash.store(true, SeqCst);
    let (status, _, _) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 502);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="green",direction="response",reason="missing"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="green",direction="response",reason="mismatch"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="green",kind="hash"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_requests_total{pool="green",code_class="5xx"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="blue",direction="response",reason="missing"}"#
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_hash_passes_under_report_and_is_counted() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "[constitution]\nresponses = \"report\"\n").await;
    blue.behavior.omit_hash.store(true, SeqCst);
    let (status, headers, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"blue");
    assert!(
        headers.get(HASH_HEADER).is_none(),
        "report forwards the upstream's hash header as it came (here: absent)"
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_hash_violations_total{pool="blue",direction="response",reason="missing"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="blue",kind="hash"}"#
        ),
        1.0
    );
}
