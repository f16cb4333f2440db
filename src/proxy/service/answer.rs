//! DATA PLANE: the last steps of a request: judge the backend's answer (latency, the
//! response hash, 5xx, the backend's health, the live statistics the rollout gates read),
//! then hand it back: the body streaming, or a tunnel when it switched protocols.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, warn};

use super::forward::Sent;
use super::{Ctx, UpgradedIo, Upgrades};
use crate::config::{HashMode, PoolId};
use crate::metrics::window::Outcome;
use crate::metrics::{Charge, UpstreamErrorKind};
use crate::proxy::backend::{InflightGuard, Pool};
use crate::proxy::body::ProxyBody;
use crate::proxy::edge::access_log::HashVerdict;
use crate::proxy::edge::record::Trace;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::route::RouteHandle;

/// Judges a response head and records it: latency, the response hash (an enforced
/// violation refuses it), 5xx and the backend's passive health, the request counters and
/// the live statistics.
pub(super) fn judge(
    cx: &Ctx<'_>,
    pool: &Pool,
    sent: &Sent,
    trace: &mut Trace<'_>,
) -> Result<(), ProxyError> {
    let (s, metrics, pool_id) = (cx.s, cx.metrics, pool.id);
    let backend = sent.guard.backend();
    let now = Instant::now();
    let latency = now.saturating_duration_since(cx.start);
    trace.upstream = Some(latency);
    metrics.duration(pool_id, latency.as_secs_f64());
    let mut outcome = Outcome::Success;
    if s.responses != HashMode::Off {
        let verdict = headers::check_hash(sent.resp.headers(), &s.hash.header, &s.hash.value);
        trace.hash_response = HashVerdict::of(verdict);
        if let Err(reason) = verdict {
            metrics.response_violation(pool_id, reason);
            if s.responses == HashMode::Enforce {
                return Err(ProxyError::ResponseHash {
                    pool: pool_id,
                    backend: backend.addr.clone(),
                    reason,
                });
            }
            metrics.upstream_error(pool_id, UpstreamErrorKind::Hash);
            outcome = Outcome::HashViolation;
        }
    }
    let status = sent.resp.status();
    if status.is_server_error() {
        metrics.upstream_error(pool_id, UpstreamErrorKind::Status5xx);
        if outcome == Outcome::Success {
            outcome = Outcome::Error;
        }
        if pool.record_failure(backend) {
            warn!(pool = %pool_id, backend = %backend.addr, "backend ejected after consecutive failures");
        }
    } else {
        backend.record_success();
    }
    metrics.request(Charge::Pool(pool_id), status.as_u16());
    metrics.backend_response(pool_id, backend, status.as_u16());
    let stats = &cx.conn.shared.stats;
    stats.record_at(stats.ms_of(now), pool_id, latency, outcome);
    Ok(())
}

/// Hands a judged response back: hop-by-hop fields out, then the body streaming from the
/// backend (its connection back to the pool once it ends), or, for a 101, a tunnel.
pub(super) fn respond(
    cx: &Ctx<'_>,
    pool: PoolId,
    sent: Sent,
    upgrade: bool,
    downstream: Option<OnUpgrade>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Sent {
        guard,
        tx,
        mut resp,
    } = sent;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
    if switching {
        return switch_protocols(cx, pool, resp, guard, downstream);
    }
    let settings = cx.table.settings.clone();
    if resp.body().is_end_stream() {
        guard.backend().conns.checkin(tx);
        return Ok(resp.map(|b| ProxyBody::upstream(b, guard, None, settings)));
    }
    Ok(resp.map(|b| ProxyBody::upstream(b, guard, Some(tx), settings)))
}

