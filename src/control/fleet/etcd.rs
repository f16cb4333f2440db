//! CONTROL PLANE: a small etcd v3 client over etcd's JSON gateway (`POST /v3/...`, keys and
//! values base64, 64-bit numbers as strings), on hyper's HTTP/1.1 client connection and
//! rustls for `https://` endpoints. The gateway rather than gRPC: the default build must
//! not need `protoc`.
//!
//! One idle connection is kept per client and reused; a call that cannot reach an
//! endpoint tries the next one. etcd's own authentication (`username`/`password_file`)
//! fetches a token with `/v3/auth/authenticate` and refreshes it when etcd refuses it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{EtcdEndpoint, FleetConfig};

/// The longest answer read from etcd (a range of the fleet's keys).
const MAX_BODY: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A unary call (range, txn, put, lease) gives up after this; the store is then unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connect, TLS, timeout, connection lost).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd refused {path}: {message}")]
    Refused { path: String, message: String },
}

pub struct Etcd {
    endpoints: Vec<EtcdEndpoint>,
    tls: Option<TlsConnector>,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    /// The endpoint that answered last; calls start there.
    preferred: AtomicUsize,
    idle: Mutex<Option<(usize, SendRequest<Full<Bytes>>)>>,
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// An int64 of the gateway's JSON (a string; absent means 0).
pub fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// One key-value of a range or watch answer.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

impl Kv {
    pub fn from_json(v: &Value) -> Option<Kv> {
        let key = String::from_utf8(unb64(v.get("key")?.as_str()?)?).ok()?;
        let value = match v.get("value").and_then(Value::as_str) {
            Some(s) => unb64(s)?,
            None => Vec::new(),
        };
        Some(Kv {
            key,
            value,
            mod_revision: int(&v["mod_revision"]),
            lease: int(&v["lease"]),
        })
    }
}

impl Etcd {
    /// Reads the TLS files and the password file now, so a bad path fails at start.
    pub fn new(cfg: &FleetConfig) -> Result<Etcd, String> {
        let tls = if cfg.etcd.iter().any(|e| e.tls) {
            Some(tls_connector(cfg)?)
        } else {
            None
        };
        let credentials = match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .map_err(|e| format!("fleet.password_file {}: {e}", file.display()))?;
                Some((
                    user.clone(),
                    password.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
            _ => None,
        };
        Ok(Etcd {
            endpoints: cfg.etcd.clone(),
            tls,
            credentials,
            token: Mutex::new(None),
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(None),
        })
    }

    /// One unary gateway call (`path` such as `/v3/kv/range`); the JSON answer.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_inner(path, body)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Unreachable(format!(
                "{path}: no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    async fn call_inner(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut refreshed = false;
        loop {
            let (status, bytes) = self.exchange(path, body).await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| EtcdError::Refused {
                path: path.into(),
                message: format!("answer is not JSON ({e})"),
            })?;
            if status.is_success() {
                return Ok(v);
            }
            let message = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("no message")
                .to_string();
            // A token expires (or etcd restarted): fetch a new one, once.
            if self.credentials.is_some() && !refreshed && message.contains("token") {
                refreshed = true;
                self.lock_token().take();
                continue;
            }
            return Err(EtcdError::Refused {
                path: path.into(),
                message: format!("HTTP {status}: {message}"),
            });
        }
    }

    /// Opens a streamed call (`/v3/watch`): the response body, read by the caller.
    pub async fn stream(&self, path: &str, body: &Value) -> Result<Incoming, EtcdError> {
        let (mut sender, _) = tokio::time::timeout(CALL_TIMEOUT, self.connect_any())
            .await
            .map_err(|_| EtcdError::Unreachable("connect: timed out".into()))??;
        let req = self.request(path, body).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?;
        if !resp.status().is_success() {
            return Err(EtcdError::Refused {
                path: path.into(),
                message: format!("HTTP {}", resp.status()),
            });
        }
        Ok(resp.into_body())
    }

    fn lock_token(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.token.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn request(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<http::Request<Full<Bytes>>, EtcdError> {
        let token = self.token().await?;
        let mut b = http::Request::post(path)
            .header(http::header::HOST, "etcd")
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            b = b.header(http::header::AUTHORIZATION, t);
        }
        b.body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Refused {
                path: path.into(),
                message: e.to_string(),
            })
    }

    async fn token(&self) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(None);
        };
        if let Some(t) = self.lock_token().clone() {
            return Ok(Some(t));
        }
        let body = json!({ "name": name, "password": password });
        let (status, bytes) = self
            .exchange_plain("/v3/auth/authenticate", &body, None)
            .await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let token = v["token"].as_str().filter(|_| status.is_success());
        match token {
            Some(t) => {
                *self.lock_token() = Some(t.to_string());
                Ok(Some(t.to_string()))
            }
            None => Err(EtcdError::Refused {
                path: "/v3/auth/authenticate".into(),
                message: format!(
                    "HTTP {status}: {}",
                    v["message"].as_str().unwrap_or("no token")
                ),
            }),
        }
    }

    async fn exchange(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(http::StatusCode, Bytes), EtcdError> {
        let token = self.token().await?;
        self.exchange_plain(path, body, token).await
    }

    /// One request on the idle connection (or a new one); the status and the whole body.
    async fn exchange_plain(
        &self,
        path: &str,
        body: &Value,
        token: Option<String>,
    ) -> Result<(http::StatusCode, Bytes), EtcdError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|(_, s)| !s.is_closed());
        let (index, mut sender) = match idle {
            Some((i, s)) => (i, s),
            None => {
                let (s, i) = self.connect_any().await?;
                (i, s)
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
        let mut b = http::Request::post(path)
            .header(http::header::HOST, "etcd")
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            b = b.header(http::header::AUTHORIZATION, t);
        }
        let req = b
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Refused {
                path: path.into(),
                message: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| EtcdError::Unreachable(format!("{path}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    return Err(EtcdError::Refused {
                        path: path.into(),
                        message: format!("answer over {MAX_BODY} bytes"),
                    });
                }
                buf.extend_from_slice(&data);
            }
        }
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some((index, sender));
        Ok((status, buf.freeze()))
    }

    /// A new connection to the preferred endpoint, else to the others in turn.
    async fn connect_any(&self) -> Result<(SendRequest<Full<Bytes>>, usize), EtcdError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            match self.connect(&self.endpoints[i]).await {
                Ok(s) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((s, i));
                }
                Err(e) => errors.push(format!("{}: {e}", self.endpoints[i])),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    async fn connect(&self, ep: &EtcdEndpoint) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&ep.authority))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, ep.tls) {
            (Some(tls), true) => {
                let name = ServerName::try_from(ep.host.clone()).map_err(|e| e.to_string())?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS: {e}"))?;
                handshake(stream).await
            }
            _ => handshake(tcp).await,
        }
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn tls_connector(cfg: &FleetConfig) -> Result<TlsConnector, String> {
    let builder = crate::tls_client::trusting(cfg.ca.as_deref(), "fleet.ca")?;
    let client = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("fleet.cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("fleet.key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("fleet.cert/fleet.key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(crate::tls_client::http1(client))
}
