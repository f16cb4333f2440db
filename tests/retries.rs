//! Retries only where nothing reached a backend: a refused connection is retried on
//! another backend of the same pool; a request that was handed to a backend never is.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_another_backend() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let refusing = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = proxy_multi(&[refusing, blue.addr], &[green.addr], "").await;
    let c = client();
    for _ in 0..50 {
        let (status, _, body) = send(&c, get(&p.url("/"))).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"blue");
    }
    let m = p.metrics().await;
    let retries = metric(&m, r#"switchyard_retries_total{pool="blue"}"#);
    assert!(retries >= 1.0, "the refusing backend was never tried:\n{m}");
    assert_eq!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="blue",kind="connect"}"#
        ),
        retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_handed_to_a_backend_is_never_retried() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // A backend that accepts, reads the request, and hangs up without answering.
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropper_addr = dropper.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dropper.accept().await {
            let t = t.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).await.unwrap_or(0) > 0 {
                    t.fetch_add(1, SeqCst);
                }
            });
        }
    });
    let p = proxy_multi(
        &[dropper_addr, blue.addr],
        &[green.addr],
        // No active checks: the dropper counts every request it reads, checks included.
        "[pools.blue.health]\npath = \"\"\n",
    )
    .await;
    let mut failed = 0;
    for _ in 0..30 {
        let req = http::Request::post(p.url("/upload"))
            .header(HASH_HEADER, HASH)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let (status, _, _) = send(&client(), req).await;
        match status.as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    wait_for(
        "the dropper to have counted its requests",
        std::time::Duration::from_secs(5),
        || async { taken.load(SeqCst) == failed },
    )
    .await;
    assert!(failed > 0, "the dropping backend was never picked");
    assert_eq!(
        blue.hits.load(SeqCst),
        30 - failed,
        "a request that reached a backend was sent again"
    );
    let m = p.metrics().await;
    assert_eq!(metric(&m, r#"switchyard_retries_total{pool="blue"}"#), 0.0);
}
