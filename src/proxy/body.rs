//! DATA PLANE: body wrappers. Bodies stream frame by frame in both directions; these
//! wrappers add a byte limit (requests) and keep the backend's in-flight count until the
//! response body ends (responses). Neither buffers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::proxy::backend::InflightGuard;
use crate::proxy::headers::front;
use crate::proxy::settings::Settings;
use crate::proxy::upstream::Sender;

/// What a response body's `poll_frame` returns.
pub type FramePoll = Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;

/// The request body grew past `proxy.limits.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Error of a forwarded request body: the client's stream failed, or it was too large.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
    /// No bytes from the client for `proxy.timeouts.body_idle`.
    #[error("no request-body bytes from the client for {after:?}")]
    Stalled { after: Duration },
    /// The body not whole within `proxy.timeouts.request` of the request's start.
    #[error("request not received whole within {within:?}")]
    TooSlow { within: Duration },
}

pin_project! {
    /// A downstream request body with a byte limit.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        seen: u64,
        limit: u64,
        // Shared with the access-log line (bytes_in), when there is one.
        counter: Option<Arc<AtomicU64>>,
        // What trailers may not carry (the hash and request-id headers), and the body's
        // idle limit.
        settings: Arc<Settings>,
        // When the whole request is due (its start + `proxy.timeouts.request`).
        due: Instant,
        // The body-idle deadline (or `due`, if sooner), armed when a read first finds
        // nothing (one timer per body that ever waits, moved on when bytes come; none for
        // a body read whole).
        stall: Option<Pin<Box<Sleep>>>,
        // The last read found nothing: the deadline runs.
        waiting: bool,
    }
}

impl LimitedBody {
    /// `start` is when the request began (its whole-request deadline counts from there).
    pub fn new(inner: Incoming, limit: u64, settings: Arc<Settings>, start: StdInstant) -> Self {
        let due = Instant::from_std(start) + settings.request_timeout;
        LimitedBody {
            inner,
            seen: 0,
            limit,
            counter: None,
            settings,
            due,
            stall: None,
            waiting: false,
        }
    }

    /// As [`LimitedBody::new`], also adding every data byte to `counter`.
    pub fn counted(
        inner: Incoming,
        limit: u64,
        counter: Arc<AtomicU64>,
        settings: Arc<Settings>,
        start: StdInstant,
    ) -> Self {
        LimitedBody {
            counter: Some(counter),
            ..LimitedBody::new(inner, limit, settings, start)
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if polled.is_pending() {
            // A wait begins now unless one already runs; the client has until the sooner
            // of its idle deadline and the whole request's.
            let after = this.settings.body_idle_timeout;
            let deadline = (Instant::now() + after).min(*this.due);
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            if !*this.waiting {
                *this.waiting = true;
                stall.as_mut().reset(deadline);
            }
            if stall.as_mut().poll(cx).is_ready() {
                let err = if stall.deadline() >= *this.due {
                    RequestBodyError::TooSlow {
                        within: this.settings.request_timeout,
                    }
                } else {
                    RequestBodyError::Stalled { after }
                };
                return Poll::Ready(Some(Err(err)));
            }
            return Poll::Pending;
        }
        *this.waiting = false;
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    strip_trailers(trailers, this.settings);
                }
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(c) = this.counter {
                        c.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    if *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(BodyTooLarge { limit: *this.limit }.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// What the proxy sends downstream: an upstream body streamed through, or a small
    /// body of its own.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream {
            #[pin]
            inner: Incoming,
            guard: Option<InflightGuard>,
            // The connection the body arrives on: back to its pool once the body ends.
            conn: Option<Sender>,
            // What trailers may not carry toward the client.
            settings: Arc<Settings>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl ProxyBody {
    pub fn upstream(
        inner: Incoming,
        guard: InflightGuard,
        conn: Option<Sender>,
        settings: Arc<Settings>,
    ) -> Self {
        ProxyBody::Upstream {
            inner,
            guard: Some(guard),
            conn,
            settings,
        }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn empty() -> Self {
        ProxyBody::Full { data: None }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        match self.project() {
            ProxyBodyProj::Upstream {
                mut inner,
                guard,
                conn,
                settings,
            } => {
                let mut polled = inner.as_mut().poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &mut polled {
                    if let Some(trailers) = frame.trailers_mut() {
                        strip_trailers(trailers, settings);
                    }
                }
                match &polled {
                    Poll::Ready(None) => {
                        if let (Some(tx), Some(g)) = (conn.take(), guard.as_ref()) {
                            g.backend().conns.checkin(tx);
                        }
                        guard.take();
                    }
                    Poll::Ready(Some(Err(_))) => {
                        conn.take();
                        guard.take();
                    }
                    // hyper stops polling once a body says it has ended (a Content-Length
                    // body after its last byte), so the end is also taken from there.
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        if let (Some(tx), Some(g)) = (conn.take(), guard.as_ref()) {
                            g.backend().conns.checkin(tx);
                        }
                        guard.take();
                    }
                    _ => {}
                }
                polled
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Trailers cross the proxy without the hash header, the request-id header, their `_`
/// twins or hop-by-hop fields, in both directions.
fn strip_trailers(trailers: &mut http::HeaderMap, s: &Settings) {
    front::strip_trailers(trailers, &s.hash.header, s.edge.request_id.as_ref());
}
