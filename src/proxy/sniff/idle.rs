//! DATA PLANE: idle tracking, for parking. The connection's task tells an idle HTTP/1.1
//! connection from a busy one without asking the codec (see `conn::h1`): the bytes read
//! so far end at a request boundary, every request head read has had its response
//! finished, and no write is waiting on the socket. To park, it makes reads report end of
//! stream, which an idle codec takes as a quiet close, handing the socket back.

use std::sync::atomic::Ordering;

use super::FramingVerdict;

impl FramingVerdict {
    /// A response on this connection has ended (or was abandoned).
    pub fn response_done(&self) {
        self.responses_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses ended (or abandoned) so far.
    pub fn responses(&self) -> u64 {
        self.responses_done.load(Ordering::Relaxed)
    }

    /// Reads that returned data so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// No request is being read or answered and nothing waits to be written: the codec
    /// sits between requests. HTTP/1.1 only (the scan stops on HTTP/2 and after a 101).
    pub fn is_idle(&self) -> bool {
        self.at_boundary.load(Ordering::Relaxed)
            && !self.write_blocked.load(Ordering::Relaxed)
            && self.heads.load(Ordering::Relaxed) == self.responses_done.load(Ordering::Relaxed)
    }

    /// From now on reads report end of stream, until [`FramingVerdict::take_eof`].
    pub fn set_eof(&self, eof: bool) {
        self.eof.store(eof, Ordering::Relaxed);
    }

    /// Whether reads were reporting end of stream; they read the socket again from now on.
    pub fn take_eof(&self) -> bool {
        self.eof.swap(false, Ordering::Relaxed)
    }

    /// Whether reads report end of stream now.
    pub(super) fn eof(&self) -> bool {
        self.eof.load(Ordering::Relaxed)
    }

    /// Notes whether a write left bytes waiting (`Pending`).
    pub(super) fn note_write<T>(&self, polled: &std::task::Poll<T>) {
        self.write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
    }
}
