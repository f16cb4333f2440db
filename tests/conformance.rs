//! Front-door conformance over byte-exact HTTP/1.1: Host (RFC 9112 §3.2), fields that read
//! as the hash header, trailers, the hash on forwarded responses in `report`/`off`, the
//! framing scan and deadlines after an `Upgrade` request, and every refusal counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// Sends `request` on a new connection and reads one response (bounded).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// Reads one response with a Content-Length body off a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("response in time")
}

fn forwarded(up: &Upstream) -> HeaderMap {
    up.last_headers
        .lock()
        .unwrap()
        .clone()
        .expect("a forwarded request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_host_missing_repeated_or_invalid_is_400_and_never_forwarded() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let hash = format!("{HASH_HEADER}: {HASH}\r\n");
    let cases = [
        ("GET / HTTP/1.1\r\n{hash}\r\n", "missing_host"),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n{hash}\r\n",
            "duplicate_host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n{hash}\r\n",
            "duplicate_host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@a.test\r\n{hash}\r\n",
            "invalid_host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.test/x\r\n{hash}\r\n",
            "invalid_host",
        ),
        (
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n{hash}\r\n",
            "duplicate_host",
        ),
    ];
    for (req, code) in cases {
        let req = req.replace("{hash}", &hash);
        let answer = exchange(p.addr, req.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.") && answer[8..].starts_with(" 400"),
            "{req:?}: {answer}"
        );
        assert!(
            answer.contains(&format!("\"error\":\"{code}\"")),
            "{req:?}: {answer}"
        );
        assert!(answer.contains("\"reason\":"), "{answer}");
    }
    assert_eq!(blue.hits.load(SeqCst) + green.hits.load(SeqCst), 0);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"switchyard_rejected_requests_total{reason="bad_host"}"#
        ),
        cases.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_replaces_host_and_http10_gets_one() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let hash = format!("{HASH_HEADER}: {HASH}\r\n");
    let answer = exchange(
        p.addr,
        format!("GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n{hash}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let h = forwarded(&blue);
    let hosts: Vec<_> = h.get_all("host").iter().collect();
    assert_eq!(hosts, ["a.test"], "the target's authority wins");

    let answer = exchange(p.addr, format!("GET /y HTTP/1.0\r\n{hash}\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let h = forwarded(&blue);
    let hosts: Vec<_> = h.get_all("host").iter().collect();
    assert_eq!(
        hosts,
        [blue.addr.to_string().as_str()],
        "HTTP/1.0: the backend's address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_twin_of_the_hash_or_request_id_header_is_refused() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    for twin in [
        "X_Constitutional_Hash: anything",
        "x-constitutional_hash: anything",
        "X_Request_Id: forged",
    ] {
        let req =
            format!("GET / HTTP/1.1\r\nHost: a.test\r\n{HASH_HEADER}: {HASH}\r\n{twin}\r\n\r\n");
        let answer = exchange(p.addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{twin}: {answer}");
        assert!(
            answer.contains("\"error\":\"ambiguous_header\""),
            "{answer}"
        );
    }
    assert_eq!(blue.hits.load(SeqCst) + green.hits.load(SeqCst), 0);
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Option<HeaderMap>)>>>;

/// An upstream that records each request's headers and trailers and answers 200 with the hash.
async fn recording_upstream() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let health = parts.uri.path() == "/health";
                        let collected = body.collect().await.ok();
                        let trailers = collected.and_then(|c| c.trailers().cloned());
                        if !health {
                            record.lock().unwrap().push((parts.headers, trailers));
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        resp.headers_mut()
                            .insert(HASH_HEADER, HASH.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hash_in_a_request_trailer_never_reaches_the_upstream() {
    let (addr, seen) = recording_upstream().await;
    let p = proxy_multi(&[addr], &[addr], "").await;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a.test\r\n{HASH_HEADER}: {HASH}\r\nTransfer-Encoding: chunked\r\n\
Trailer: X-Constitutional-Hash, X-Request-Id, X-Kept\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n0\r\nX-Constitutional-Hash: forged\r\nX-Request-Id: forged\r\n\
X_Constitutional_Hash: forged\r\nX-Kept: yes\r\n\r\n"
    );
    let answer = exchange(p.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen.lock().unwrap();
    let (headers, trailers) = &seen[0];
    let hashes: Vec<_> = headers.get_all(HASH_HEADER).iter().collect();
    assert_eq!(hashes, [HASH], "the real header, once");
    if let Some(t) = trailers {
        assert!(
            t.get(HASH_HEADER).is_none(),
            "forged trailer forwarded: {t:?}"
        );
        assert!(t.get("x_constitutional_hash").is_none(), "{t:?}");
        assert!(t.get("x-request-id").is_none(), "{t:?}");
        assert_eq!(
            t.get("x-kept").map(|v| v.as_bytes()),
            Some(&b"yes"[..]),
            "{t:?}"
        );
    } else {
        panic!("no trailers reached the upstream (x-kept should have)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_off_forward_the_upstream_hash_as_it_came() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    for mode in ["report", "off"] {
        let p = proxy(
            &blue,
            &green,
            &format!("[constitution]\nresponses = \"{mode}\"\nrequests = \"enforce\"\n"),
        )
        .await;
        let c = client();
        blue.behavior.wrong_hash.store(true, SeqCst);
        let (status, h, _) = send(&c, get(&p.url("/"))).await;
        assert_eq!(status, 200);
        let got: Vec<_> = h.get_all(HASH_HEADER).iter().collect();
        assert_eq!(got, ["0000000000000000"], "{mode}: wrong hash as it came");
        blue.behavior.wrong_hash.store(false, SeqCst);
        blue.behavior.omit_hash.store(true, SeqCst);
        let (status, h, _) = send(&c, get(&p.url("/"))).await;
        assert_eq!(status, 200);
        assert!(h.get(HASH_HEADER).is_none(), "{mode}: absent as it came");
        blue.behavior.omit_hash.store(false, SeqCst);
        // The proxy's own answer (a request without the hash) carries the configured one.
        let req = Request::get(p.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, h, _) = send(&c, req).await;
        assert_eq!(status, 403);
        assert_eq!(h[HASH_HEADER], HASH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_te_after_an_upgrade_request_that_got_200_is_refused() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let h = format!("Host: a.test\r\n{HASH_HEADER}: {HASH}\r\n");
    s.write_all(
        format!("GET / HTTP/1.1\r\n{h}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s.write_all(
        format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed after the refusal")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    assert_eq!(blue.hits.load(SeqCst) + green.hits.load(SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_after_an_upgrade_request_is_closed_by_the_deadlines() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"400ms\"\nidle = \"1500ms\"\n",
    )
    .await;
    let h = format!("Host: a.test\r\n{HASH_HEADER}: {HASH}\r\n");
    let upgrade = format!("GET / HTTP/1.1\r\n{h}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n");
    // A partial head after it: closed after `header_read`, counted as header_timeout.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("a partial head after an Upgrade request is closed after header_read")
        .unwrap();
    wait_rejected(&p, "header_timeout", 1.0).await;
    // Nothing after it: closed after `idle`.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("an idle connection after an Upgrade request is closed after idle")
        .unwrap();
}

/// Sum of every series of `name` (all label sets).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_distinct_bad_requests_moves_the_counters_by_exactly_its_size() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // A slow request outlasts `upstream_response`: a 504 from the proxy.
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.limits]\nmax_body_bytes = \"1KiB\"\nmax_header_bytes = \"2KiB\"\n\
[proxy.timeouts]\nupstream_response = \"300ms\"\n",
    )
    .await;
    let h = format!("Host: a.test\r\n{HASH_HEADER}: {HASH}\r\n");
    let big = "x".repeat(3000);
    let batch: Vec<(String, &str)> = vec![
        (format!("GET / HTTP/1.1\r\n{HASH_HEADER}: {HASH}\r\n\r\n"), "400"),
        (format!("GET / HTTP/1.1\r\n{h}Host: b.test\r\n\r\n"), "400"),
        (format!("GET / HTTP/1.1\r\nHost: a b\r\n{HASH_HEADER}: {HASH}\r\n\r\n"), "400"),
        (format!("GET / HTTP/1.1\r\n{h}X_Constitutional_Hash: 1\r\n\r\n"), "400"),
        (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), "400"),
        (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"), "400"),
        (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5x\r\n\r\nhello"), "400"),
        (format!("GET / HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n"), "400"),
        (format!("GET / HTTP/1.1\r\n{h}Bad Name: 1\r\n\r\n"), "400"),
        ("GARBAGE\r\n\r\n".to_string(), "400"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".to_string(), "403"),
        (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5000\r\n\r\n"), "413"),
        (format!("GET / HTTP/1.1\r\n{h}X-Big: {big}\r\n\r\n"), "431"),
        (format!("GET /?sleep_ms=3000 HTTP/1.1\r\n{h}\r\n"), "504"),
    ];
    let before = p.metrics().await;
    let base = total(&before, "switchyard_rejected_requests_total")
        + total(&before, "switchyard_upstream_errors_total");
    for (req, status) in &batch {
        let answer = exchange(p.addr, req.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?} -> {answer}"
        );
    }
    let n = batch.len() as f64;
    wait_for("every refusal counted", Duration::from_secs(5), || async {
        let m = p.metrics().await;
        total(&m, "switchyard_rejected_requests_total")
            + total(&m, "switchyard_upstream_errors_total")
            - base
            >= n
    })
    .await;
    // Late counts would show up here (each connection is closed by now).
    tokio::task::yield_now().await;
    let m = p.metrics().await;
    let moved = total(&m, "switchyard_rejected_requests_total")
        + total(&m, "switchyard_upstream_errors_total")
        - base;
    assert_eq!(moved, n, "counters moved by {moved} for {n} refusals\n{m}");
    // Only the slow request reached an upstream.
    assert_eq!(blue.hits.load(SeqCst) + green.hits.load(SeqCst), 1);
}

/// An upstream written by hand: every request (heads only, no bodies) gets a chunked 200
/// whose trailers carry a forged hash, a forged request id and one field to keep.
async fn trailer_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = format!(
        "HTTP/1.1 200 OK\r\n{HASH_HEADER}: {HASH}\r\nTransfer-Encoding: chunked\r\n\
Trailer: X-Constitutional-Hash, X-Request-Id, X-Kept\r\n\r\n2\r\nok\r\n0\r\n\
X-Constitutional-Hash: forged\r\nX-Request-Id: forged\r\nX_Constitutional_Hash: forged\r\n\
X-Kept: yes\r\n\r\n"
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hash_in_a_response_trailer_never_reaches_the_client() {
    let up = trailer_upstream().await;
    let p = proxy_multi(&[up], &[up], "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\n{HASH_HEADER}: {HASH}\r\nTE: trailers\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // After the last chunk: the trailer section.
    let trailers = rest.split_once("0\r\n").map_or("", |(_, t)| t);
    assert!(
        trailers.contains("x-kept: yes"),
        "trailers were not passed at all: {rest}"
    );
    assert!(
        !trailers.contains("forged"),
        "a forged trailer reached the client: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_ambiguous_refusals_name_their_code_in_the_access_log() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = proxy(
        &blue,
        &green,
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    )
    .await;
    let hash = format!("{HASH_HEADER}: {HASH}\r\n");
    for req in [
        format!("GET /a HTTP/1.1\r\n{hash}\r\n"),
        format!("GET /b HTTP/1.1\r\nHost: a.test\r\n{hash}X_Request_Id: 1\r\n\r\n"),
    ] {
        let answer = exchange(p.addr, req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let read = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    wait_for("two access-log lines", Duration::from_secs(5), || async {
        read().len() >= 2
    })
    .await;
    let lines = read();
    let errors: Vec<_> = lines
        .iter()
        .map(|l| l["error"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(errors, ["missing_host", "ambiguous_header"], "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == 400), "{lines:?}");
}

/// A request body the client stops sending is given up after `proxy.timeouts.body_idle`:
/// 408 with the `body_timeout` code, the connection closed, counted as `body_timeout`; a
/// body that keeps coming, however slowly, is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_gets_408_after_body_idle() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, &with_timeouts("body_idle = \"600ms\"")).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a.test\r\n{HASH_HEADER}: {HASH}\r\nContent-Length: 10\r\n\r\n"
    );
    // Slow but steady: a byte every 200 ms (a third of the limit) all arrive.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"x").await.unwrap();
    }
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Three bytes of ten, then nothing.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("a stalled body is answered and closed")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(rest.contains("\"error\":\"body_timeout\""), "{rest}");
    assert!(
        rest.to_ascii_lowercase().contains("connection: close"),
        "{rest}"
    );
    wait_rejected(&p, "body_timeout", 1.0).await;
}

/// A body that never stalls long enough for `body_idle` but trickles on is cut off by the
/// whole-request deadline (`proxy.timeouts.request`, counted from the request's head): 408
/// with the `request_timeout` code, the connection closed, counted as `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_trickles_past_the_whole_request_deadline_gets_408() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        &with_timeouts("body_idle = \"5s\"\nrequest = \"1s\""),
    )
    .await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a.test\r\n{HASH_HEADER}: {HASH}\r\nContent-Length: 100\r\n\r\n"
    );
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = s.into_split();
    // A byte every 100 ms, far inside body_idle, until the proxy answers (or 99 bytes).
    let trickle = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut rest = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut rest)).await;
    trickle.abort();
    assert!(
        answered.is_ok(),
        "a trickling body was answered within 10 s"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(rest.contains("\"error\":\"request_timeout\""), "{rest}");
    wait_rejected(&p, "request_timeout", 1.0).await;
}
