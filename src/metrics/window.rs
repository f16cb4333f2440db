//! METRICS/DATA PLANE: recording — live per-pool statistics for the rollout gates.
//!
//! Per pool, a ring of short time buckets (1 s by default). A bucket holds error and
//! hash-violation counts and a latency histogram; its request count is the histogram's total.
//! A window is the merge of the buckets whose epoch (`now_ms / bucket_ms`) falls inside it.
//!
//! Recording is on the request path, so it takes no lock: a successful request is one acquire
//! load of the bucket's epoch tag, one relaxed `fetch_add` on a latency bin and two loads (the
//! next bucket's tag, the consecutive-error counter). Errors add two more atomic adds.
//!
//! The histogram is HdrHistogram's log-linear layout with 7 sub-bucket bits over microseconds:
//! exact below 128 µs, then 64 bins per power of two (≤ 1.6% bin width, reported at the bin's
//! midpoint, so ≤ 0.8% error) up to 2^26 µs (67 s); longer latencies land in the top bin.
//! That is 1344 `AtomicU32` (5.4 KiB) per bucket. `hdrhistogram::Histogram` itself is not
//! atomic, so the bins are ours and the percentiles are read from the merged bins directly.
//!
//! Bucket reuse: the ring has a power-of-two number of buckets, at least the window plus three.
//! A bucket is reset by whoever first needs it for a new epoch: its tag goes to `RESETTING`
//! (compare-exchange, so one thread wins), the counters are zeroed, then the tag is published
//! with release ordering. Recorders that see `RESETTING` for their own epoch wait for the
//! sub-microsecond reset instead of adding into counters about to be zeroed, so no sample is
//! lost. To keep that wait off the steady-state path, every recorder also checks the *next*
//! bucket and prepares it ahead of time. A sample older than the ring (a thread stalled for
//! the whole ring between reading the clock and recording) is dropped: no window reaches it.

mod summary;
#[cfg(test)]
mod tests;

pub use summary::Summary;

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::PoolId;

/// How a proxied request ended, as the gates see it. 4xx is a success: the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 5xx, connect failure, timeout, reset.
    Error,
    /// The response broke the constitutional-hash contract; counts as an error too.
    HashViolation,
}

/// Counts and latency percentiles of one pool over a span of buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub violations: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub p999: Option<Duration>,
    pub latency_samples: u64,
}

