//! Idle HTTP/1.1 keep-alive connections are parked: the codec and its buffers are dropped
//! and only the socket is kept until the client sends again. Parking must be invisible to
//! the client: the next request (even pipelined, even an upgrade with early bytes) is
//! served on the same connection; the idle limit (`proxy.timeouts.idle`) and shutdown
//! still close it. `switchyard_connections_parked` shows how many are parked.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A short `header_read` makes the idle check run every 100 ms.
const FAST_CHECKS: &str =
    "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"400ms\"\n";

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{HASH_HEADER}: {HASH}\r\n\r\n")
}

/// Reads one response with a Content-Length body; returns (status line, body).
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, String::from_utf8(body).unwrap())
}

async fn wait_parked(p: &TestProxy, n: f64) {
    wait_for(
        &format!("{n} parked connection(s)"),
        Duration::from_secs(10),
        || async move { p.gauge("switchyard_connections_parked").await == n },
    )
    .await;
}

/// The client sees its connection closed (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(within, s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(
        rest.is_empty(),
        "unexpected bytes before the close: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_parked_and_its_next_requests_are_served() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, FAST_CHECKS).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(request("/").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    wait_parked(&p, 1.0).await;
    assert_eq!(p.gauge("switchyard_connections_active").await, 1.0);

    // Two pipelined requests in one write wake it; both are answered, in order.
    let both = format!("{}{}", request("/first"), request("/second"));
    s.write_all(both.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let (status, body) = read_response(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body == "blue" || body == "green", "{body}");
    }
    // Idle again: parked again, and served again.
    wait_parked(&p, 1.0).await;
    // A second connection parks one check interval after its request, so by then the
    // first has been through a check while parked (its timer then waits for the idle
    // limit); a request must still bring back its parking checks.
    let mut t = TcpStream::connect(p.addr).await.unwrap();
    t.write_all(request("/other").as_bytes()).await.unwrap();
    read_response(&mut t).await;
    wait_parked(&p, 2.0).await;
    s.write_all(request("/third").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    wait_parked(&p, 2.0).await;
    assert_eq!(
        blue.hits.load(std::sync::atomic::Ordering::SeqCst)
            + green.hits.load(std::sync::atomic::Ordering::SeqCst),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_still_arriving_is_never_parked() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // Header limit long enough that only the idle check could interrupt the head.
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"2s\"\n",
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // A body that arrives slowly: the connection is busy, not idle.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\n{HASH_HEADER}: {HASH}\r\nContent-Length: 6\r\n\r\nabc"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Long enough for several idle checks (every 500 ms here).
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut probe)).await;
    assert!(
        early.is_err(),
        "the proxy answered or closed a request whose body was still arriving"
    );
    assert_eq!(p.gauge("switchyard_connections_parked").await, 0.0);
    s.write_all(b"def").await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "6", "the upstream got the whole body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_after_the_idle_limit() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"400ms\"\nidle = \"1500ms\"\n",
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(request("/").as_bytes()).await.unwrap();
    read_response(&mut s).await;
    wait_parked(&p, 1.0).await;
    closed_within(&mut s, Duration::from_secs(10)).await;
    wait_parked(&p, 0.0).await;
    wait_for("no open connections", Duration::from_secs(5), || async {
        p.gauge("switchyard_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_parking_tunnels_and_keeps_its_early_bytes() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, FAST_CHECKS).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(request("/").as_bytes()).await.unwrap();
    read_response(&mut s).await;
    wait_parked(&p, 1.0).await;
    // The upgrade request and a first WebSocket frame in one write: the frame is read
    // by the codec before the switch and must still reach the upstream.
    let frame = WS_HELLO_FRAME;
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{HASH_HEADER}: {HASH}\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(&frame);
    s.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the early frame echoed")
        .unwrap();
    assert_eq!(back, frame);
    // And the tunnel keeps working.
    s.write_all(&frame).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_and_the_proxy_stops() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, FAST_CHECKS).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(request("/").as_bytes()).await.unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    wait_parked(&p, 3.0).await;
    p.shutdown.cancel();
    for s in &mut conns {
        closed_within(s, Duration::from_secs(10)).await;
    }
    wait_for("the proxy to stop", Duration::from_secs(10), || async {
        p.task.is_finished()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_parked_connections_within_its_window() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let sections = "[proxy]\nlisten = [\"127.0.0.1:0\"]\ndrain_window = \"500ms\"\n\
                    [proxy.timeouts]\nheader_read = \"400ms\"\n";
    let p = proxy(&blue, &green, sections).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(request("/").as_bytes()).await.unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    wait_parked(&p, 3.0).await;
    assert_eq!(p.admin("pool blue drain").await["ok"], true);
    // Within the window, then after the 1 s linger; `proxy.timeouts.idle` (60 s) is far off.
    for s in &mut conns {
        closed_within(s, Duration::from_secs(10)).await;
    }
    wait_parked(&p, 0.0).await;
}
