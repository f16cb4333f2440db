//! DATA PLANE (background): active health checks. Every `health.interval`, each backend
//! of each pool gets `GET health.path` on a fresh connection; a healthy answer is 2xx and
//! carries the exact constitutional hash. `fall` failures in a row take a backend out of
//! rotation, `rise` passes bring it back. Pools are re-read from the route table every
//! round, so reloads and new backends are picked up. A pool with TLS to its backends is
//! checked over TLS. Beside them, once a second, pooled upstream connections idle longer
//! than `proxy.timeouts.upstream_idle` are closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use metrics::Label;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::PoolId;
use crate::metrics::{names, Metrics};
use crate::proxy::backend::Backend;
use crate::proxy::headers;
use crate::proxy::route::RouteHandle;
use crate::proxy::settings::Settings;
use crate::proxy::upstream::open;

/// Runs the checks of both pools, and the idle-connection sweep, until shutdown.
pub async fn run(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    tokio::join!(
        pool_loop(
            PoolId::Blue,
            routes.clone(),
            metrics.clone(),
            shutdown.clone()
        ),
        pool_loop(PoolId::Green, routes.clone(), metrics, shutdown.clone()),
        sweep_loop(routes, shutdown),
    );
}

/// Once a second, closes pooled upstream connections idle longer than
/// `proxy.timeouts.upstream_idle`: without it, the connections a burst left in the pools
/// stay open until the next requests come to skip them.
async fn sweep_loop(routes: Arc<RouteHandle>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let table = routes.load();
        for id in [PoolId::Blue, PoolId::Green] {
            for b in table.pool(id).backends.iter() {
                let closed = b.conns.sweep();
                if closed > 0 {
                    debug!(pool = %id, backend = %b.addr, closed, "closed idle upstream connections");
                }
            }
        }
    }
}

async fn pool_loop(
    id: PoolId,
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let (pool, settings) = {
            let t = routes.load();
            (t.pool(id).clone(), t.settings.clone())
        };
        let cfg = &pool.health;
        if let Some(path) = &cfg.path {
            let checks = pool
                .backends
                .iter()
                .map(|b| check(b, path, cfg.timeout, &settings));
            let results = futures_util::future::join_all(checks).await;
            for (b, ok) in pool.backends.iter().zip(results) {
                observe(id, b, ok, cfg.fall, cfg.rise);
            }
        }
        // Without active checks the gauge still follows the operator switch and ejections.
        for b in pool.backends.iter() {
            let labels = vec![
                Label::new("pool", id.as_str()),
                Label::new("backend", b.addr.clone()),
            ];
            metrics
                .gauge(names::BACKEND_HEALTHY, labels)
                .set(if b.in_rotation() { 1.0 } else { 0.0 });
        }
        let wait = if cfg.path.is_some() {
            cfg.interval
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Folds one check result into the backend's streak and verdict.
pub fn observe(id: PoolId, b: &Backend, ok: bool, fall: u32, rise: u32) {
    let streak = b.check_streak.load(Ordering::Relaxed);
    let streak = if ok {
        streak.max(0).saturating_add(1)
    } else {
        streak.min(0).saturating_sub(1)
    };
    b.check_streak.store(streak, Ordering::Relaxed);
    if ok && !b.is_healthy() && streak >= rise as i32 {
        b.set_healthy(true);
        info!(pool = %id, backend = %b.addr, passes = streak, "backend healthy again; back in rotation");
    } else if !ok && b.is_healthy() && -streak >= fall as i32 {
        b.set_healthy(false);
        warn!(pool = %id, backend = %b.addr, failures = -streak, "backend failed its health checks; out of rotation");
    }
}

async fn check(b: &Backend, path: &str, timeout: Duration, settings: &Settings) -> bool {
    let attempt = async {
        // A TLS pool is checked over TLS, with the same certificate checks as requests.
        let stream = open(&b.addr, b.socket_addr, timeout, b.conns.tls())
            .await
            .map_err(|e| e.to_string())?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let host = HeaderValue::from_str(&b.addr).map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header(header::HOST, host)
            .header(header::CONNECTION, "close")
            .header(settings.hash.header.clone(), settings.hash.value.clone())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        headers::check_hash(resp.headers(), &settings.hash.header, &settings.hash.value)
            .map_err(|r| format!("constitutional hash {}", r.as_str()))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(why)) => {
            debug!(backend = %b.addr, why, "health check failed");
            false
        }
        Err(_) => {
            debug!(backend = %b.addr, "health check timed out");
            false
        }
    }
}
