//! Draining (acceptance 5): `pool blue drain` sends new requests to green while the slow
//! ones in flight on blue finish with 200, and `wait-drained blue` answers after the last.
//! Open downstream connections close gradually over `proxy.drain_window` (HTTP/1.1 with
//! `Connection: close` after a response, HTTP/2 with GOAWAY) without failing a request, and
//! the drained pool's idle upstream connections close. `ctl wait-drained` exits 5 on timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use switchyard::config::PoolId;

const SECTIONS: &str = "[proxy]\nlisten = [\"127.0.0.1:0\"]\ndrain_window = \"2s\"\n";

fn ctl(socket: &std::path::Path, words: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(words)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_new_requests_to_green_and_wait_drained_returns_after_the_slow_ones() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], SECTIONS, "", false).await;

    // Four slow requests in flight on blue (the weight sends everything there).
    let started = Instant::now();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = p.url("/slow?sleep_ms=1500");
            tokio::spawn(async move {
                let r = send(&client(), get(&url)).await;
                (r, Instant::now())
            })
        })
        .collect();
    wait_for(
        "four slow requests on blue",
        Duration::from_secs(5),
        || async { blue.hits.load(SeqCst) == 4 },
    )
    .await;

    let reply = p.admin("pool blue drain").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let drained_at = Instant::now();
    let socket = p.socket.clone();
    let waiter = tokio::spawn(async move {
        let v = switchyard::control::admin::request(&socket, "wait-drained blue timeout 10s")
            .await
            .unwrap();
        (
            serde_json::from_str::<serde_json::Value>(&v).unwrap(),
            Instant::now(),
        )
    });

    // New requests go to green while blue finishes.
    let c = client();
    for _ in 0..20 {
        let (status, _, body) = send(&c, get(&p.url("/"))).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"green");
    }
    assert_eq!(
        blue.hits.load(SeqCst),
        4,
        "a new request reached the draining pool"
    );

    let mut last_done = started;
    for h in slow {
        let ((status, _, body), done) = h.await.unwrap();
        assert_eq!(status, 200, "a slow request in flight was cut by the drain");
        assert_eq!(&body[..], b"blue");
        last_done = last_done.max(done);
    }
    let (reply, answered) = waiter.await.unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["drained"], true);
    assert_eq!(reply["state"], "drain");
    assert_eq!(reply["share_percent"], 0.0);
    assert!(
        answered.duration_since(drained_at) >= Duration::from_millis(1000),
        "wait-drained answered {:?} after the drain, before the slow requests could finish",
        answered.duration_since(drained_at)
    );
    assert!(
        answered <= last_done + Duration::from_millis(500),
        "wait-drained answered {:?} after the last slow request",
        answered.duration_since(last_done)
    );
    assert_eq!(p.routes.load().pool(PoolId::Blue).inflight(), 0);

    // The CLI form, now that nothing is in flight.
    let socket = p.socket.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        ctl(&socket, &["wait-drained", "blue", "--timeout", "5s"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_times_out_with_code_timeout_and_ctl_exit_5() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], SECTIONS, "", false).await;
    let url = p.url("/slow?sleep_ms=2500");
    let slow = tokio::spawn(async move { send(&client(), get(&url)).await });
    wait_for(
        "the slow request on blue",
        Duration::from_secs(5),
        || async { blue.hits.load(SeqCst) == 1 },
    )
    .await;
    assert_eq!(p.admin("pool blue drain").await["ok"], true);

    let reply = p.admin("wait-drained blue timeout 200ms").await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "timeout");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 request"),
        "{reply}"
    );

    let socket = p.socket.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        ctl(&socket, &["wait-drained", "blue", "--timeout", "300ms"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("\"timeout\""), "{out}");

    // Bad arguments are refused before anything waits.
    for bad in [
        "wait-drained",
        "wait-drained red",
        "wait-drained blue timeout 0s",
        "wait-drained blue expect-gen 3",
    ] {
        assert_eq!(p.admin(bad).await["error"]["code"], "bad_argument", "{bad}");
    }
    assert_eq!(slow.await.unwrap().0, 200);
}

/// One HTTP/1.1 keep-alive connection that sends a request every 50 ms until the proxy
/// closes it; returns when (after `drained_at`) it was closed, and whether a response said
/// `Connection: close` first. Any failed request fails the test.
async fn keep_alive_until_closed(
    addr: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (Instant, bool) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut said_close = false;
    let mut first = true;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if said_close || tx.is_closed() {
            break;
        }
        if tx.ready().await.is_err() {
            break;
        }
        let req = http::Request::get("/")
            .header("host", "t")
            .header(HASH_HEADER, HASH)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        said_close = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v == "close");
        resp.into_body().collect().await.unwrap();
        if first {
            first = false;
            let _ = ready.send(()).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    (Instant::now(), said_close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_downstream_connections_gradually_and_idle_upstream_connections_at_once() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], SECTIONS, "", false).await;

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(16);
    let conns: Vec<_> = (0..8)
        .map(|_| tokio::spawn(keep_alive_until_closed(p.addr, ready_tx.clone())))
        .collect();
    for _ in 0..8 {
        tokio::time::timeout(Duration::from_secs(5), ready_rx.recv())
            .await
            .unwrap();
    }
    // An HTTP/2 (prior knowledge) client too.
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let h2_driver = tokio::spawn(h2_conn);
    let req = http::Request::get(p.url("/"))
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    let backend = p.routes.load().pool(PoolId::Blue).backends[0].clone();
    let b = backend.clone();
    wait_for(
        "an idle upstream connection to blue",
        Duration::from_secs(3),
        || {
            let b = b.clone();
            async move { b.conns.idle() > 0 }
        },
    )
    .await;

    let drained_at = Instant::now();
    assert_eq!(p.admin("pool blue drain").await["ok"], true);
    assert_eq!(
        backend.conns.idle(),
        0,
        "idle upstream connections to the drained pool stayed open"
    );

    let mut closed = Vec::new();
    for c in conns {
        let (at, said_close) = c.await.unwrap();
        assert!(
            said_close,
            "an HTTP/1.1 connection closed without a `Connection: close` response"
        );
        closed.push(at.duration_since(drained_at));
    }
    let h2_done = tokio::time::timeout(Duration::from_secs(5), h2_driver).await;
    assert!(
        matches!(h2_done, Ok(Ok(Ok(())))),
        "the HTTP/2 connection did not end with GOAWAY: {h2_done:?}"
    );
    let h2_closed = drained_at.elapsed();

    closed.sort();
    let (first, last) = (closed[0], closed[closed.len() - 1]);
    assert!(
        last < Duration::from_millis(2000 + 1500),
        "connections still open {last:?} after a 2 s drain window"
    );
    assert!(
        h2_closed < Duration::from_millis(2000 + 1500),
        "HTTP/2 connection closed only after {h2_closed:?}"
    );
    assert!(
        last - first >= Duration::from_millis(300),
        "connections were not spread over the drain window: {closed:?}"
    );
    // Nothing went to blue after the drain, and new connections still work.
    let (status, _, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"green"[..]));
}