/// A 101: both sides switch protocols and a tunnel copies bytes between them; the
/// client gets the response head alone.
fn switch_protocols(
    cx: &Ctx<'_>,
    pool: PoolId,
    mut resp: Response<hyper::body::Incoming>,
    guard: InflightGuard,
    downstream: Option<OnUpgrade>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let conn = cx.conn;
    let down = match (&conn.upgrades, downstream) {
        (Upgrades::Manual(slot), Some(_)) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(tx);
            }
            Some(Downstream::Manual(rx))
        }
        (Upgrades::Hyper, Some(on)) => Some(Downstream::Hyper(on)),
        (_, None) => None,
    };
    let (Some(down), Some(up)) = (down, resp.extensions_mut().remove::<OnUpgrade>()) else {
        return Err(ProxyError::Upstream {
            pool,
            backend: guard.backend().addr.clone(),
            message: "101 Switching Protocols without an upgrade request".into(),
        });
    };
    conn.framing.set_switched();
    let routes = conn.shared.routes.clone();
    let limits = TunnelLimits {
        grace: cx.s.tunnel_grace,
        idle: cx.s.tunnel_idle,
    };
    tokio::spawn(tunnel(down, up, guard, pool, routes, limits));
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// The client side of a tunnel, once the response has switched protocols.
enum Downstream {
    Hyper(OnUpgrade),
    Manual(tokio::sync::oneshot::Receiver<UpgradedIo>),
}

/// Copies bytes both ways until either side ends, counting in `moved` the bytes that
/// pass the client's side (either way).
async fn pump<D, U>(down: D, mut up: U, backend: &str, moved: &AtomicU64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Counted { io: down, moved };
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        debug!(%backend, error = %e, "upgraded connection ended");
    }
}

/// How long a tunnel may outlive its pool's traffic (`grace`), and go without a byte
/// either way (`idle`).
struct TunnelLimits {
    grace: Duration,
    idle: Duration,
}

/// An I/O stream that adds the bytes read from it and written to it to `moved`.
struct Counted<'a, T> {
    io: T,
    moved: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Copies bytes both ways once both sides have switched protocols. The connection stays
/// on the backend (and so the pool) that accepted the upgrade, and is closed once it has
/// moved no byte for `limits.idle`.
async fn tunnel(
    down: Downstream,
    up: OnUpgrade,
    guard: InflightGuard,
    pool: PoolId,
    routes: Arc<RouteHandle>,
    limits: TunnelLimits,
) {
    let backend = &guard.backend().addr;
    let moved = AtomicU64::new(0);
    let copy = async {
        let up = match up.await {
            Ok(up) => TokioIo::new(up),
            Err(e) => return debug!(%backend, error = %e, "upgrade failed"),
        };
        match down {
            Downstream::Hyper(down) => match down.await {
                Ok(down) => pump(TokioIo::new(down), up, backend, &moved).await,
                Err(e) => debug!(%backend, error = %e, "upgrade failed"),
            },
            Downstream::Manual(down) => match down.await {
                Ok(down) => pump(down, up, backend, &moved).await,
                Err(_) => debug!(%backend, "the client connection ended before the upgrade"),
            },
        }
    };
    // Once the pool takes no new requests (a rollback, a drain, weight 0), the tunnel
    // gets `grace` to finish, then it is closed: a rolled-back candidate keeps no clients.
    // A tunnel that moves no byte for `idle` is closed too (checked on the same ticks).
    let watch = async {
        let mut tick = tokio::time::interval(TUNNEL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut quiet_since) = (0, Instant::now());
        loop {
            tick.tick().await;
            let now = Instant::now();
            let m = moved.load(Ordering::Relaxed);
            if m != seen {
                (seen, quiet_since) = (m, now);
            } else if now.duration_since(quiet_since) >= limits.idle {
                return "it moved no byte for proxy.timeouts.tunnel_idle";
            }
            if !routes.load().takes_requests(pool) {
                break;
            }
        }
        tokio::time::sleep(limits.grace).await;
        "its pool no longer takes requests"
    };
    tokio::select! {
        _ = copy => {}
        why = watch => debug!(backend = %guard.backend().addr, %pool,
            "closing an upgraded connection: {why}"),
    }
}

/// How often an upgraded connection checks that its pool still takes requests.
const TUNNEL_CHECK: Duration = Duration::from_millis(250);
