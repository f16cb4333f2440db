//! DATA PLANE: an HTTP/1.1 connection, plain or TLS, parked whenever it is idle. A plain
//! connection whose first bytes are an HTTP/2 preface, or a TLS one whose ALPN or first
//! bytes say HTTP/2, goes to [`Acceptor::serve_io`] instead.
//!
//! A check runs every [`PARK_AFTER`] (or a quarter of `header_read` or `idle`, if
//! shorter); it notices shutdown and drains while the codec runs (a parked connection is
//! woken by them), and it closes a connection whose request head stays incomplete for
//! `header_read` (counted as `header_timeout`; see [`HeadClock`]): no timer is armed per
//! request. When nothing was read since the previous check and the connection is idle
//! (between requests, every response finished, nothing left to write:
//! [`FramingVerdict::is_idle`]), the codec's next read reports end of stream; an idle codec
//! takes that as a quiet close and returns the stream (`without_shutdown`) with any bytes
//! it read but did not use. The task then holds just the stream (for TLS, the session with
//! it) until its socket is readable, and starts a new codec on it. A connection idle for
//! `proxy.timeouts.idle` in all is closed (TLS: after a `close_notify`). Nothing is
//! written while parking, so a client never sees the difference. Ten thousand idle
//! keep-alive clients then cost little more than their sockets (and TLS sessions).
//!
//! A new connection starts parked: no buffer until its first bytes, which must come
//! within `header_read`.
//!
//! The codec runs without upgrade support: a switched-protocol response leaves a channel
//! in the connection ([`Upgrades::Manual`]), and the stream goes down it to the tunnel when
//! the codec hands it back.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::closing::{Closing, Signal};
use super::{end_with_error, request_service, Acceptor, ActiveConn};
use crate::metrics::{Metrics, Rejection};
use crate::proxy::edge::ListenerIndex;
use crate::proxy::service::{Conn, Upgrades};
use crate::proxy::sniff::{FramingVerdict, HeadClock, SniffIo};

/// Longest time between idle checks of an HTTP/1.1 connection: it is parked after one to
/// two of these without a read.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long closing a TLS connection may wait to send its `close_notify`.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// The first bytes of a prior-knowledge HTTP/2 connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client stream an HTTP/1.1 connection can be parked on: plain TCP, or TLS over it.
pub(super) trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// TLS: a `close_notify` is sent before the stream is dropped.
    const TLS: bool;

    /// The socket underneath.
    fn socket(&self) -> &TcpStream;

    /// Input already taken from the socket waits to be read (TLS: decrypted records, or
    /// an error to report), so the socket may never turn readable for it.
    fn holds_input(&mut self) -> bool;

    /// The first bytes of the stream, if some can be had without waiting; they stay
    /// first to be read.
    fn first_bytes(io: &mut SniffIo<Self>, buf: &mut [u8]) -> Option<io::Result<usize>>;
}

impl Parkable for TcpStream {
    const TLS: bool = false;

    fn socket(&self) -> &TcpStream {
        self
    }

    fn holds_input(&mut self) -> bool {
        false
    }

    fn first_bytes(io: &mut SniffIo<Self>, buf: &mut [u8]) -> Option<io::Result<usize>> {
        io.get_ref().peek(buf).now_or_never()
    }
}

impl Parkable for TlsStream<TcpStream> {
    const TLS: bool = true;

    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn holds_input(&mut self) -> bool {
        self.get_mut()
            .1
            .process_new_packets()
            .map_or(true, |state| state.plaintext_bytes_to_read() > 0)
    }

    fn first_bytes(io: &mut SniffIo<Self>, buf: &mut [u8]) -> Option<io::Result<usize>> {
        // A TLS stream cannot be peeked: read (through the scan, as the codec would),
        // then put the bytes back in front.
        let read = io.read(buf).now_or_never();
        if let Some(Ok(n)) = read {
            io.put_back(Bytes::copy_from_slice(&buf[..n]));
        }
        read
    }
}

