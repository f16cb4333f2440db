//! DEMO: a steady synthetic client load through the proxy, counting what clients see
//! per pool (from the `x-upstream` answer header) and every error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::PoolId;

/// Counters shared by the load tasks and the display.
#[derive(Default)]
pub struct Tally {
    pub served: [AtomicU64; 2],
    pub errors: AtomicU64,
    /// Milliseconds since the demo's start of the last answer from each pool.
    pub last_seen_ms: [AtomicU64; 2],
    /// First answer that broke the contract (5xx, no hash, slow), ms since start; 0 = none.
    pub first_bad_ms: AtomicU64,
    stop: AtomicBool,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.served[0].load(Ordering::Relaxed) + self.served[1].load(Ordering::Relaxed)
    }

    pub fn served(&self, pool: PoolId) -> u64 {
        self.served[pool.index()].load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `clients` keep-alive connections, together about `rate` requests per second,
/// until [`Tally::stop`]. Each connection is re-opened if the proxy closes it.
pub fn start(
    addr: SocketAddr,
    clients: usize,
    rate: u64,
    hash: &'static str,
    epoch: Instant,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let per_client = Duration::from_micros(1_000_000 * clients as u64 / rate.max(1));
    for _ in 0..clients {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_client);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !tally.stop.load(Ordering::Relaxed) {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok((mut tx, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                while !tally.stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let req = Request::get("/")
                        .header("host", "demo.switchyard")
                        .header("x-constitutional-hash", hash)
                        .body(Empty::<Bytes>::new());
                    let Ok(req) = req else { break };
                    let sent = Instant::now();
                    let resp =
                        match tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
                            .await
                        {
                            Ok(Ok(r)) => r,
                            _ => {
                                tally.errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        };
                    let now_ms = epoch.elapsed().as_millis() as u64;
                    let pool = resp
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| PoolId::parse(v.to_str().ok()?));
                    let bad =
                        !resp.status().is_success() || sent.elapsed() > Duration::from_millis(50);
                    if !resp.status().is_success() {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(p) = pool {
                        tally.served[p.index()].fetch_add(1, Ordering::Relaxed);
                        tally.last_seen_ms[p.index()].store(now_ms, Ordering::Relaxed);
                    }
                    if bad || resp.status() == http::StatusCode::BAD_GATEWAY {
                        let _ = tally.first_bad_ms.compare_exchange(
                            0,
                            now_ms,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    if resp.into_body().collect().await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    tally
}
