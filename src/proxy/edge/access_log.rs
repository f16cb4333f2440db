//! DATA PLANE → writer thread: the access log, one JSON line per request.
//!
//! A request hands its finished [`Entry`] to a bounded queue with `try_send` and moves on;
//! when the queue is full the line is dropped and counted
//! (`switchyard_access_log_dropped_total{reason="queue_full"}`), so requests never wait for
//! the disk. One dedicated thread formats and writes the lines (blocking writes stay off the
//! runtime's workers), flushing whenever the queue runs empty. [`AccessLog::reopen`]
//! (SIGUSR1) makes it reopen the file before the next line, for logrotate.
//!
//! Line fields, in order: `time` (request start, RFC 3339 UTC with ms), `client`, `method`,
//! `path` (query only with `include_query`), `host` (the Host header, or the authority of
//! an HTTP/2 request), `user_agent` (both cut to [`MAX_HEADER_FIELD`] bytes, JSON-escaped,
//! invalid UTF-8 replaced; `null` when absent), `status`, `pool`, `backend`, `generation`,
//! `bytes_in`, `bytes_out`, `upstream_ms` (to the response head), `total_ms` (to the end of
//! the response body), `hash_request`, `hash_response`, `request_id`, `rate_limit`,
//! `proto`, `error` (the proxy's error code when it answered itself) and `complete`
//! (false when the client left before the body ended; then status is 499 if no response
//! head was sent yet).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri};
use metrics::Counter;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{AccessLogConfig, AccessLogTarget, PoolId};
use crate::metrics::HashReason;
use crate::proxy::backend::Backend;

/// Longest `host` or `user_agent` written, in bytes; the rest is cut (a client chooses
/// these, and a line should stay one short line).
pub const MAX_HEADER_FIELD: usize = 256;

/// The constitutional-hash verdict on one direction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashVerdict {
    /// Not checked (mode `off`, or no response to check).
    #[default]
    Unchecked,
    Ok,
    Violation(HashReason),
}

impl HashVerdict {
    pub fn of(r: Result<(), HashReason>) -> HashVerdict {
        match r {
            Ok(()) => HashVerdict::Ok,
            Err(reason) => HashVerdict::Violation(reason),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            HashVerdict::Unchecked => "unchecked",
            HashVerdict::Ok => "ok",
            HashVerdict::Violation(r) => r.as_str(),
        }
    }
}

/// What the rate limiter said about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateVerdict {
    /// No limit on this listener (or the request was refused before the check).
    #[default]
    Off,
    Pass,
    Limited,
}

impl RateVerdict {
    fn as_str(self) -> &'static str {
        match self {
            RateVerdict::Off => "off",
            RateVerdict::Pass => "pass",
            RateVerdict::Limited => "limited",
        }
    }
}

/// One request's line, filled in as the request goes.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub start: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub include_query: bool,
    /// The request's Host (or `:authority`) and User-Agent, as sent (a reference count, no copy).
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    pub pool: Option<PoolId>,
    pub backend: Option<Arc<Backend>>,
    pub generation: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub hash_request: HashVerdict,
    pub hash_response: HashVerdict,
    pub request_id: Option<HeaderValue>,
    pub rate_limit: RateVerdict,
    pub proto: &'static str,
    pub error: Option<&'static str>,
    pub complete: bool,
}

impl Entry {
    /// Appends the JSON line (with its newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        out.extend_from_slice(b"{\"time\":\"");
        rfc3339(out, self.time);
        let _ = write!(out, "\",\"client\":\"{}\",\"method\":", self.client);
        json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        match (self.include_query, self.uri.path_and_query()) {
            (true, Some(pq)) => json_str(out, pq.as_str()),
            _ => json_str(out, self.uri.path()),
        }
        out.extend_from_slice(b",\"host\":");
        header_field(out, self.host.as_ref());
        out.extend_from_slice(b",\"user_agent\":");
        header_field(out, self.user_agent.as_ref());
        let _ = write!(out, ",\"status\":{},\"pool\":", self.status);
        match self.pool {
            Some(p) => json_str(out, p.as_str()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"backend\":");
        match &self.backend {
            Some(b) => json_str(out, &b.addr),
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"generation\":{},\"bytes_in\":{},\"bytes_out\":{},\"upstream_ms\":",
            self.generation, self.bytes_in, self.bytes_out
        );
        match self.upstream {
            Some(d) => {
                let _ = write!(out, "{:.3}", ms(d));
            }
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"total_ms\":{:.3},\"hash_request\":\"{}\",\"hash_response\":\"{}\",\"request_id\":",
            ms(self.total),
            self.hash_request.as_str(),
            self.hash_response.as_str()
        );
        match self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            Some(id) => json_str(out, id),
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"rate_limit\":\"{}\",\"proto\":\"{}\",\"error\":",
            self.rate_limit.as_str(),
            self.proto
        );
        match self.error {
            Some(code) => json_str(out, code),
            None => out.extend_from_slice(b"null"),
        }
        let _ = writeln!(out, ",\"complete\":{}}}", self.complete);
    }
}