impl WindowSnapshot {
    /// Errors (violations included) per request; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);
const MAX_US: u64 = (1 << 26) - 1;
/// Bins for 0..=MAX_US: 128 exact, then 64 per power of two for 2^7..2^26.
const BINS: usize = (26 - SUB_BITS as usize + 2) * HALF;

/// Bin of a latency in microseconds.
fn bin_of(us: u64) -> usize {
    let v = us.min(MAX_US);
    if v < (1 << SUB_BITS) {
        return v as usize;
    }
    let shift = (63 - v.leading_zeros()) - (SUB_BITS - 1);
    ((shift as usize) << (SUB_BITS - 1)) + (v >> shift) as usize
}

/// Midpoint, in microseconds, of the values that fall into `bin`.
fn bin_value(bin: usize) -> u64 {
    if bin < (1 << SUB_BITS) {
        return bin as u64;
    }
    let shift = bin / HALF - 1;
    let lower = ((bin % HALF + HALF) as u64) << shift;
    lower + (1 << shift) / 2
}

/// Lowest latency, in microseconds, that falls into `bin`.
fn bin_lower(bin: usize) -> u64 {
    if bin < (1 << SUB_BITS) {
        return bin as u64;
    }
    let shift = bin / HALF - 1;
    ((bin % HALF + HALF) as u64) << shift
}

/// Highest latency, in microseconds, that falls into `bin`; the top bin holds everything
/// above [`MAX_US`], so its highest is unbounded.
fn bin_upper(bin: usize) -> u64 {
    if bin >= BINS - 1 {
        return u64::MAX;
    }
    bin_lower(bin + 1) - 1
}

/// Set in a tag while its bucket is being zeroed for the epoch in the low bits.
const RESETTING: u64 = 1 << 63;

#[repr(align(64))]
struct Slot {
    /// `epoch + 1` of the data held (0: never used), possibly with `RESETTING`.
    tag: AtomicU64,
    errors: AtomicU64,
    violations: AtomicU64,
    bins: [AtomicU32; BINS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            tag: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            bins: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Makes this slot hold `tag`; false if it already holds a newer epoch.
    fn claim(&self, tag: u64) -> bool {
        let mut spins = 0u32;
        loop {
            let cur = self.tag.load(Ordering::Acquire);
            if cur == tag {
                return true;
            }
            if cur & !RESETTING > tag {
                return false;
            }
            if cur & RESETTING != 0 {
                // Another thread is zeroing it: a few hundred stores, unless it was preempted.
                spins += 1;
                if spins < 128 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            if self
                .tag
                .compare_exchange(cur, tag | RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.errors.store(0, Ordering::Relaxed);
                self.violations.store(0, Ordering::Relaxed);
                for bin in &self.bins {
                    bin.store(0, Ordering::Relaxed);
                }
                self.tag.store(tag, Ordering::Release);
                return true;
            }
        }
    }
}

/// An `AtomicU32` alone on its cache line: written by errors, read by every success.
#[repr(align(64))]
struct Padded(AtomicU32);

struct PoolStats {
    slots: Box<[Slot]>,
    consecutive_errors: Padded,
    violations_total: AtomicU64,
}

/// No tripwire pool is watched.
const UNWATCHED: u8 = u8::MAX;

/// Live statistics of both pools. `Send + Sync`; share it with an `Arc`.
pub struct LiveStats {
    base: Instant,
    bucket_ms: u64,
    window: Duration,
    /// `slots.len() - 1`; the ring length is a power of two.
    mask: u64,
    /// Buckets a window may span: the ring minus the one prepared ahead and a margin.
    span: u64,
    pools: [PoolStats; 2],
    watched: AtomicU8,
    watch_threshold: AtomicU32,
    tripwire: Notify,
}

impl LiveStats {
    /// `bucket` is clamped to 1 ms..=1 s; the ring keeps at least `window` of buckets.
    pub fn new(bucket: Duration, window: Duration) -> Self {
        let bucket_ms = (bucket.as_millis() as u64).clamp(1, 1000);
        let window_buckets = (window.as_millis() as u64).div_ceil(bucket_ms).max(1);
        let len = (window_buckets + 3).next_power_of_two();
        let pool = || PoolStats {
            slots: (0..len).map(|_| Slot::new()).collect(),
            consecutive_errors: Padded(AtomicU32::new(0)),
            violations_total: AtomicU64::new(0),
        };
        LiveStats {
            base: Instant::now(),
            bucket_ms,
            window,
            mask: len - 1,
            span: len - 2,
            pools: [pool(), pool()],
            watched: AtomicU8::new(UNWATCHED),
            watch_threshold: AtomicU32::new(u32::MAX),
            tripwire: Notify::new(),
        }
    }

    /// Milliseconds since this `LiveStats` was created: the clock of every `*_at` method.
    pub fn now_ms(&self) -> u64 {
        self.ms_of(Instant::now())
    }

    /// `at` on the clock of [`LiveStats::now_ms`].
    pub fn ms_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    pub fn bucket(&self) -> Duration {
        Duration::from_millis(self.bucket_ms)
    }

    /// The default window of [`LiveStats::window`].
    pub fn window_len(&self) -> Duration {
        self.window
    }

    /// Records one response now.
    pub fn record(&self, pool: PoolId, latency: Duration, outcome: Outcome) {
        self.record_at(self.now_ms(), pool, latency, outcome);
    }

    /// Records a request that started at `start` and ends now: one clock read in all.
    pub fn record_from(&self, start: Instant, pool: PoolId, outcome: Outcome) {
        let now = Instant::now();
        self.record_at(
            self.ms_of(now),
            pool,
            now.saturating_duration_since(start),
            outcome,
        );
    }

    pub fn record_at(&self, now_ms: u64, pool: PoolId, latency: Duration, outcome: Outcome) {
        let stats = &self.pools[pool.index()];
        let slot = self.slot_at(stats, now_ms / self.bucket_ms);
        if let Some(slot) = slot {
            let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US);
            slot.bins[bin_of(us)].fetch_add(1, Ordering::Relaxed);
        }
        let run = &stats.consecutive_errors.0;
        if outcome == Outcome::Success {
            if run.load(Ordering::Relaxed) != 0 {
                run.store(0, Ordering::Relaxed);
            }
            return;
        }
        let run = run.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let violation = outcome == Outcome::HashViolation;
        if let Some(slot) = slot {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            if violation {
                slot.violations.fetch_add(1, Ordering::Relaxed);
            }
        }
        if violation {
            stats.violations_total.fetch_add(1, Ordering::Relaxed);
        }
        let watched = self.watched.load(Ordering::Relaxed) == pool.index() as u8;
        if watched && (violation || run == self.watch_threshold.load(Ordering::Relaxed)) {
            self.tripwire.notify_one();
        }
    }

    /// The slot of `epoch`, claimed for it, with the next one prepared; `None` if the ring
    /// has already moved past `epoch`.
    #[inline]
    fn slot_at<'a>(&self, stats: &'a PoolStats, epoch: u64) -> Option<&'a Slot> {
        let tag = epoch + 1;
        let slot = &stats.slots[(epoch & self.mask) as usize];
        if slot.tag.load(Ordering::Acquire) != tag && !slot.claim(tag) {
            return None;
        }
        let next = &stats.slots[(tag & self.mask) as usize];
        if next.tag.load(Ordering::Relaxed) < tag + 1 {
            next.claim(tag + 1);
        }
        Some(slot)
    }

