//! Idle HTTP/1.1 keep-alive connections, plain or TLS, are parked: the codec and its
//! buffers are dropped and only the socket (and TLS session) is kept until the client
//! sends again. Parking must be invisible to the client: the next request (even
//! pipelined, even an upgrade with early bytes) is served on the same connection; the idle
//! limit (`proxy.timeouts.idle`), the header deadline and shutdown still close it (TLS:
//! with a `close_notify`). `switchyard_connections_parked` shows how many are parked.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::tls::{connect_tls, tls_listener};
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A short `header_read` makes the idle check run every 100 ms.
const FAST_CHECKS: &str =
    "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"400ms\"\n";

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{HASH_HEADER}: {HASH}\r\n\r\n")
}

/// Reads one response with a Content-Length body; returns (status line, body).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (String, String) {
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

/// Two requests in one write; both answered by an upstream.
async fn two_pipelined<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let both = format!("{}{}", request("/first"), request("/second"));
    s.write_all(both.as_bytes()).await.unwrap();
    for _ in 0..2 {
        let (status, body) = read_response(s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body == "blue" || body == "green", "{body}");
    }
}

/// The client sees its connection closed (EOF or reset) within `within`.
/// Waits (5 s at most) until the proxy has no downstream connection open.
async fn wait_no_connections(p: &TestProxy) {
    wait_for("no open connections", Duration::from_secs(5), || async {
        p.gauge("switchyard_connections_active").await == 0.0
    })
    .await;
}

async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) {
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
    two_pipelined(&mut s).await;
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
    wait_no_connections(&p).await;
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
    upgrade_with_early_bytes(&mut s).await;
}

/// Asks for a WebSocket upgrade with a first frame in the same write; the 101 comes back,
/// the frame is echoed by the upstream, and the tunnel keeps working.
async fn upgrade_with_early_bytes<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
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

/// A proxy with [`FAST_CHECKS`] (and `extra` timeouts) and a TLS listener; the
/// certificate to trust, and the directory that holds its files.
async fn tls_proxy(
    blue: &Upstream,
    green: &Upstream,
    extra: &str,
) -> (
    TestProxy,
    rustls::pki_types::CertificateDer<'static>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (section, cert) = tls_listener(dir.path());
    let p = proxy(blue, green, &format!("{FAST_CHECKS}{extra}{section}")).await;
    (p, cert, dir)
}

/// A TLS connection (HTTP/1.1 by ALPN) that has had one request answered, and the
/// answer's status line.
async fn served_tls(
    addr: std::net::SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> (tokio_rustls::client::TlsStream<TcpStream>, String) {
    let mut s = connect_tls(addr, cert, &[b"http/1.1"]).await;
    s.write_all(request("/").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    (s, status)
}

/// The proxy closes `s` within `within`, after a `close_notify`: rustls reports an end of
/// stream without one as an error (a truncation attack), so `read_to_end` succeeds only
/// after a proper TLS close.
async fn closed_with_close_notify<S: AsyncRead + Unpin>(s: &mut S, within: Duration, by: &str) {
    let mut rest = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("not closed by {by}"))
        .unwrap_or_else(|e| panic!("closed by {by} without a close_notify: {e}"));
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_parked_served_again_and_upgraded() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "").await;
    let (mut s, status) = served_tls(p.tls_addr.unwrap(), &cert).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    wait_parked(&p, 1.0).await;

    // Two pipelined requests in one write (so in one TLS record) wake it; both are
    // answered, in order.
    two_pipelined(&mut s).await;
    wait_parked(&p, 1.0).await;
    // A parked TLS connection hands its stream to a tunnel like a plain one.
    upgrade_with_early_bytes(&mut s).await;
    wait_parked(&p, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_alpn_is_http1_unless_its_first_bytes_are_an_http2_preface() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "").await;
    let tls = p.tls_addr.unwrap();

    let mut s = connect_tls(tls, &cert, &[]).await;
    s.write_all(request("/").as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut s).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    wait_parked(&p, 1.0).await;

    // HTTP/2 with prior knowledge over TLS: the connection's first bytes decide.
    let s = connect_tls(tls, &cert, &[]).await;
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get(format!("https://{}/", common::tls::TLS_NAME))
            .header(HASH_HEADER, HASH)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    // The HTTP/1.1 connection is still the only one parked.
    assert_eq!(p.gauge("switchyard_connections_parked").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_tls_connection_is_closed_with_close_notify_after_the_idle_limit() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "idle = \"1500ms\"\n").await;
    let (mut s, _) = served_tls(p.tls_addr.unwrap(), &cert).await;
    wait_parked(&p, 1.0).await;
    closed_with_close_notify(&mut s, Duration::from_secs(10), "the idle limit").await;
    wait_for("no open connections", Duration::from_secs(5), || async {
        p.gauge("switchyard_connections_active").await == 0.0
            && p.gauge("switchyard_connections_parked").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_request_head_is_closed_by_the_header_deadline() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "").await;
    let (mut s, _) = served_tls(p.tls_addr.unwrap(), &cert).await;
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("a partial head is closed after header_read (400 ms)");
    wait_rejected(&p, "header_timeout", 1.0).await;
    // A TLS connection that sends nothing after its handshake is closed too.
    let mut silent = connect_tls(p.tls_addr.unwrap(), &cert, &[b"http/1.1"]).await;
    closed_within(&mut silent, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_chose_h2_and_sends_nothing_is_closed_after_the_idle_limit() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "idle = \"1500ms\"\n").await;
    // ALPN h2, then not even the preface: no request begins, so the idle limit applies.
    let mut silent = connect_tls(p.tls_addr.unwrap(), &cert, &[b"h2"]).await;
    closed_within(&mut silent, Duration::from_secs(10)).await;
    wait_no_connections(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_and_shutdown_close_parked_tls_connections_with_close_notify() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, cert, _certs) = tls_proxy(&blue, &green, "").await;
    let tls = p.tls_addr.unwrap();
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(served_tls(tls, &cert).await.0);
    }
    wait_parked(&p, 2.0).await;
    // A drain closes the first (within the default window, then the 1 s linger)...
    assert_eq!(p.admin("pool blue drain").await["ok"], true);
    closed_with_close_notify(&mut conns[0], Duration::from_secs(15), "the drain").await;
    // ...and a new connection parked after it is closed by shutdown.
    let (mut s, _) = served_tls(tls, &cert).await;
    wait_parked(&p, 1.0).await;
    p.shutdown.cancel();
    closed_with_close_notify(&mut s, Duration::from_secs(10), "shutdown").await;
}