/// A client-chosen header value: cut to [`MAX_HEADER_FIELD`] bytes, invalid UTF-8 (or a
/// character split by the cut) replaced by U+FFFD, then escaped as a JSON string.
fn header_field(out: &mut Vec<u8>, v: Option<&HeaderValue>) {
    match v {
        Some(v) => {
            let b = v.as_bytes();
            json_str(
                out,
                &String::from_utf8_lossy(&b[..b.len().min(MAX_HEADER_FIELD)]),
            );
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `2024-05-01T12:34:56.789Z`.
fn rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

enum Msg {
    Line(Box<Entry>),
    /// Look at the reopen flag now.
    Wake,
    Flush(oneshot::Sender<()>),
}

/// The sending side, cheap to clone; the writer thread stops when every clone is gone.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the target and starts the writer thread; `None` when the log is off.
    /// `dropped` is `[queue_full, write_error]`.
    pub fn start(cfg: &AccessLogConfig, dropped: [Counter; 2]) -> io::Result<Option<AccessLog>> {
        let Some(target) = cfg.target.clone() else {
            return Ok(None);
        };
        let out = open(&target)?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        let reopen = Arc::new(AtomicBool::new(false));
        let [queue_full, write_error] = dropped;
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("switchyard-access-log".into())
            .spawn(move || write_loop(rx, target, out, &flag, &write_error))?;
        Ok(Some(AccessLog {
            tx,
            reopen,
            dropped: queue_full,
        }))
    }

    /// Queues a line; never waits. A full queue drops the line and counts it.
    pub fn send(&self, entry: Box<Entry>) {
        if self.tx.try_send(Msg::Line(entry)).is_err() {
            self.dropped.increment(1);
        }
    }

    /// Asks the writer to reopen its file (after logrotate renamed it) before the next line.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // When the queue is full the writer is busy and sees the flag at the next line.
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// Waits (up to `timeout`) until every line queued so far is written and flushed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = oneshot::channel();
        let wait = async {
            self.tx.send(Msg::Flush(ack)).await.ok()?;
            done.await.ok()
        };
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Some(())))
    }
}

type Out = BufWriter<Box<dyn Write + Send>>;

fn open(target: &AccessLogTarget) -> io::Result<Out> {
    let w: Box<dyn Write + Send> = match target {
        AccessLogTarget::Stdout => Box::new(io::stdout()),
        AccessLogTarget::File(path) => {
            let f: File = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)?;
            Box::new(f)
        }
    };
    Ok(BufWriter::with_capacity(64 * 1024, w))
}

fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    target: AccessLogTarget,
    mut out: Out,
    reopen: &AtomicBool,
    errors: &Counter,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut failures = 0u64;
    let mut fail = |what: &str, e: io::Error| {
        errors.increment(1);
        failures += 1;
        // The first failure, then every 10000th, so that a full disk cannot flood the log.
        if failures % 10_000 == 1 {
            warn!(error = %e, failures, "access log {what} failed; lines are being dropped");
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if reopen.swap(false, Ordering::AcqRel) {
                let _ = out.flush();
                match open(&target) {
                    Ok(fresh) => {
                        out = fresh;
                        info!("access log reopened");
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot reopen the access log; writing to the old file")
                    }
                }
            }
            match msg {
                Msg::Line(entry) => {
                    buf.clear();
                    entry.write_json(&mut buf);
                    if let Err(e) = out.write_all(&buf) {
                        fail("write", e);
                    }
                }
                Msg::Wake => {}
                Msg::Flush(ack) => {
                    if let Err(e) = out.flush() {
                        fail("flush", e);
                    }
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            fail("flush", e);
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let e = Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
            start: Instant::now(),
            client: "10.1.2.3".parse().unwrap(),
            method: Method::POST,
            uri: "/a/b?secret=1".parse().unwrap(),
            include_query: false,
            host: Some(HeaderValue::from_static("example.com")),
            user_agent: Some(HeaderValue::from_static("curl/8 \"quoted\"\\")),
            status: 200,
            pool: Some(PoolId::Green),
            backend: None,
            generation: 7,
            bytes_in: 3,
            bytes_out: 5,
            upstream: Some(Duration::from_micros(1500)),
            total: Duration::from_micros(2250),
            hash_request: HashVerdict::Ok,
            hash_response: HashVerdict::Violation(HashReason::Missing),
            request_id: Some(HeaderValue::from_static("r\"1")),
            rate_limit: RateVerdict::Pass,
            proto: "http",
            error: None,
            complete: true,
        };
        let mut out = Vec::new();
        e.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2024-05-01T12:34:56.789Z");
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["pool"], "green");
        assert_eq!(v["backend"], serde_json::Value::Null);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["total_ms"], 2.25);
        assert_eq!(v["hash_response"], "missing");
        assert_eq!(v["request_id"], "r\"1");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(v["host"], "example.com");
        assert_eq!(v["user_agent"], "curl/8 \"quoted\"\\");
        assert_eq!(v.as_object().unwrap().len(), 21);
        let with_query = Entry {
            include_query: true,
            pool: None,
            upstream: None,
            ..e
        };
        out.clear();
        with_query.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a/b?secret=1");
        assert_eq!(v["pool"], serde_json::Value::Null);
    }

    #[test]
    fn a_long_or_binary_user_agent_is_cut_and_escaped() {
        let mut long = vec![b'a'; MAX_HEADER_FIELD - 1];
        long.extend_from_slice("é tail".as_bytes());
        let mut out = Vec::new();
        header_field(&mut out, Some(&HeaderValue::from_bytes(&long).unwrap()));
        let v: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, format!("{}\u{fffd}", "a".repeat(MAX_HEADER_FIELD - 1)));
        out.clear();
        header_field(
            &mut out,
            Some(&HeaderValue::from_bytes(b"x\xff\ty").unwrap()),
        );
        let v: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, "x\u{fffd}\ty");
        out.clear();
        header_field(&mut out, None);
        assert_eq!(out, b"null");
    }
}
