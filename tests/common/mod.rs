//! Shared test rig: in-process blue/green upstreams whose behaviour a test controls, a
//! proxy on 127.0.0.1:0, admin and HTTP clients, and waiting with deadlines.
#![allow(dead_code, clippy::unwrap_used)]

pub mod daemon;
pub mod etcd;
pub mod hooks;
pub mod load;
pub mod prometheus;
pub mod rollout;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;

use switchyard::config::Config;
use switchyard::proxy::route::RouteHandle;
use switchyard::Switchyard;

pub const HASH: &str = "cdd01ef066bc6cf2";
pub const HASH_HEADER: &str = "x-constitutional-hash";

/// A masked WebSocket text frame "hello" (RFC 6455 §5.2); the test upstream's `/ws` echoes
/// it back byte for byte.
pub const WS_HELLO_FRAME: [u8; 11] = [
    0x81,
    0x85,
    1,
    2,
    3,
    4,
    b'h' ^ 1,
    b'e' ^ 2,
    b'l' ^ 3,
    b'l' ^ 4,
    b'o' ^ 1,
];

/// How a fake upstream behaves; tests flip these while traffic flows.
#[derive(Default)]
pub struct Behavior {
    pub omit_hash: AtomicBool,
    pub wrong_hash: AtomicBool,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    /// Every N-th counted request (N > 0) answers 500.
    pub fail_every: AtomicU64,
    /// The next N counted responses leave out the hash header.
    pub omit_hash_next: AtomicU64,
    /// Every counted request as received: when, and whether its answer broke the hash
    /// contract (no hash or a wrong one).
    pub log: std::sync::Mutex<Vec<(Instant, bool)>>,
}

pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub behavior: Arc<Behavior>,
    /// Headers of the last request, as received.
    pub last_headers: Arc<std::sync::Mutex<Option<http::HeaderMap>>>,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type UpBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body of `remaining` bytes produced in 64 KiB chunks, never held whole.
pub struct Repeat {
    chunk: Bytes,
    remaining: u64,
}

impl Repeat {
    pub fn new(n: u64) -> Self {
        Repeat {
            chunk: Bytes::from(vec![b'u'; 64 * 1024]),
            remaining: n,
        }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn upstream_handle(
    name: &'static str,
    behavior: Arc<Behavior>,
    hits: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Option<http::HeaderMap>>>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    if req.uri().path() == "/health" {
        // Active health checks: answered like any request, but not counted as traffic.
        let mut resp = Response::new(full("ok"));
        if !behavior.omit_hash.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(HASH_HEADER, HASH.parse().unwrap());
        }
        return Ok(resp);
    }
    let hit = hits.fetch_add(1, Ordering::SeqCst) as u64 + 1;
    let fail_every = behavior.fail_every.load(Ordering::Relaxed);
    let omit_once = behavior
        .omit_hash_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if let Ok(mut l) = last.lock() {
        *l = Some(req.headers().clone());
    }
    let bad = omit_once
        || behavior.omit_hash.load(Ordering::Relaxed)
        || behavior.wrong_hash.load(Ordering::Relaxed);
    if let Ok(mut log) = behavior.log.lock() {
        log.push((Instant::now(), bad));
    }
    let delay =
        query_u64(&req, "sleep_ms").unwrap_or(0) + behavior.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut status =
        StatusCode::from_u16(behavior.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
    let path = req.uri().path().to_string();
    let body = match path.as_str() {
        "/upload" => {
            let mut n: u64 = 0;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            full(n.to_string())
        }
        "/download" => {
            let n = query_u64(&req, "bytes").unwrap_or(0);
            Repeat {
                chunk: Bytes::from(vec![b'x'; 64 * 1024]),
                remaining: n,
            }
            .boxed()
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            resp.headers_mut()
                .insert(HASH_HEADER, HASH.parse().unwrap());
            return Ok(resp);
        }
        _ => {
            if status == StatusCode::OK
                && (path == "/fail" || (fail_every > 0 && hit % fail_every == 0))
            {
                status = StatusCode::INTERNAL_SERVER_ERROR;
            }
            full(name)
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    if behavior.wrong_hash.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(HASH_HEADER, "0000000000000000".parse().unwrap());
    } else if !behavior.omit_hash.load(Ordering::Relaxed) && !omit_once {
        resp.headers_mut()
            .insert(HASH_HEADER, HASH.parse().unwrap());
    }
    Ok(resp)
}

/// Starts a fake upstream on 127.0.0.1:0 (HTTP/1.1 and h2c).
pub async fn upstream(name: &'static str) -> Upstream {
    upstream_at(name, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts a fake upstream on `addr` (e.g. to bring a stopped one back on its port).
/// Dropping it closes the listener and every connection it holds.
pub async fn upstream_at(name: &'static str, addr: SocketAddr) -> Upstream {
    // A backend's accept queue, not the 128 that `TcpListener::bind` asks for: bursts of
    // a few hundred new upstream connections (tests/concurrency.rs) must not lose SYNs
    // (a lost SYN is retried after 1 s, the proxy's connect timeout).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let behavior = Arc::new(Behavior::default());
    let hits = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(None));
    let stop = CancellationToken::new();
    let (b, h, l, s) = (behavior.clone(), hits.clone(), last.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = s.cancelled() => return,
            };
            let (b, h, l, s) = (b.clone(), h.clone(), l.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    upstream_handle(name, b.clone(), h.clone(), l.clone(), req)
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = s.cancelled() => {}
                }
            });
        }
    });
    Upstream {
        name,
        addr,
        hits,
        behavior,
        last_headers: last,
        stop,
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    /// The first `[[proxy.tls]]` listener, if the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub routes: Arc<RouteHandle>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The config text for a proxy in front of `blue` and `green`; `extra` is appended
/// (and may add keys to sections by repeating their headers only where TOML allows).
pub fn config_text(
    dir: &std::path::Path,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    sections: &str,
) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        r#"
[pools.blue]
backends = [{}]
[pools.green]
backends = [{}]
[admin]
socket = "{}/admin.sock"
[metrics]
listen = "127.0.0.1:0"
[state]
path = "{}/state.json"
"#,
        list(blue),
        list(green),
        dir.display(),
        dir.display()
    );
    text.push_str(sections);
    if !sections.contains("[proxy]") {
        text.push_str("\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n");
    }
    text
}