impl Acceptor {
    /// Serves an HTTP/1.1 connection (plain, or TLS once its handshake is done) to its
    /// end, parking it whenever it is idle (see the module's notes).
    pub(super) async fn serve_h1<S: Parkable>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        proto: &'static str,
        listener: ListenerIndex,
    ) {
        let _active = ActiveConn::new(&self.shared.metrics);
        let framing = FramingVerdict::new();
        let upgrades = Upgrades::Manual(Mutex::new(None));
        let conn = Arc::new(Conn::new(
            self.shared.clone(),
            framing.clone(),
            peer,
            proto,
            listener,
            upgrades,
        ));
        let service = request_service(conn.clone());
        // The codec, boxed (dropped while parked); it ends with the stream, the bytes it
        // read but did not use put back in front.
        let start = |io: SniffIo<S>| {
            Box::pin(
                self.h1
                    .serve_connection(TokioIo::new(io), service.clone())
                    .without_shutdown()
                    .map(|ended| {
                        ended.map(|parts| {
                            let mut io = parts.io.into_inner();
                            io.put_back(parts.read_buf);
                            io
                        })
                    }),
            )
        };
        // The block's value says what is left to do with the stream (the HTTP/2 path, a
        // TLS goodbye); that is awaited after it, so the loop's own values need no room
        // meanwhile.
        let end = {
            let mut served = nothing_from(&start);
            let mut h1 = H1::new(&self, &conn, peer, SniffIo::new(stream, framing.clone()));
            let tick = tokio::time::sleep(h1.check_every);
            tokio::pin!(tick);
            let end = loop {
                let event = match served.as_mut() {
                    // No signal arm here: each poll of a registered signal takes a mutex
                    // shared by all connections. The check reads them instead, at most
                    // `check_every` late.
                    Some(codec) => tokio::select! {
                        r = codec.as_mut() => Event::Ended(r),
                        _ = tick.as_mut() => Event::Check,
                    },
                    None => h1.wait_parked(tick.as_mut()).await,
                };
                let now = Instant::now();
                let step = match event {
                    Event::Ended(r) => {
                        served = None;
                        h1.ended(r)
                    }
                    Event::Readable(r) => h1.readable(r),
                    Event::Signal(s) => {
                        h1.closing.seen(s, now);
                        Step::Check
                    }
                    Event::Check => Step::Check,
                };
                match step {
                    Step::Wait => continue,
                    Step::End(end) => break end,
                    Step::Serve(io) => {
                        served = Some(start(io));
                        tick.as_mut().reset(now + h1.check_every);
                    }
                    Step::Check => match h1.check(now, served.is_some()) {
                        Some(next) => tick.as_mut().reset(next),
                        None => break End::Close(None),
                    },
                }
            };
            h1.unpark();
            match end {
                End::Close(None) => End::Close(h1.parked.take()),
                end => end,
            }
        };
        match end {
            End::Http2(io) => {
                // Boxed: the HTTP/2 state is large, and an HTTP/1.1 connection's task
                // should not carry room for it.
                Box::pin(self.serve_io(io, framing, peer, proto, listener)).await;
            }
            End::Close(io) if S::TLS => {
                if let Some(mut io) = io {
                    let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, io.shutdown()).await;
                }
            }
            End::Close(_) => {}
        }
    }
}

/// An HTTP/1.1 connection's state between wake-ups (the codec aside).
struct H1<'a, S> {
    metrics: &'a Metrics,
    conn: &'a Conn,
    framing: &'a FramingVerdict,
    peer: SocketAddr,
    header_read: Duration,
    idle: Duration,
    check_every: Duration,
    /// The stream (plain or TLS) while no codec runs.
    parked: Option<SniffIo<S>>,
    /// No request has started yet: the first bytes are due within `header_read`, and
    /// they may be an HTTP/2 preface.
    fresh: bool,
    accepted: Instant,
    /// Reads seen at the last check, and when they last changed.
    reads: u64,
    active_at: Instant,
    head: HeadClock,
    closing: Closing,
}

/// What woke an HTTP/1.1 connection's task.
enum Event<T> {
    /// The codec finished: the client closed, the connection closed after a response,
    /// it was parked, or it switched protocols.
    Ended(hyper::Result<T>),
    /// A parked connection's socket has something to read.
    Readable(std::io::Result<()>),
    /// The periodic check.
    Check,
    /// Shutdown or a drain, while parked.
    Signal(Signal),
}

/// What to do after an event.
enum Step<S> {
    /// Wait for the next event.
    Wait,
    /// Run the check (shutdown, drains, deadlines, parking).
    Check,
    /// Start a codec on the stream.
    Serve(SniffIo<S>),
    End(End<S>),
}

/// What is left to do with a connection's stream once its loop has ended.
enum End<S> {
    /// Close it (TLS: `close_notify` first, if the stream is at hand; plain: dropping it
    /// closes it).
    Close(Option<SniffIo<S>>),
    /// It starts with an HTTP/2 preface.
    Http2(SniffIo<S>),
}

impl<'a, S: Parkable> H1<'a, S> {
    fn new(acceptor: &'a Acceptor, conn: &'a Conn, peer: SocketAddr, io: SniffIo<S>) -> Self {
        let now = Instant::now();
        H1 {
            metrics: &acceptor.shared.metrics,
            conn,
            framing: &conn.framing,
            peer,
            header_read: acceptor.header_read,
            idle: acceptor.idle,
            check_every: (acceptor.header_read.min(acceptor.idle) / 4).min(PARK_AFTER),
            parked: Some(io),
            fresh: true,
            accepted: now,
            reads: conn.framing.reads(),
            active_at: now,
            head: HeadClock::default(),
            closing: Closing::new(
                acceptor.stopping.clone(),
                acceptor.shared.routes.drain_signals(),
            ),
        }
    }

