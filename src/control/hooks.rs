//! CONTROL PLANE: rollout hooks — HTTP calls on rollout events (`[[rollout.hooks]]`).
//!
//! Notifying events (`promoted`, `rolled_back`, `paused`, `aborted`) go through a bounded
//! queue ([`QUEUE`] deliveries): the controller only `try_send`s, so a hook that is down or
//! slow never blocks a tick or a rollback. Each delivery runs as its own task: up to
//! `1 + retries` attempts, each bounded by the hook's `timeout`, with a backoff doubling from
//! [`BACKOFF`] between them. A delivery that fails (or finds the queue full) is logged,
//! counted in `switchyard_hook_failures_total{hook}` and shown in `rollout status`.
//!
//! Gating events (`pre_rollout`, `step`, `pre_promote`) are called by [`Notifier::gate`] as a
//! task the controller does not wait on: the rollout machine holds in a pending state until
//! the outcome is handed in (see `rollout::waiting`), and operator verbs work meanwhile.
//!
//! The hooks of a rollout are the config's when it started: a reload applies to the next one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use metrics::Label;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{HookConfig, HookEvent, HookFormat, HookUrl};
use crate::control::rollout::GatingHooks;
use crate::metrics::{names, Metrics};

/// Notifications waiting or in flight, at most.
pub const QUEUE: usize = 64;
/// The first wait between attempts; it doubles, up to `BACKOFF_MAX` (5 s).
pub const BACKOFF: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One hook's record, shown in `rollout status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HookStats {
    pub sent: u64,
    pub failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Job {
    hook: Arc<HookConfig>,
    body: Bytes,
    event: HookEvent,
}

/// The notification queue and each hook's record.
pub struct Notifier {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    stats: Arc<Mutex<BTreeMap<String, HookStats>>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(metrics: Arc<Metrics>) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        Notifier {
            tx,
            rx: Mutex::new(Some(rx)),
            stats: Arc::new(Mutex::new(BTreeMap::new())),
            metrics,
        }
    }

    /// Queues `event` for every hook of `hooks` that listens to it; never waits.
    pub fn notify(&self, hooks: &[Arc<HookConfig>], event: HookEvent, body: &Value) {
        for hook in hooks.iter().filter(|h| h.on.contains(&event)) {
            self.start_worker();
            let job = Job {
                hook: hook.clone(),
                body: render(hook, event, body),
                event,
            };
            if let Err(e) = self.tx.try_send(job) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the hook queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the hook queue is closed",
                };
                failed(
                    &self.stats,
                    &self.metrics,
                    &hook.name,
                    event,
                    why.to_string(),
                );
            }
        }
    }

    /// The deliveries' task, started on the first notification (on the current runtime).
    fn start_worker(&self) {
        let mut slot = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!("no runtime to deliver rollout hooks on");
            return;
        };
        let Some(mut rx) = slot.take() else { return };
        let (stats, metrics) = (self.stats.clone(), self.metrics.clone());
        rt.spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(QUEUE));
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stats, metrics) = (stats.clone(), metrics.clone());
                tokio::spawn(async move {
                    let name = job.hook.name.clone();
                    match call(&job.hook, job.body).await {
                        Ok(status) => {
                            info!(hook = %name, event = job.event.as_str(), %status, "rollout hook delivered");
                            lock(&stats).entry(name).or_default().sent += 1;
                        }
                        Err(e) => failed(&stats, &metrics, &name, job.event, e),
                    }
                    drop(permit);
                });
            }
        });
    }

    /// The gating call of `event` as one task: every hook listening to it, in config order,
    /// each with its retries; `done` gets `Ok` once all answered 2xx, else why the first
    /// failing one failed (naming it). A hook that never answers ends after its attempts.
    pub fn gate(
        &self,
        hooks: &[Arc<HookConfig>],
        event: HookEvent,
        body: &Value,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        let calls: Vec<(Arc<HookConfig>, Bytes)> = hooks
            .iter()
            .filter(|h| h.on.contains(&event))
            .map(|h| (h.clone(), render(h, event, body)))
            .collect();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            done(Err("no runtime to call the gating hooks on".into()));
            return;
        };
        let (stats, metrics) = (self.stats.clone(), self.metrics.clone());
        rt.spawn(async move {
            for (hook, body) in calls {
                match call(&hook, body).await {
                    Ok(status) => {
                        info!(hook = %hook.name, event = event.as_str(), %status, "gating rollout hook passed");
                        lock(&stats).entry(hook.name.clone()).or_default().sent += 1;
                    }
                    Err(e) => {
                        failed(&stats, &metrics, &hook.name, event, e.clone());
                        done(Err(format!("hook {:?} {e}", hook.name)));
                        return;
                    }
                }
            }
            done(Ok(()));
        });
    }

    /// Each hook's record: `{"NAME": {"sent", "failures", "last_error"}}`.
    pub fn view(&self) -> Value {
        serde_json::to_value(&*lock(&self.stats)).unwrap_or(Value::Null)
    }

    /// `switchyard_hook_failures_total{hook}` at 0 for each configured hook.
    pub fn register(&self, hooks: &[Arc<HookConfig>]) {
        for h in hooks {
            self.metrics
                .counter(
                    names::HOOK_FAILURES_TOTAL,
                    vec![Label::new("hook", h.name.clone())],
                )
                .increment(0);
        }
    }
}

