//! The upstream connection pool under concurrency: a backend that sees a few hundred
//! requests in flight at once, wave after wave, keeps the connections of the first wave.
//! With the pool's idle cap under the wave (it was 256), every wave closed the overflow
//! when it ended and dialled it again at the next: a handshake on both ends and a
//! TIME_WAIT socket per request over the cap, 2,500 new connections a second in the
//! HTTP/2 benchmark (bench/RESULTS.md).

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// More requests in flight to one backend than the old default idle cap (256).
const WAVE: usize = 300;
const WAVES: usize = 3;

/// A backend that counts the connections that carried a request (health checks dial
/// their own and are not counted) and holds every request until `wave` have arrived,
/// so that each wave has all of its requests in flight at once (1: no waiting).
struct Backend {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Of those, the ones still open.
    open: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn backend(wave: usize) -> Backend {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Room for a whole wave of connects at once.
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (released_tx, released) = watch::channel(0usize);
    let released_tx = Arc::new(released_tx);
    let stop = CancellationToken::new();
    let (c, o, a, s) = (
        connections.clone(),
        open.clone(),
        arrived.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r { Ok((st, _)) => st, Err(_) => continue },
                _ = s.cancelled() => return,
            };
            let counted = Arc::new(AtomicBool::new(false));
            let (c, o, a, s) = (c.clone(), o.clone(), a.clone(), s.clone());
            let was_counted = counted.clone();
            let (tx, rx) = (released_tx.clone(), released.clone());
            tokio::spawn(async move {
                let open = o.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, o, a, counted) = (c.clone(), o.clone(), a.clone(), counted.clone());
                    let (tx, mut rx) = (tx.clone(), rx.clone());
                    async move {
                        if req.uri().path() != "/health" {
                            if !counted.swap(true, SeqCst) {
                                c.fetch_add(1, SeqCst);
                                o.fetch_add(1, SeqCst);
                            }
                            // The n-th request belongs to wave n / size; it is answered
                            // once that wave is complete (or after a deadline, so that a
                            // broken run fails on its counts rather than hangs).
                            let n = a.fetch_add(1, SeqCst) + 1;
                            let this = n.div_ceil(wave);
                            if n % wave == 0 {
                                tx.send_replace(this);
                            }
                            let _ = tokio::time::timeout(
                                Duration::from_secs(20),
                                rx.wait_for(|w| *w >= this),
                            )
                            .await;
                        }
                        let resp = Response::builder()
                            .header(HASH_HEADER, HASH)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::select! {
                    _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc) => {}
                    _ = s.cancelled() => {}
                }
                if was_counted.load(SeqCst) {
                    open.fetch_sub(1, SeqCst);
                }
            });
        }
    });
    Backend {
        addr,
        connections,
        open,
        arrived,
        stop,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_over_the_old_idle_cap_reuse_the_first_waves_connections() {
    let blue = backend(WAVE).await;
    let green = upstream("green").await;
    // The pools' defaults: no max_idle_per_backend here.
    let proxy = proxy_multi(&[blue.addr], &[green.addr], "").await;
    let c = client();
    let url = proxy.url("/");
    for wave in 1..=WAVES {
        let answers = futures_util::future::join_all((0..WAVE).map(|_| {
            let (c, url) = (c.clone(), url.clone());
            async move { send(&c, get(&url)).await.0 }
        }))
        .await;
        let ok = answers.iter().filter(|s| s.is_success()).count();
        assert_eq!(ok, WAVE, "wave {wave}: {answers:?}");
        assert_eq!(blue.arrived.load(SeqCst), wave * WAVE, "wave {wave}");
    }
    // Every wave had all its requests in flight at once, so the first opened WAVE
    // connections; the later ones found them all idle in the pool.
    assert_eq!(
        blue.connections.load(SeqCst),
        WAVE,
        "{} requests in {WAVES} waves of {WAVE} used {} upstream connections",
        WAVES * WAVE,
        blue.connections.load(SeqCst)
    );
    assert_eq!(green.hits.load(SeqCst), 0);
    // The same count, as an operator sees it.
    let text = proxy.metrics().await;
    let opened = metric(
        &text,
        &format!(
            "switchyard_upstream_connections_opened_total{{pool=\"blue\",backend=\"{}\"}}",
            blue.addr
        ),
    );
    assert_eq!(opened, WAVE as f64, "{text}");
}

#[tokio::test]
async fn a_pool_that_keeps_no_idle_connections_dials_one_per_request() {
    let blue = backend(1).await;
    let green = upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    // config_text has no room for a pool key: the same text with the cap added.
    let text = config_text(dir.path(), &[blue.addr], &[green.addr], "").replacen(
        "[pools.green]",
        "max_idle_per_backend = 0\n[pools.green]",
        1,
    );
    let cfg = switchyard::config::Config::from_toml_str(&text).unwrap();
    let server = switchyard::Switchyard::bind(cfg).await.unwrap();
    let url = format!("http://{}/", server.http_addrs()[0]);
    let stop = CancellationToken::new();
    let _stop = DropCancel(stop.clone());
    tokio::spawn(async move { server.run(stop).await.unwrap() });
    let c = client();
    for i in 1..=5 {
        let (status, _, _) = send(&c, get(&url)).await;
        assert!(status.is_success(), "request {i}: {status}");
        assert_eq!(blue.connections.load(SeqCst), i, "request {i}");
    }
}

#[tokio::test]
async fn idle_connections_close_after_upstream_idle_with_no_requests() {
    const HELD: usize = 3;
    let blue = backend(HELD).await;
    let green = upstream("green").await;
    let proxy = proxy_multi(
        &[blue.addr],
        &[green.addr],
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nupstream_idle = \"1s\"\n",
    )
    .await;
    let c = client();
    let url = proxy.url("/");
    let answers = futures_util::future::join_all((0..HELD).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move { send(&c, get(&url)).await.0 }
    }))
    .await;
    assert!(answers.iter().all(|s| s.is_success()), "{answers:?}");
    assert_eq!(blue.connections.load(SeqCst), HELD);
    // No request comes to take them: the sweep closes them once they have waited 1 s.
    wait_for(
        "the pool to close its idle connections",
        Duration::from_secs(10),
        || async { blue.open.load(SeqCst) == 0 },
    )
    .await;
}
