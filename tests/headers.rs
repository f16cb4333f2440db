//! Forwarding hygiene: smuggling shapes refused with 400 and a closed connection,
//! hop-by-hop headers removed, X-Forwarded-* appended, Host preserved.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes; returns everything the proxy sends until it closes (bounded wait).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "connection was not closed: got {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_400_and_a_closed_connection() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let h = format!("Host: app.test\r\n{HASH_HEADER}: {HASH}\r\n");
    let shapes = [
        ("CL with TE", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
        ("TE with CL", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")),
        ("duplicate CL", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello")),
        ("differing CL", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
        ("invalid CL", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5x\r\n\r\nhello")),
        ("CL list", format!("POST / HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n\r\nhello")),
        ("TE not chunked", format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n")),
        ("obs-fold", format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n")),
    ];
    for (name, req) in shapes {
        let answer = raw_exchange(p.addr, &req).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
    }
    assert_eq!(
        blue.hits.load(SeqCst) + green.hits.load(SeqCst),
        0,
        "a smuggling shape reached an upstream"
    );
    // The proxy still serves.
    let (status, _, _) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_forwarded_appended_host_kept() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let mut req = get(&p.url("/"));
    let h = req.headers_mut();
    h.insert("host", "app.example".parse().unwrap());
    h.insert("connection", "keep-alive, X-Foo".parse().unwrap());
    h.insert("x-foo", "must-not-pass".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-connection", "keep-alive".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    h.insert("x-switchyard-pool", "green".parse().unwrap());
    let (status, resp_headers, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert!(resp_headers.get("keep-alive").is_none());
    let seen = blue.last_headers.lock().unwrap().clone().unwrap();
    for gone in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
        "x-switchyard-pool",
    ] {
        assert!(seen.get(gone).is_none(), "{gone} was forwarded: {seen:?}");
    }
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["host"], "app.example");
    assert_eq!(
        green.hits.load(SeqCst),
        0,
        "an untrusted override header moved the request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_needs_the_token() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "[split]\noverride_token = \"s3cret\"\n").await;
    let c = client();
    let mut req = get(&p.url("/"));
    req.headers_mut()
        .insert("x-switchyard-pool", "green".parse().unwrap());
    req.headers_mut()
        .insert("x-switchyard-token", "s3cret".parse().unwrap());
    let (_, _, body) = send(&c, req).await;
    assert_eq!(&body[..], b"green");
    let seen = green.last_headers.lock().unwrap().clone().unwrap();
    assert!(seen.get("x-switchyard-pool").is_none() && seen.get("x-switchyard-token").is_none());
    let mut req = get(&p.url("/"));
    req.headers_mut()
        .insert("x-switchyard-pool", "green".parse().unwrap());
    req.headers_mut()
        .insert("x-switchyard-token", "wrong".parse().unwrap());
    let (_, _, body) = send(&c, req).await;
    assert_eq!(&body[..], b"blue");
}