    /// Errors in a row on `pool`, reset by any success. Concurrent requests interleave, so
    /// this is "no success among the last N to finish", which is what the tripwire wants.
    pub fn consecutive_errors(&self, pool: PoolId) -> u32 {
        self.pools[pool.index()]
            .consecutive_errors
            .0
            .load(Ordering::Relaxed)
    }

    /// Forgets `pool`'s run of errors: a new rollout judges the candidate afresh, not on the
    /// errors that ended the previous one (no traffic since, so no success reset them).
    pub fn reset_consecutive_errors(&self, pool: PoolId) {
        self.pools[pool.index()]
            .consecutive_errors
            .0
            .store(0, Ordering::Relaxed);
    }

    /// Hash violations on `pool` since start; subtract an earlier reading for "since then".
    pub fn violations_total(&self, pool: PoolId) -> u64 {
        self.pools[pool.index()]
            .violations_total
            .load(Ordering::Relaxed)
    }

    /// Makes [`LiveStats::tripwire`] fire on `pool`'s hash violations and when its
    /// consecutive errors reach `consecutive_errors`. `None` stops watching.
    pub fn watch(&self, pool: Option<PoolId>, consecutive_errors: u32) {
        self.watch_threshold
            .store(consecutive_errors, Ordering::Relaxed);
        let watched = pool.map_or(UNWATCHED, |p| p.index() as u8);
        self.watched.store(watched, Ordering::Relaxed);
    }

    /// Notified (one stored permit) when a watched tripwire event is recorded, so the
    /// controller can evaluate at once instead of on its next tick.
    pub fn tripwire(&self) -> &Notify {
        &self.tripwire
    }

    /// The default window ending now.
    pub fn window(&self, pool: PoolId) -> WindowSnapshot {
        self.window_at(self.now_ms(), pool, self.window)
    }

