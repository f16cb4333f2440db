//! Faults and limits: each breach gets its own status, is counted, and leaves the proxy
//! serving the next request normally.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

async fn next_request_is_fine(p: &TestProxy) {
    let (status, _, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_not_listening_is_502_within_the_connect_timeout() {
    let blue = upstream("blue").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = proxy_multi(&[blue.addr], &[closed], "[split]\ngreen_percent = 100\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nconnect = \"2s\"\n").await;
    let start = Instant::now();
    let (status, headers, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 502);
    assert!(
        start.elapsed() < Duration::from_secs(2) + Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(headers[HASH_HEADER], HASH);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="green",kind="connect"}"#
        ),
        1.0
    );
    assert_eq!(p.admin("weight 0").await["ok"], true);
    next_request_is_fine(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slower_than_the_response_timeout_is_504() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nupstream_response = \"300ms\"\n",
    )
    .await;
    let (status, headers, _) = send(&client(), get(&p.url("/slow?sleep_ms=3000"))).await;
    assert_eq!(status, 504);
    assert_eq!(headers[HASH_HEADER], HASH);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="blue",kind="timeout"}"#
        ),
        1.0
    );
    next_request_is_fine(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    for size in [40 * 1024, 64 * 1024] {
        let mut req = get(&p.url("/"));
        req.headers_mut()
            .insert("x-big", "a".repeat(size).parse().unwrap());
        let (status, _, _) = send(&client(), req).await;
        assert_eq!(status, 431, "{size} bytes of headers");
    }
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            r#"switchyard_rejected_requests_total{reason="header_too_large"}"#
        ) >= 1.0
    );
    next_request_is_fine(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.limits]\nmax_body_bytes = \"1KiB\"\n",
    )
    .await;
    // Declared length over the limit: refused before anything is read.
    let req = http::Request::post(p.url("/upload"))
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let (status, headers, _) = send(&client(), req).await;
    assert_eq!(status, 413);
    assert_eq!(headers[HASH_HEADER], HASH);
    // Chunked, no length: refused once the stream passes the limit.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 600]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = http::Request::post(p.url("/upload"))
        .header(HASH_HEADER, HASH)
        .body(body)
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Within the limit: passes.
    let req = http::Request::post(p.url("/upload"))
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"1000");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_rejected_requests_total{reason="body_too_large"}"#
        ),
        2.0
    );
    next_request_is_fine(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_finished_in_time_closes_the_connection_and_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"300ms\"\n",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a stalled head kept its connection");
    let addr = p.metrics_addr;
    wait_for(
        "the header timeout to be counted",
        Duration::from_secs(5),
        || async move {
            let c = client();
            let resp = c
                .get(format!("http://{addr}/metrics").parse().unwrap())
                .await
                .unwrap();
            let text = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            metric(
                std::str::from_utf8(&text).unwrap(),
                r#"switchyard_rejected_requests_total{reason="header_timeout"}"#,
            ) == 1.0
        },
    )
    .await;
    next_request_is_fine(&p).await;
}
