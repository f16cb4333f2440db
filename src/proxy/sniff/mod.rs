//! DATA PLANE: a watch on a client's raw request stream. [`SniffIo`] wraps the stream
//! and feeds what the codec reads to three jobs, each in its own file, that share one
//! [`FramingVerdict`] with the connection's task and its requests:
//!
//! - `framing`: the framing policy: requests that frame their body ambiguously are
//!   refused (the [`Scanner`]).
//! - `idle`: idle tracking: whether the connection sits between requests, for parking
//!   (`conn::h1`), and the end of stream that parks it.
//! - `deadline`: the header deadline that replaces hyper's ([`HeadClock`]).
//!
//! HTTP/1.1 only: the scan stops at an HTTP/2 preface and after a 101.

mod deadline;
mod framing;
mod idle;

pub use deadline::HeadClock;
pub use framing::Scanner;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the scan of one connection's stream found, shared between its [`SniffIo`], its
/// service and its task: the framing verdict, and what tells an idle connection from a
/// busy one. All plain counters and flags, written by the connection's own task.
#[derive(Debug)]
pub struct FramingVerdict {
    /// The first request refused by the scan (`u64::MAX`: none).
    first_bad: AtomicU64,
    /// Reads that returned data: the task compares it between checks to see activity.
    reads: AtomicU64,
    /// Complete request heads read.
    heads: AtomicU64,
    /// The bytes read so far end between two requests (no partial head or body).
    at_boundary: AtomicBool,
    /// The bytes read so far end inside a request head.
    in_head: AtomicBool,
    /// The last write returned `Pending`: the codec still holds bytes for the client.
    write_blocked: AtomicBool,
    /// Responses whose body has ended or been dropped (counted by the response body).
    responses_done: AtomicU64,
    /// Set by the task to park the connection: reads report end of stream, which an idle
    /// codec takes as a quiet close and hands the socket back.
    eof: AtomicBool,
    /// The connection has switched protocols (a 101 went out): what follows is not HTTP/1.1.
    switched: AtomicBool,
}

impl FramingVerdict {
    pub fn new() -> Arc<Self> {
        Arc::new(FramingVerdict {
            first_bad: AtomicU64::new(u64::MAX),
            reads: AtomicU64::new(0),
            heads: AtomicU64::new(0),
            at_boundary: AtomicBool::new(true),
            in_head: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            responses_done: AtomicU64::new(0),
            eof: AtomicBool::new(false),
            switched: AtomicBool::new(false),
        })
    }

    /// A 101 answered the last request: the scan stops for good. Until then a request
    /// that asks for an upgrade is scanned, and timed, like any other.
    pub fn set_switched(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }
}

/// An I/O stream whose reads are fed to a [`Scanner`].
///
/// When the HTTP/1.1 codec hands the stream back (a parked idle connection, an upgrade),
/// it also returns the bytes it read but did not use; [`SniffIo::put_back`] puts them in
/// front of the stream, to be read first. They were scanned when first read, so they are
/// not scanned again.
pub struct SniffIo<I> {
    inner: I,
    scanner: Scanner,
    verdict: Arc<FramingVerdict>,
    unread: Bytes,
}

impl<I> SniffIo<I> {
    pub fn new(inner: I, verdict: Arc<FramingVerdict>) -> Self {
        SniffIo {
            inner,
            scanner: Scanner::default(),
            verdict,
            unread: Bytes::new(),
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The stream underneath, to change.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Puts `bytes` in front of whatever is still unread.
    pub fn put_back(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = bytes;
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.unread.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.unread);
            self.unread = Bytes::from(joined);
        }
    }

    /// Whether bytes put back are still unread.
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SniffIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.verdict.eof() {
            return Poll::Ready(Ok(()));
        }
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            let data = &buf.filled()[before..];
            if !data.is_empty() && !this.verdict.switched.load(Ordering::Relaxed) {
                if let Some(bad) = this.scanner.feed(data) {
                    this.verdict.refuse(bad);
                }
                let v = &this.verdict;
                v.reads.fetch_add(1, Ordering::Relaxed);
                v.heads.store(this.scanner.heads(), Ordering::Relaxed);
                v.at_boundary
                    .store(this.scanner.at_boundary(), Ordering::Relaxed);
                v.in_head.store(this.scanner.in_head(), Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SniffIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.verdict.note_write(&polled);
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.verdict.note_write(&polled);
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_put_back_are_read_first_and_not_scanned_again() {
        let verdict = FramingVerdict::new();
        let mut io = SniffIo::new(&b" world"[..], verdict.clone());
        io.put_back(Bytes::from_static(b"lo"));
        io.put_back(Bytes::from_static(b"hel"));
        let mut small = [0u8; 4];
        assert_eq!(io.read(&mut small).await.unwrap(), 4);
        assert_eq!(&small, b"hell");
        let mut rest = String::new();
        io.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "o world");
        // Only the stream's own read (" world") went through the scanner.
        assert_eq!(verdict.reads(), 1);
    }
}
