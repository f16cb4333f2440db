//! A client that keeps asking: sequential keep-alive `GET /` to one proxy until told to
//! stop, counting answers, bounded in time and in count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{client, get};

/// Requests answered 200, and the rest (another status, an error, no answer within 5 s).
#[derive(Default)]
pub struct Counts {
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
}

/// Sequential keep-alive requests to `addr` until `stop`, at most `limit` or 100,000
/// requests.
pub fn load(
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    counts: Arc<Counts>,
    limit: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        let url = format!("http://{addr}/");
        let started = Instant::now();
        for _ in 0..100_000 {
            if stop.is_cancelled() || started.elapsed() > limit {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), c.request(get(&url))).await {
                Ok(Ok(resp)) if resp.status() == 200 => {
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}
