//! DATA PLANE: the header deadline of an HTTP/1.1 connection (plain or TLS), kept by its task in
//! place of hyper's (which would arm a timer per request): a request head that has begun
//! must be complete within `proxy.timeouts.header_read`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::FramingVerdict;

impl FramingVerdict {
    /// A request head has begun to arrive and is not complete, and every earlier request
    /// has been answered: the client owes the rest of a head (`proxy.timeouts.header_read`).
    /// Returns the number of complete heads before it, to tell one head from the next.
    pub fn head_pending(&self) -> Option<u64> {
        let heads = self.heads.load(Ordering::Relaxed);
        (self.in_head.load(Ordering::Relaxed)
            && heads == self.responses_done.load(Ordering::Relaxed))
        .then_some(heads)
    }
}

/// Times the pending request head from one periodic check to the next.
#[derive(Debug, Default)]
pub struct HeadClock {
    /// The head being timed: (complete heads before it, the check that first saw it).
    since: Option<(u64, Instant)>,
}

impl HeadClock {
    /// Given [`FramingVerdict::head_pending`] at a check: whether the same head has been
    /// pending for `limit` since the check that first saw it (so up to two checks late).
    pub fn overdue(&mut self, pending: Option<u64>, now: Instant, limit: Duration) -> bool {
        match (pending, self.since) {
            (Some(heads), Some((seen, since))) if heads == seen => now >= since + limit,
            (Some(heads), _) => {
                self.since = Some((heads, now));
                false
            }
            (None, _) => {
                self.since = None;
                false
            }
        }
    }
}
