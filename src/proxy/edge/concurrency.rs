//! DATA PLANE: per-pool concurrency caps. Each pool has one in-flight counter (its own
//! cache line); a request takes a [`PoolPermit`] before it is sent and gives it back when
//! its response body ends (as a [`HeldPermit`] in the body). Over the cap the proxy answers 503 itself: that is the proxy's
//! decision, not the backend's error, so the rollout gates never see it.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::FULL_BP;
use crate::config::{ConcurrencyConfig, PoolId};

/// A pool's cap as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCap {
    /// 0: no cap.
    pub max: usize,
    pub by_weight: bool,
    pub floor: usize,
}

impl PoolCap {
    pub fn from_config(c: &ConcurrencyConfig, pool: PoolId) -> PoolCap {
        PoolCap {
            max: c.max_inflight[pool.index()],
            by_weight: c.by_weight,
            floor: c.floor,
        }
    }

    /// The cap for a pool that gets `share_bp` of new requests; `None` when uncapped.
    /// Scaled: `ceil(max * share) + floor`, never above `max`.
    pub fn limit(&self, share_bp: u16) -> Option<usize> {
        if self.max == 0 {
            return None;
        }
        if !self.by_weight {
            return Some(self.max);
        }
        let full = usize::from(FULL_BP);
        let scaled = (self.max * usize::from(share_bp)).div_ceil(full);
        Some((scaled + self.floor).min(self.max))
    }
}

#[repr(align(128))]
#[derive(Debug, Default)]
struct Counter(AtomicUsize);

/// In-flight requests per pool, shared by every route table (a reload keeps the counts).
#[derive(Debug, Default)]
pub struct PoolCounters {
    inflight: [Counter; 2],
}

impl PoolCounters {
    /// A permit for one more request to `pool` if fewer than `limit` are in flight.
    pub fn try_acquire(&self, pool: PoolId, limit: usize) -> Option<PoolPermit<'_>> {
        let c = &self.inflight[pool.index()].0;
        if c.fetch_add(1, Ordering::Relaxed) >= limit {
            c.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(PoolPermit {
            counters: self,
            pool,
        })
    }

    /// Gives back a permit turned into a [`HeldPermit`].
    pub fn release(&self, held: HeldPermit) {
        self.inflight[held.0.index()]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub fn inflight(&self, pool: PoolId) -> usize {
        self.inflight[pool.index()].0.load(Ordering::Relaxed)
    }
}

/// One request counted against its pool's cap until dropped (or kept, see
/// [`PoolPermit::keep`]). It borrows the counters: taking one costs no reference count.
#[derive(Debug)]
pub struct PoolPermit<'a> {
    counters: &'a PoolCounters,
    pool: PoolId,
}

impl PoolPermit<'_> {
    /// Keeps the request counted past this borrow (in the response body); whoever holds the
    /// result must hand it to [`PoolCounters::release`].
    pub fn keep(self) -> HeldPermit {
        let held = HeldPermit(self.pool);
        std::mem::forget(self);
        held
    }
}

impl Drop for PoolPermit<'_> {
    fn drop(&mut self) {
        self.counters.inflight[self.pool.index()]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request still counted against `pool`, owed a [`PoolCounters::release`].
#[derive(Debug)]
#[must_use = "a held permit must be released, or the pool's count never drops"]
pub struct HeldPermit(PoolId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_cap_follows_the_share_plus_the_floor() {
        let cap = PoolCap {
            max: 100,
            by_weight: true,
            floor: 2,
        };
        assert_eq!(cap.limit(1000), Some(12));
        assert_eq!(cap.limit(50), Some(3));
        assert_eq!(cap.limit(0), Some(2));
        assert_eq!(cap.limit(10_000), Some(100));
        assert_eq!(
            PoolCap {
                by_weight: false,
                ..cap
            }
            .limit(1000),
            Some(100)
        );
        assert_eq!(PoolCap { max: 0, ..cap }.limit(1000), None);
    }

    #[test]
    fn permits_stop_at_the_limit_and_come_back() {
        let c = PoolCounters::default();
        let held: Vec<_> = (0..3)
            .map(|_| c.try_acquire(PoolId::Green, 3).unwrap())
            .collect();
        assert!(c.try_acquire(PoolId::Green, 3).is_none());
        assert!(c.try_acquire(PoolId::Blue, 3).is_some());
        assert_eq!(c.inflight(PoolId::Green), 3);
        drop(held);
        assert_eq!(c.inflight(PoolId::Green), 0);
        let kept = c.try_acquire(PoolId::Green, 1).unwrap().keep();
        assert_eq!(c.inflight(PoolId::Green), 1);
        assert!(c.try_acquire(PoolId::Green, 1).is_none());
        c.release(kept);
        assert_eq!(c.inflight(PoolId::Green), 0);
    }
}
