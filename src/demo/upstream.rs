//! DEMO: an in-process upstream service that answers with the constitutional hash, and
//! can be told to misbehave the way a bad build does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::PoolId;

/// How a bad build misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Answers without the constitutional hash header.
    Hash,
    /// Answers 60 ms late.
    Latency,
    /// Answers 10% of requests with 500.
    Errors,
}

impl Fault {
    /// The rollback gate this fault is expected to trip.
    pub fn expected_gates(self) -> &'static [&'static str] {
        match self {
            Fault::Hash => &["hash_violation"],
            Fault::Latency => &["p50_relative", "p99_absolute", "p99_relative"],
            Fault::Errors => &[
                "error_rate",
                "error_rate_relative",
                "error_rate_tripwire",
                "consecutive_errors",
            ],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Hash => "hash",
            Fault::Latency => "latency",
            Fault::Errors => "errors",
        }
    }
}

const HEALTHY: u8 = 0;

/// A running upstream; dropping it stops it.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    fault: Arc<AtomicU8>,
    stop: CancellationToken,
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DemoUpstream {
    pub async fn start(pool: PoolId, hash: &'static str) -> std::io::Result<DemoUpstream> {
        Self::start_at("127.0.0.1:0".parse().expect("a valid address"), pool, hash).await
    }

    /// [`DemoUpstream::start`] on `addr` (`switchyard demo --backends`).
    pub async fn start_at(
        addr: SocketAddr,
        pool: PoolId,
        hash: &'static str,
    ) -> std::io::Result<DemoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let fault = Arc::new(AtomicU8::new(HEALTHY));
        let stop = CancellationToken::new();
        let (f, s) = (fault.clone(), stop.clone());
        tokio::spawn(async move {
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = s.cancelled() => return,
                };
                let (f, s, counter) = (f.clone(), s.clone(), counter.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| answer(pool, hash, f.clone(), counter.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = s.cancelled() => {}
                    }
                });
            }
        });
        Ok(DemoUpstream { addr, fault, stop })
    }

    /// Starts misbehaving (`Some`) or recovers (`None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        let v = match fault {
            None => HEALTHY,
            Some(Fault::Hash) => 1,
            Some(Fault::Latency) => 2,
            Some(Fault::Errors) => 3,
        };
        self.fault.store(v, Ordering::Relaxed);
    }
}

async fn answer(
    pool: PoolId,
    hash: &'static str,
    fault: Arc<AtomicU8>,
    counter: Arc<std::sync::atomic::AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut status = StatusCode::OK;
    let mut with_hash = true;
    // Health checks always pass: the build is up, its answers are what goes wrong.
    if req.uri().path() != "/health" {
        match fault.load(Ordering::Relaxed) {
            1 => with_hash = false,
            2 => tokio::time::sleep(Duration::from_millis(60)).await,
            3 if counter.fetch_add(1, Ordering::Relaxed) % 10 == 0 => {
                status = StatusCode::INTERNAL_SERVER_ERROR;
            }
            _ => {}
        }
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(pool.as_str().as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static(pool.as_str()));
    if with_hash {
        resp.headers_mut()
            .insert("x-constitutional-hash", HeaderValue::from_static(hash));
    }
    Ok(resp)
}