    /// Waits, parked, for the client's next bytes, the check, or a signal.
    async fn wait_parked(&mut self, tick: std::pin::Pin<&mut Sleep>) -> Event<SniffIo<S>> {
        let Some(io) = self.parked.as_mut() else {
            return Event::Readable(Ok(()));
        };
        if io.has_unread() || io.get_mut().holds_input() {
            // Parked with bytes the codec read but did not use, or that TLS holds: serve
            // them now.
            return Event::Readable(Ok(()));
        }
        tokio::select! {
            // `poll_read_ready` keeps its waker in the socket's registration;
            // `readable()` would hold a waiter node in this (long-lived) future.
            r = std::future::poll_fn(|cx| io.get_ref().socket().poll_read_ready(cx)) => Event::Readable(r),
            _ = tick => Event::Check,
            s = self.closing.signal() => Event::Signal(s),
        }
    }

    /// The codec has ended: the stream goes to a tunnel, is parked, or is closed.
    fn ended(&mut self, r: hyper::Result<SniffIo<S>>) -> Step<S> {
        let io = match r {
            Ok(io) => io,
            Err(e) => {
                end_with_error(self.metrics, self.peer, e.into());
                return Step::End(End::Close(None));
            }
        };
        if let Some(tunnel) = self.conn.upgrades.take_pending() {
            let _ = tunnel.send(Box::new(io));
            return Step::End(End::Close(None));
        }
        // Not parked: the client closed, or the last response closed the connection; the
        // codec has flushed it, and closing the socket sends the FIN after it (a
        // `shutdown` first would be one more system call for the same FIN).
        if !self.framing.take_eof() || self.closing.graceful() {
            return Step::End(End::Close(Some(io)));
        }
        self.metrics.connections_parked.increment(1.0);
        self.parked = Some(io);
        Step::Wait
    }

    /// A parked socket is readable: a new codec serves it (a fresh connection's first
    /// bytes may be an HTTP/2 preface).
    fn readable(&mut self, r: std::io::Result<()>) -> Step<S> {
        if r.is_err() {
            return Step::End(End::Close(None));
        }
        let Some(mut io) = self.parked.take() else {
            return Step::Wait;
        };
        if !self.fresh {
            self.metrics.connections_parked.decrement(1.0);
            return Step::Serve(io);
        }
        let mut first = [0u8; H2_PREFACE.len()];
        // Readable, so the bytes are there; if not (a spurious wake, or part of a TLS
        // record), the connection goes back to waiting.
        match S::first_bytes(&mut io, &mut first) {
            None => {
                self.parked = Some(io);
                Step::Wait
            }
            Some(Ok(0)) | Some(Err(_)) => Step::End(End::Close(Some(io))), // before a request
            Some(Ok(n)) if H2_PREFACE.starts_with(&first[..n]) => Step::End(End::Http2(io)),
            Some(Ok(_)) => {
                self.fresh = false;
                Step::Serve(io)
            }
        }
    }

    /// The check: signals, activity, the closing phase, the header deadline, parking and
    /// the idle limit. Returns when to check next, or `None` to close.
    fn check(&mut self, now: Instant, busy: bool) -> Option<Instant> {
        self.closing.look(now);
        let seen = self.framing.reads();
        if seen != self.reads {
            self.reads = seen;
            self.active_at = now;
        }
        if self.closing.due(now) {
            self.closing.advance(now, &self.conn.close);
        }
        if self
            .head
            .overdue(self.framing.head_pending(), now, self.header_read)
            && busy
        {
            self.metrics.rejected(Rejection::HeaderTimeout);
            debug!(client.addr = %self.peer, "request head not complete in time");
            return None;
        }
        let graceful = self.closing.graceful();
        let idle_until = if self.fresh {
            self.accepted + self.header_read
        } else {
            self.active_at + self.idle
        };
        let mut next = now + self.check_every;
        if !busy {
            if graceful || now >= idle_until {
                return None;
            }
            next = idle_until;
        } else if self.framing.is_idle() && (graceful || now >= self.active_at + self.check_every) {
            self.framing.set_eof(true); // the codec's next read ends it: parked
        }
        if let Some(t) = self.closing.deadline() {
            next = next.min(t);
        }
        Some(next.max(now))
    }

    /// The connection ends: a parked one is no longer counted as parked.
    fn unpark(&self) {
        if self.parked.is_some() && !self.fresh {
            self.metrics.connections_parked.decrement(1.0);
        }
    }
}

/// `None` of the type `start` returns (a type that cannot be written out).
fn nothing_from<A, F>(_: &impl Fn(A) -> F) -> Option<F> {
    None
}
