//! DATA PLANE: per-client rate limits — GCRA buckets in a sharded table of bounded size.
//!
//! GCRA (the generic cell rate algorithm) is a token bucket kept as one number per client:
//! the theoretical arrival time (TAT) of its next request. A request at `now` is allowed
//! when `max(tat, now) + interval - now <= burst * interval`, and then moves the TAT on by
//! one interval. A bucket whose TAT lies in the past is full, so forgetting it loses nothing.
//!
//! The table holds at most `max_keys` clients, spread over shards that each sit behind
//! their own small mutex (no global lock; a check holds one shard for a few dozen
//! nanoseconds). Keys are 64-bit SipHash values under a per-process random key, so a
//! client cannot aim its keys at one shard. A full shard evicts by CLOCK: full buckets
//! first, then clients not seen since the hand last passed. New clients start unmarked, so
//! a flood of one-off keys evicts itself before it evicts clients that keep coming back.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A limit in the table's terms: nanoseconds per request and the bucket's depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    interval_ns: u64,
    depth_ns: u64,
}

impl Limit {
    /// `requests` per `period`, `burst` at once (both at least 1).
    pub fn new(requests: u32, period: Duration, burst: u32) -> Limit {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let interval_ns = (period_ns / u64::from(requests.max(1))).max(1);
        Limit {
            interval_ns,
            depth_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the next request would be allowed after this long.
    Limited {
        retry_after: Duration,
    },
}

/// A verdict and what it did to the table, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// A new client was added.
    pub inserted: bool,
    /// ... in the place of an evicted one (the table was full).
    pub evicted: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    tat: u64,
    /// Seen since the clock hand last passed.
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    slots: Vec<Slot>,
    hand: usize,
}

/// Shards sit on their own cache lines, so threads on different shards do not contend.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The client table shared by every listener (a listener with its own limit uses its own
/// key space, see [`RateTable::client_key`]).
pub struct RateTable {
    shards: Box<[Padded]>,
    mask: usize,
    per_shard: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl RateTable {
    /// A table for at most `max_keys` clients (rounded down to a multiple of the shards).
    pub fn new(max_keys: usize) -> RateTable {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Enough shards that contention is rare, few enough that each holds 8 or more keys.
        let wanted = (threads * 8).next_power_of_two().clamp(8, 256);
        let most = (max_keys / 8).max(1);
        let shards = if wanted <= most {
            wanted
        } else {
            1usize << most.ilog2()
        };
        RateTable {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            mask: shards - 1,
            per_shard: (max_keys / shards).max(1),
            hasher: RandomState::new(),
        }
    }

    /// The most clients the table holds at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Clients held now (takes every shard's lock in turn: for tests and reports).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .slots
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of a client address in key space `scope`.
    pub fn client_key(&self, scope: u64, ip: IpAddr) -> u64 {
        self.hasher.hash_one((scope, 0u8, ip))
    }

    /// The key of a header value (an API key) in key space `scope`.
    pub fn header_key(&self, scope: u64, value: &[u8]) -> u64 {
        self.hasher.hash_one((scope, 1u8, value))
    }

    /// Charges one request to `key` at `now_ns` (any monotonic nanosecond clock).
    pub fn check(&self, key: u64, limit: Limit, now_ns: u64) -> Check {
        // The map indexes by the low bits and tags by the top ones; the shard takes the middle.
        let shard = &self.shards[(key >> 32) as usize & self.mask];
        let mut s = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = s.index.get(&key) {
            let slot = &mut s.slots[i as usize];
            slot.referenced = true;
            return Check {
                verdict: gcra(&mut slot.tat, limit, now_ns),
                inserted: false,
                evicted: false,
            };
        }
        let mut tat = now_ns;
        let verdict = gcra(&mut tat, limit, now_ns);
        let slot = Slot {
            key,
            tat,
            referenced: false,
        };
        let evicted = if s.slots.len() < self.per_shard {
            // Bounded by `per_shard`, which fits in u32 (max_keys is at most 10 million).
            let i = s.slots.len() as u32;
            s.slots.push(slot);
            s.index.insert(key, i);
            false
        } else {
            let i = s.victim(now_ns);
            let old = std::mem::replace(&mut s.slots[i], slot).key;
            s.index.remove(&old);
            s.index.insert(key, i as u32);
            true
        };
        Check {
            verdict,
            inserted: true,
            evicted,
        }
    }
}

impl Shard {
    /// CLOCK: the first slot under the hand that is full (TAT in the past) or unmarked,
    /// clearing marks on the way. Two turns at most: the first clears every mark.
    fn victim(&mut self, now_ns: u64) -> usize {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = if i + 1 == n { 0 } else { i + 1 };
            let slot = &mut self.slots[i];
            if slot.tat <= now_ns || !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
        self.hand
    }
}

/// One GCRA step on `tat`.
fn gcra(tat: &mut u64, limit: Limit, now_ns: u64) -> Verdict {
    let next = (*tat).max(now_ns).saturating_add(limit.interval_ns);
    let ahead = next - now_ns;
    if ahead > limit.depth_ns {
        return Verdict::Limited {
            retry_after: Duration::from_nanos(ahead - limit.depth_ns),
        };
    }
    *tat = next;
    Verdict::Allowed
}

/// The keys are SipHash values already: the map uses them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t = RateTable::new(1000);
        let limit = Limit::new(10, Duration::from_secs(1), 3);
        let key = t.client_key(0, "10.0.0.1".parse().unwrap());
        let now = 1_000 * MS;
        for _ in 0..3 {
            assert_eq!(t.check(key, limit, now).verdict, Verdict::Allowed);
        }
        let Verdict::Limited { retry_after } = t.check(key, limit, now).verdict else {
            panic!("the fourth request at once is over a burst of 3");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        assert_eq!(
            t.check(key, limit, now + 100 * MS).verdict,
            Verdict::Allowed
        );
        assert!(matches!(
            t.check(key, limit, now + 100 * MS).verdict,
            Verdict::Limited { .. }
        ));
        // After a quiet second the bucket is full again.
        for _ in 0..3 {
            assert_eq!(
                t.check(key, limit, now + 1_500 * MS).verdict,
                Verdict::Allowed
            );
        }
    }

