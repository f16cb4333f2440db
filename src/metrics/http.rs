//! METRICS: the HTTP read API on the metrics listener (`metrics.listen`). Read-only: no
//! request here changes anything (mutations go through the admin socket, with its access
//! levels and audit log).
//!
//! - `GET /metrics`: the Prometheus text exposition.
//! - `GET /live`: 200 while the process serves HTTP at all (a liveness probe).
//! - `GET /ready`: 200 when the proxy takes requests; 503 while starting, while draining
//!   (after SIGTERM), or when no pool with a share of traffic has a backend in rotation.
//!   The body is one JSON object: `{"ready":…,"phase":…,"reason":…}`.
//! - `GET /status`: the same JSON line as `ctl status --json` (`{"ok":true,…}`).
//!
//! `HEAD` is answered on each, with the headers `GET` would send and no body; any other
//! method gets 405 with `Allow: GET, HEAD`; any other path 404.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Metrics;
use crate::config::PoolId;
use crate::control::Control;
use crate::notify::{Lifecycle, Phase};
use crate::proxy::route::PoolState;

/// What the endpoints read.
pub struct Api {
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
    pub lifecycle: Arc<Lifecycle>,
}

pub async fn serve(listener: TcpListener, api: Arc<Api>, shutdown: CancellationToken) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let api = api.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(answer(&api, &req)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

fn answer(api: &Api, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        let mut resp = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET or HEAD only\n".into(),
            false,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            api.metrics.observe_certificates(&api.control.tls_status());
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                api.metrics.render(),
            )
        }
        "/live" => (StatusCode::OK, JSON, "{\"live\":true}\n".to_string()),
        "/ready" => {
            let (ready, reason) = readiness(api);
            let phase = match api.lifecycle.phase() {
                Phase::Starting => "starting",
                Phase::Serving => "serving",
                Phase::Draining => "draining",
            };
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = json!({ "ready": ready, "phase": phase, "reason": reason });
            (code, JSON, format!("{body}\n"))
        }
        "/status" => (
            StatusCode::OK,
            JSON,
            crate::control::admin::reply_ok(api.control.status()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /live, /ready or /status\n".to_string(),
        ),
    };
    reply(status, ctype, body, head)
}

/// Ready, or why not.
fn readiness(api: &Api) -> (bool, Option<&'static str>) {
    match api.lifecycle.phase() {
        Phase::Starting => return (false, Some("starting")),
        Phase::Draining => return (false, Some("draining")),
        Phase::Serving => {}
    }
    let t = api.control.routes.load();
    let can_serve = PoolId::ALL.iter().any(|&p| {
        t.states[p.index()] == PoolState::Ready
            && t.takes_requests(p)
            && t.pool(p).in_rotation() > 0
    });
    if can_serve {
        (true, None)
    } else {
        (false, Some("no_backend_in_rotation"))
    }
}

/// A response; for `HEAD` the body is left out but `Content-Length` still says its size.
fn reply(
    status: StatusCode,
    ctype: &'static str,
    body: String,
    head: bool,
) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
