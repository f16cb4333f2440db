//! DATA PLANE: what a request leaves behind. [`Trace`] collects facts as the request goes
//! (pool, backend, timings, verdicts, the pool permit); [`Pending`] holds the access-log
//! line from the start, so that a request abandoned before its response still leaves one
//! (status 499); [`TracedBody`] carries the pool permit and the line with the response body
//! and lets go of both when the body ends: the pool's in-flight count drops and the line,
//! now with `bytes_out` and `total_ms`, goes to the log writer.
//!
//! The body reaches the shared state through its connection (an `Arc` the request already
//! owns, touched by no other core), so a request takes no shared reference count for this.
//! With the access log off and no pool cap, all of it is a few `None`s: no allocation.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use http_body::{Body, SizeHint};
use pin_project_lite::pin_project;

use super::access_log::{AccessLog, Entry, HashVerdict, RateVerdict};
use super::concurrency::{HeldPermit, PoolPermit};
use crate::config::PoolId;
use crate::proxy::backend::Backend;
use crate::proxy::body::{FramePoll, ProxyBody};
use crate::proxy::service::Conn;

/// Facts about one request, filled in by the stages it passes.
#[derive(Debug, Default)]
pub struct Trace<'a> {
    /// Set when an access-log line is being kept (then `backend` and `bytes_in` are too).
    pub logging: bool,
    pub pool: Option<PoolId>,
    pub backend: Option<Arc<Backend>>,
    pub upstream: Option<Duration>,
    pub hash_request: HashVerdict,
    pub hash_response: HashVerdict,
    pub rate_limit: RateVerdict,
    pub permit: Option<PoolPermit<'a>>,
    /// Request body bytes read so far (counted by the forwarded body).
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub error: Option<&'static str>,
}

/// What a request looked like on arrival.
pub struct Arrival<'a> {
    pub start: Instant,
    pub client: IpAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub proto: &'static str,
    pub generation: u64,
    pub include_query: bool,
}

/// The line of a request in progress; sent with status 499 if dropped unfinished (the
/// client left before the response head).
pub struct Pending<'a>(Option<(Box<Entry>, &'a AccessLog)>);

impl<'a> Pending<'a> {
    pub fn none() -> Pending<'a> {
        Pending(None)
    }

    pub fn start(log: &'a AccessLog, a: Arrival<'_>) -> Pending<'a> {
        let entry = Entry {
            time: SystemTime::now(),
            start: a.start,
            client: a.client,
            method: a.method.clone(),
            uri: a.uri.clone(),
            include_query: a.include_query,
            host: a.headers.get(header::HOST).cloned().or_else(|| {
                let authority = a.uri.authority()?.as_str();
                HeaderValue::from_str(authority).ok()
            }),
            user_agent: a.headers.get(header::USER_AGENT).cloned(),
            status: 499,
            pool: None,
            backend: None,
            generation: a.generation,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            total: Duration::ZERO,
            hash_request: HashVerdict::Unchecked,
            hash_response: HashVerdict::Unchecked,
            request_id: None,
            rate_limit: RateVerdict::Off,
            proto: a.proto,
            error: None,
            complete: false,
        };
        Pending(Some((Box::new(entry), log)))
    }

    /// The line with what the trace learned and the status sent; it goes with the body.
    pub fn finish(
        mut self,
        trace: &Trace<'_>,
        request_id: Option<&HeaderValue>,
        status: u16,
    ) -> Option<Box<Entry>> {
        let (mut e, _) = self.0.take()?;
        e.status = status;
        e.pool = trace.pool;
        e.backend.clone_from(&trace.backend);
        e.upstream = trace.upstream;
        e.hash_request = trace.hash_request;
        e.hash_response = trace.hash_response;
        e.rate_limit = trace.rate_limit;
        e.error = trace.error;
        e.request_id = request_id.cloned();
        Some(e)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some((mut e, log)) = self.0.take() {
            e.total = e.start.elapsed();
            log.send(e);
        }
    }
}

pin_project! {
    /// The response body, with what must last until it ends.
    pub struct TracedBody {
        #[pin]
        inner: ProxyBody,
        // Until the body ends: the connection counts finished responses (idle check),
        // and there may be a permit to give back or a line to send.
        conn: Option<Arc<Conn>>,
        permit: Option<HeldPermit>,
        record: Option<Box<Entry>>,
        bytes_in: Option<Arc<AtomicU64>>,
    }

    impl PinnedDrop for TracedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let complete = this.inner.is_end_stream();
            finish(this.conn, this.permit, this.record, this.bytes_in, complete);
        }
    }
}

impl TracedBody {
    pub fn new(
        inner: ProxyBody,
        conn: Arc<Conn>,
        permit: Option<HeldPermit>,
        record: Option<Box<Entry>>,
        bytes_in: Option<Arc<AtomicU64>>,
    ) -> TracedBody {
        TracedBody {
            inner,
            conn: Some(conn),
            permit,
            record,
            bytes_in,
        }
    }
}

fn finish(
    conn: &mut Option<Arc<Conn>>,
    permit: &mut Option<HeldPermit>,
    record: &mut Option<Box<Entry>>,
    bytes_in: &Option<Arc<AtomicU64>>,
    complete: bool,
) {
    let Some(conn) = conn.take() else { return };
    conn.framing.response_done();
    if permit.is_none() && record.is_none() {
        return;
    }
    let edge = &conn.shared.edge;
    if let Some(p) = permit.take() {
        edge.inflight.release(p);
    }
    if let (Some(mut e), Some(log)) = (record.take(), &edge.access_log) {
        e.total = e.start.elapsed();
        e.complete = complete;
        e.bytes_in = bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
        log.send(e);
    }
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(e), Some(data)) = (this.record.as_mut(), frame.data_ref()) {
                    e.bytes_out += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended (a Content-Length body
                // after its last byte): that is the end too.
                if this.inner.is_end_stream() {
                    finish(this.conn, this.permit, this.record, this.bytes_in, true);
                }
            }
            Poll::Ready(end) => {
                let complete = end.is_none();
                finish(this.conn, this.permit, this.record, this.bytes_in, complete);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