/// Starts a proxy in-process. `sections` is extra TOML: `[proxy]`, `[split]`, ...
pub async fn proxy(blue: &Upstream, green: &Upstream, sections: &str) -> TestProxy {
    proxy_multi(&[blue.addr], &[green.addr], sections).await
}

pub async fn proxy_multi(blue: &[SocketAddr], green: &[SocketAddr], sections: &str) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), blue, green, sections);
    let cfg =
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    let server = Switchyard::bind(cfg).await.unwrap();
    let addr = server.http_addrs()[0];
    let tls_addr = server.tls_addrs().first().copied();
    let metrics_addr = server.metrics_addr().unwrap();
    let routes = server.routes();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        server.run(token).await.unwrap();
    });
    TestProxy {
        addr,
        tls_addr,
        metrics_addr,
        socket: dir.path().join("admin.sock"),
        dir,
        routes,
        shutdown,
        task,
    }
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// One admin command over the real socket; the parsed JSON reply.
    pub async fn admin(&self, line: &str) -> serde_json::Value {
        let reply = switchyard::control::admin::request(&self.socket, line)
            .await
            .unwrap();
        serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("admin reply not JSON ({e}): {reply}"))
    }

    pub async fn metrics(&self) -> String {
        let c = client();
        let resp = c
            .get(
                format!("http://{}/metrics", self.metrics_addr)
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }
    /// One unlabelled series from /metrics (0 when absent).
    pub async fn gauge(&self, name: &str) -> f64 {
        metric(&self.metrics().await, name)
    }
}

