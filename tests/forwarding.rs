//! Routing and forwarding: split accuracy, affinity, zero loss under weight flips,
//! streaming bodies, HTTP/2 and WebSocket.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_blue_at_zero_percent() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = client();
    let (status, headers, body) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"blue");
    assert_eq!(headers[HASH_HEADER], HASH);
    assert_eq!(green.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Sends `n` GETs over `workers` keep-alive connections; returns the green share.
async fn green_share(p: &TestProxy, green: &Upstream, blue: &Upstream, n: usize) -> (usize, usize) {
    use std::sync::atomic::Ordering::SeqCst;
    let (g0, b0) = (green.hits.load(SeqCst), blue.hits.load(SeqCst));
    let workers = 8;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let url = p.url("/");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..n / workers {
                let (status, _, _) = send(&c, get(&url)).await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (green.hits.load(SeqCst) - g0, blue.hits.load(SeqCst) - b0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_is_accurate_at_small_and_extreme_weights() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    for (percent, lo, hi) in [
        ("10", 900, 1100),
        ("0", 0, 0),
        ("100", 10_000, 10_000),
        ("0.5", 20, 80),
    ] {
        let r = p.admin(&format!("weight {percent}")).await;
        assert_eq!(r["ok"], true, "{r}");
        let (g, b) = green_share(&p, &green, &blue, 10_000).await;
        assert_eq!(g + b, 10_000);
        assert!(
            (lo..=hi).contains(&g),
            "at {percent}% green got {g} of 10000"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_is_sticky_and_monotone() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[split]\ngreen_percent = 10\naffinity = \"header:x-user\"\n",
    )
    .await;
    let c = client();
    let pool_of = |key: String| {
        let c = c.clone();
        let url = p.url("/");
        async move {
            let mut req = get(&url);
            req.headers_mut().insert("x-user", key.parse().unwrap());
            let (status, _, body) = send(&c, req).await;
            assert_eq!(status, 200);
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let mut at10 = Vec::new();
    for k in &keys {
        at10.push(pool_of(k.clone()).await);
    }
    let greens = at10.iter().filter(|p| *p == "green").count();
    assert!(
        (10..=80).contains(&greens),
        "{greens} of 400 keys on green at 10%"
    );
    for (k, first) in keys.iter().zip(&at10).take(100) {
        assert_eq!(
            &pool_of(k.clone()).await,
            first,
            "key {k} moved at a fixed weight"
        );
    }
    assert_eq!(p.admin("weight 50").await["ok"], true);
    let mut greens50 = 0;
    for (k, before) in keys.iter().zip(&at10) {
        let now = pool_of(k.clone()).await;
        if before == "green" {
            assert_eq!(
                now, "green",
                "key {k} went back to blue when green's weight rose"
            );
        }
        greens50 += usize::from(now == "green");
    }
    assert!(greens50 > greens, "raising the weight moved no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_weights_flip() {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (addr, done) = (p.addr, done.clone());
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, requests one after another.
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) && n < 100_000 {
                let req = http::Request::get("/")
                    .header("host", "app.test")
                    .header(HASH_HEADER, HASH)
                    .body(empty())
                    .unwrap();
                let resp =
                    tokio::time::timeout(std::time::Duration::from_secs(5), tx.send_request(req))
                        .await
                        .expect("request hung")
                        .expect("request failed");
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(&body[..] == b"blue" || &body[..] == b"green");
                n += 1;
            }
            n
        }));
    }
    // 1,000 flips over one admin connection.
    let stream = tokio::net::UnixStream::connect(&p.socket).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    for i in 0..1000 {
        let pct = [50, 100, 0][i % 3];
        w.write_all(format!("weight {pct}\n").as_bytes())
            .await
            .unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["ok"], true, "{reply}");
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total >= 32, "clients made {total} requests");
    let s = p.admin("status").await;
    assert_eq!(s["generation"], 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_works() {
    use http_body_util::BodyExt;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for _ in 0..3 {
        let resp = c.request(get(&p.url("/h2"))).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[HASH_HEADER], HASH);
        assert_eq!(
            &resp.into_body().collect().await.unwrap().to_bytes()[..],
            b"blue"
        );
    }
    let seen = blue.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen["host"],
        p.addr.to_string(),
        "HTTP/2 :authority becomes Host upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_and_stays_on_its_pool() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{HASH_HEADER}: {HASH}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    // Move all new traffic to green: the tunnel stays where it is.
    assert_eq!(p.admin("weight 100").await["ok"], true);
    // The upstream echoes the frame back byte for byte.
    let frame = WS_HELLO_FRAME;
    for _ in 0..3 {
        s.write_all(&frame).await.unwrap();
        let mut back = [0u8; 11];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
    assert_eq!(green.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A connection upgraded to a WebSocket tunnel through the proxy (the upstream echoes).
async fn upgraded(p: &TestProxy) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{HASH_HEADER}: {HASH}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    s
}

/// Reads an HTTP/1 response head byte by byte (so nothing after it is consumed).
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the head ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_closes_after_the_grace_once_its_pool_takes_no_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[split]\ngreen_percent = 100\n[proxy]\nlisten = [\"127.0.0.1:0\"]\ndrain_window = \"300ms\"\n",
    )
    .await;
    let mut s = upgraded(&p).await;
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    // Green leaves traffic (as a rollback would do): the tunnel to it is closed after the grace.
    assert_eq!(p.admin("weight 0").await["ok"], true);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the tunnel to a pool without traffic stayed open"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "closed before the grace"
    );
}

/// An upgraded connection that moves no byte either way for `proxy.timeouts.tunnel_idle`
/// is closed; one whose bytes keep coming is not, however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_is_closed_after_tunnel_idle_without_traffic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, &with_timeouts("tunnel_idle = \"800ms\"")).await;
    let mut s = upgraded(&p).await;
    // A frame every 300 ms for 2.4 s (three times the limit): echoed every time.
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        s.write_all(&WS_HELLO_FRAME).await.unwrap();
        let mut back = [0u8; 11];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("the tunnel still open while it carries bytes")
            .unwrap();
        assert_eq!(back, WS_HELLO_FRAME);
    }
    // Then nothing: closed.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent tunnel stayed open");
    assert!(rest.is_empty(), "no bytes before the close");
}
