//! A webhook receiver for the rollout hook tests: a real HTTP server on 127.0.0.1:0 that
//! records every call and answers a fixed status after a delay. Optionally each call first
//! sends a request through the proxy with the tester override header (a smoke test) and
//! records which pool answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What one hook call carried.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// The smoke request's answer (the pool's name), when the receiver probes.
    pub probe: Option<String>,
}

/// A smoke test's target: the proxy's address and the override token.
pub type Probe = Arc<Mutex<Option<(SocketAddr, String)>>>;

pub struct Receiver {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    pub probe: Probe,
}

impl Receiver {
    pub async fn start(status: u16, delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let probe: Probe = Arc::new(Mutex::new(None));
        let (seen, target) = (calls.clone(), probe.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, target) = (seen.clone(), target.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, target) = (seen.clone(), target.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap_or("").to_string());
                            let bytes = req.into_body().collect().await.map(|b| b.to_bytes());
                            let body = bytes
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or(Value::Null);
                            let target = target.lock().unwrap().clone();
                            let probe = match target {
                                Some((proxy, token)) => Some(smoke(proxy, &token).await),
                                None => None,
                            };
                            seen.lock().unwrap().push(Call {
                                path,
                                authorization,
                                body,
                                probe,
                            });
                            tokio::time::sleep(delay).await;
                            let resp = hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, calls, probe }
    }

    pub fn calls(&self, path: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.path == path).cloned().collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// One GET through the proxy forcing the green pool: the body (the upstream's name).
async fn smoke(proxy: SocketAddr, token: &str) -> String {
    let c = super::client();
    let mut req = super::get(&format!("http://{proxy}/"));
    req.headers_mut()
        .insert("x-switchyard-pool", "green".parse().unwrap());
    req.headers_mut()
        .insert("x-switchyard-token", token.parse().unwrap());
    match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
        Ok(Ok(resp)) => {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            body.map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
        _ => "no answer".into(),
    }
}

/// One `[[rollout.hooks]]` table.
pub fn hook_toml(name: &str, on: &str, url: &str, extra: &str) -> String {
    format!("\n[[rollout.hooks]]\nname = \"{name}\"\non = {on}\nurl = \"{url}\"\n{extra}\n")
}