/// A keep-alive client pool (HTTP/1.1).
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A GET carrying the constitutional hash.
pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub async fn send(c: &Client, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("request hung")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// Value of `name{labels}` in a Prometheus exposition, 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls `cond` until it holds or `deadline` passes.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The config sections of a proxy on 127.0.0.1:0 with these `[proxy.timeouts]` keys.
pub fn with_timeouts(keys: &str) -> String {
    format!("[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\n{keys}\n")
}

pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// Waits (5 s) until `switchyard_rejected_requests_total{reason}` reads `n`.
pub async fn wait_rejected(p: &TestProxy, reason: &str, n: f64) {
    let series = format!("switchyard_rejected_requests_total{{reason=\"{reason}\"}}");
    wait_for(
        &format!("{n} {reason} counted"),
        Duration::from_secs(5),
        || {
            let series = series.clone();
            async move { metric(&p.metrics().await, &series) == n }
        },
    )
    .await;
}

/// Cancels its token when dropped (stops a proxy at the end of a test).
pub struct DropCancel(pub CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

// ---- control plane: admin socket, ctl, state, reload ----

/// Like [`proxy_multi`], but `admin_keys` go into the `[admin]` table, the config is also
/// written to `dir/switchyard.toml` and bound with that path (so `reload` re-reads it), and
/// `strict_admin_lists` drops the implicit admin rights of root and the daemon's own uid.
/// Returns the control plane too.
pub async fn proxy_with(
    blue: &[SocketAddr],
    green: &[SocketAddr],
    sections: &str,
    admin_keys: &str,
    strict_admin_lists: bool,
) -> (TestProxy, Arc<switchyard::control::Control>) {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), blue, green, sections).replacen(
        "[admin]\n",
        &format!("[admin]\n{admin_keys}\n"),
        1,
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    let options = switchyard::BindOptions {
        config_path: Some(path),
        strict_admin_lists,
        ..Default::default()
    };
    let server = Switchyard::bind_with(cfg, options).await.unwrap();
    let (addr, metrics_addr) = (server.http_addrs()[0], server.metrics_addr().unwrap());
    let tls_addr = server.tls_addrs().first().copied();
    let (routes, control) = (server.routes(), server.control());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        server.run(token).await.unwrap();
    });
    let socket = dir.path().join("admin.sock");
    (
        TestProxy {
            addr,
            tls_addr,
            metrics_addr,
            socket,
            dir,
            routes,
            shutdown,
            task,
        },
        control,
    )
}

/// The uid and gid this test process runs as (the owner of a file it creates).
pub fn own_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    let m = f.as_file().metadata().unwrap();
    (m.uid(), m.gid())
}

/// The switchyard binary, or a copy of it in a world-readable temporary directory when
/// another uid could not reach it where it is (a checkout under a 0700 directory). Keep
/// the directory as long as the path is used.
pub fn executable_by_others() -> (PathBuf, Option<tempfile::TempDir>) {
    use std::os::unix::fs::PermissionsExt;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_switchyard"));
    let open = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    };
    if exe.ancestors().all(open) {
        return (exe, None);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("switchyard");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A child forked by another test while the copy was open for writing holds that
    // descriptor until it runs its own program, and until then the copy cannot run
    // ("Text file busy"). Once one run of the copy starts, no such child is left, and no
    // new one can appear: the copy is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::process::Command::new(&copy)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the copy of the binary does not run: {e}"),
            Ok(_) => break,
        }
    }
    (copy, Some(dir))
}

/// The real `switchyard run` binary as a child process, its stderr log collected.
/// Dropping it kills (SIGKILL) and reaps the child it started.
pub struct Daemon {
    pub child: std::process::Child,
    pub log: Arc<std::sync::Mutex<String>>,
    /// The first plain listener, read from the `proxy listening addr=...` log line.
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `bin run --config config` and waits (5 s deadline) until it listens.
    pub async fn start(bin: &str, config: &std::path::Path) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            // These helpers read the text form (`addr=`); JSON lines are tested in tests/notify.rs.
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut addr = None;
        let started = Instant::now();
        while addr.is_none() {
            addr = log.lock().unwrap().lines().find_map(|l| {
                let rest = l.split("proxy listening addr=").nth(1)?;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            });
            if started.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                panic!("daemon did not start listening: {}", log.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon {
            child,
            log,
            addr: addr.unwrap(),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`HUP`, `TERM`) to this child.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One admin command to a socket path; the parsed reply (retries until the socket answers,
/// 5 s deadline, for a daemon that is still starting).
pub async fn admin_at(socket: &std::path::Path, line: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        match switchyard::control::admin::request(socket, line).await {
            Ok(reply) if !reply.is_empty() => return serde_json::from_str(&reply).unwrap(),
            _ if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!(
                "admin socket {} did not answer: {other:?}",
                socket.display()
            ),
        }
    }
}
