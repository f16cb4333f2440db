//! SIMULATOR: latencies recorded from an in-process upstream on loopback — the same kind of
//! hyper server the integration tests start — timed request by request over one keep-alive
//! connection, so the simulator can replay a real (if small) server's distribution.

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Times `count` GETs (at most 100,000) to a fresh upstream on 127.0.0.1:0; microseconds.
pub fn upstream_latencies(count: usize) -> Result<Vec<u64>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(record(count.min(100_000)))
}

async fn record(count: usize) -> Result<Vec<u64>, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    let server = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
    });
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to the upstream: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let req = Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let start = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request to the upstream failed: {e}"))?;
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?;
        out.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    drop(sender);
    let _ = driver.await;
    server.abort();
    Ok(out)
}