    /// The buckets covering `window` up to `now_ms` (the current, partial bucket included).
    pub fn window_at(&self, now_ms: u64, pool: PoolId, window: Duration) -> WindowSnapshot {
        let last = now_ms / self.bucket_ms;
        let n = (window.as_millis() as u64).div_ceil(self.bucket_ms).max(1);
        self.merge(pool, (last + 1).saturating_sub(n), last)
    }

    /// Samples recorded at or after `since_ms`, at bucket granularity: the bucket holding
    /// `since_ms` is left out unless it starts exactly there. Reaches back at most the ring.
    pub fn since_at(&self, now_ms: u64, since_ms: u64, pool: PoolId) -> WindowSnapshot {
        self.merge(
            pool,
            since_ms.div_ceil(self.bucket_ms),
            now_ms / self.bucket_ms,
        )
    }

    /// The later-starting of [`LiveStats::window_at`] and [`LiveStats::since_at`]: what a gate
    /// judges after a weight change (the window, minus the settle time).
    pub fn window_since_at(
        &self,
        now_ms: u64,
        pool: PoolId,
        window: Duration,
        since_ms: u64,
    ) -> WindowSnapshot {
        let last = now_ms / self.bucket_ms;
        let n = (window.as_millis() as u64).div_ceil(self.bucket_ms).max(1);
        let first = (last + 1)
            .saturating_sub(n)
            .max(since_ms.div_ceil(self.bucket_ms));
        self.merge(pool, first, last)
    }

    /// The bucket (epoch) that holds `ms`: [`LiveStats::summary`] takes spans of these.
    pub fn epoch_of(&self, ms: u64) -> u64 {
        ms / self.bucket_ms
    }

    /// Everything recorded for `pool` in buckets `first..=last` (epochs, see
    /// [`LiveStats::epoch_of`]), reaching back at most the ring. Not on the request path: the
    /// controller merges the buckets it has not seen yet into a per-step [`Summary`] each tick.
    pub fn summary(&self, pool: PoolId, first: u64, last: u64) -> Summary {
        let mut bins = vec![0u64; BINS];
        let (mut errors, mut violations) = (0, 0);
        if first <= last {
            let first = first.max((last + 1).saturating_sub(self.span));
            let slots = &self.pools[pool.index()].slots;
            for epoch in first..=last {
                let slot = &slots[(epoch & self.mask) as usize];
                let tag = epoch + 1;
                if slot.tag.load(Ordering::Acquire) != tag {
                    continue;
                }
                let slot_errors = slot.errors.load(Ordering::Relaxed);
                let slot_violations = slot.violations.load(Ordering::Relaxed);
                let mut slot_bins = [0u32; BINS];
                for (dst, src) in slot_bins.iter_mut().zip(&slot.bins) {
                    *dst = src.load(Ordering::Relaxed);
                }
                // Seqlock-style recheck: a slot recycled while we read it belongs to no span here.
                fence(Ordering::Acquire);
                if slot.tag.load(Ordering::Relaxed) != tag {
                    continue;
                }
                errors += slot_errors;
                violations += slot_violations;
                for (dst, src) in bins.iter_mut().zip(slot_bins) {
                    *dst += u64::from(src);
                }
            }
        }
        Summary::from_bins(bins, errors, violations)
    }

    fn merge(&self, pool: PoolId, first: u64, last: u64) -> WindowSnapshot {
        if first > last {
            return WindowSnapshot::default();
        }
        self.summary(pool, first, last).snapshot()
    }
}

/// The bin value at quantile `q`: the smallest with at least `ceil(q * total)` samples at or
/// below it.
fn quantile(bins: &[u64], total: u64, q: f64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    let bin = bins.iter().position(|&n| {
        seen += n;
        seen >= rank
    })?;
    Some(Duration::from_micros(bin_value(bin)))
}