/// The points of a rollout that wait for one of `hooks`.
pub fn gating(hooks: &[Arc<HookConfig>]) -> GatingHooks {
    let any = |e: HookEvent| hooks.iter().any(|h| h.on.contains(&e));
    GatingHooks {
        pre_rollout: any(HookEvent::PreRollout),
        step: any(HookEvent::Step),
        pre_promote: any(HookEvent::PrePromote),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn failed(
    stats: &Mutex<BTreeMap<String, HookStats>>,
    metrics: &Metrics,
    name: &str,
    event: HookEvent,
    error: String,
) {
    warn!(hook = %name, event = event.as_str(), %error, "rollout hook failed");
    metrics
        .counter(
            names::HOOK_FAILURES_TOTAL,
            vec![Label::new("hook", name.to_string())],
        )
        .increment(1);
    let mut s = lock(stats);
    let e = s.entry(name.to_string()).or_default();
    e.failures += 1;
    e.last_error = Some(error);
}

/// The body `hook` is sent: the event object with the hook's name, or a Slack message.
pub fn render(hook: &HookConfig, event: HookEvent, body: &Value) -> Bytes {
    let mut v = body.clone();
    v["event"] = json!(event.as_str());
    v["hook"] = json!(hook.name);
    let out = match hook.format {
        HookFormat::Json => v,
        HookFormat::Slack => json!({ "text": slack_text(event, &v) }),
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

fn slack_text(event: HookEvent, v: &Value) -> String {
    let r = &v["rollout"];
    let mut text = format!(
        "switchyard: rollout {} to {} {} (candidate at {}%, generation {})",
        r["id"],
        r["candidate"].as_str().unwrap_or("?"),
        event.as_str().replace('_', " "),
        r["candidate_percent"],
        v["generation"]
    );
    if let Some(reason) = v["reason"].as_str() {
        text.push_str(&format!(": {reason}"));
    }
    text
}

/// Every attempt of one call, with the backoff between them: the last status on success
/// (2xx), else why the last attempt failed.
pub async fn call(hook: &HookConfig, body: Bytes) -> Result<StatusCode, String> {
    let mut wait = BACKOFF;
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKOFF_MAX);
        }
        match tokio::time::timeout(hook.timeout, once(hook, body.clone())).await {
            Ok(Ok(status)) if status.is_success() => return Ok(status),
            Ok(Ok(status)) => last = format!("answered {status}"),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {:?}", hook.timeout),
        }
    }
    Err(format!("{last} (after {} attempts)", hook.retries + 1))
}

/// One POST of `body` to the hook's URL.
async fn once(hook: &HookConfig, body: Bytes) -> Result<StatusCode, String> {
    let url = &hook.url;
    let mut req = Request::post(url.path_and_query.as_str())
        .header(http::header::HOST, url.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "switchyard");
    for (n, v) in &hook.headers {
        req = req.header(n, v);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    fetch(url, hook.tls_ca.as_deref(), req)
        .await
        .map(|(status, _)| status)
}

/// The most of an answer's body that is read.
const BODY_MAX: usize = 1 << 20;

/// One exchange with `url`'s server (one connection, HTTP/1.1, TLS for https verified with
/// `tls_ca` or the system bundle): the status and the body (at most `BODY_MAX`, 1 MiB).
pub async fn fetch(
    url: &HookUrl,
    tls_ca: Option<&std::path::Path>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(&url.authority)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.authority))?;
    let _ = tcp.set_nodelay(true);
    if url.https {
        let tls = connector(tls_ca)?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(stream, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(io: S, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"));
    let out = match resp {
        Ok(resp) => {
            let status = resp.status();
            // Read whole so the server sees a complete exchange.
            match http_body_util::Limited::new(resp.into_body(), BODY_MAX)
                .collect()
                .await
            {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(e) => Err(format!("reading the answer: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}

fn connector(tls_ca: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let client = crate::tls_client::trusting(tls_ca, "tls_ca")?.with_no_client_auth();
    Ok(crate::tls_client::http1(client))
}