    #[test]
    fn clients_and_scopes_have_their_own_buckets() {
        let t = RateTable::new(1000);
        let limit = Limit::new(1, Duration::from_secs(60), 1);
        let a = t.client_key(0, "10.0.0.1".parse().unwrap());
        let b = t.client_key(0, "10.0.0.2".parse().unwrap());
        let a_tls = t.client_key(1, "10.0.0.1".parse().unwrap());
        let h = t.header_key(0, b"10.0.0.1");
        for k in [a, b, a_tls, h] {
            assert_eq!(t.check(k, limit, 0).verdict, Verdict::Allowed);
        }
        assert!(matches!(
            t.check(a, limit, 0).verdict,
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn the_table_stays_at_its_cap_and_keeps_returning_clients() {
        let t = RateTable::new(1024);
        let limit = Limit::new(1, Duration::from_secs(3600), 1);
        let regular = t.header_key(0, b"regular");
        assert_eq!(t.check(regular, limit, 0).verdict, Verdict::Allowed);
        let mut evicted = 0;
        for i in 0..100_000u32 {
            let c = t.check(t.header_key(0, &i.to_le_bytes()), limit, 1);
            evicted += usize::from(c.evicted);
            // The regular client keeps coming back (and stays limited: no reset by eviction).
            assert!(matches!(
                t.check(regular, limit, 1).verdict,
                Verdict::Limited { .. }
            ));
        }
        assert_eq!(t.len(), t.capacity());
        assert!(t.capacity() <= 1024 && t.capacity() >= 512);
        assert_eq!(evicted, 100_000 + 1 - t.capacity());
    }
}
