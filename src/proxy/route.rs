//! DATA PLANE: the route table — which pool, then which backend, serves a request.
//!
//! A [`RouteTable`] is an immutable snapshot: weights, pools, pool states, the settings
//! requests are checked against, and a generation. The control plane builds a complete new
//! table for every change and publishes it with one `ArcSwap::store`; a request loads it
//! once ([`RouteHandle::load`]) and keeps that snapshot to the end.
//!
//! The backends and pools a table names, with their live state, are in
//! [`crate::proxy::backend`].

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::PoolId;
use crate::proxy::backend::Pool;
use crate::proxy::settings::Settings;

/// Basis points: green's share of new requests is `green_bp / 10_000`.
pub use crate::config::FULL_BP;

/// Operator state of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    /// Serves its weighted share.
    Ready,
    /// Takes no new requests; in-flight ones finish.
    Drain,
    /// Takes no requests (maintenance).
    Maint,
}
/// The immutable snapshot a request routes by.
#[derive(Debug)]
pub struct RouteTable {
    pub generation: u64,
    pub green_bp: u16,
    /// Salt of the affinity hash; changes per rollout so buckets do not always favour the same users.
    pub salt: u64,
    pub pools: [Arc<Pool>; 2],
    pub states: [PoolState; 2],
    pub settings: Arc<Settings>,
    /// Failover (`split.failover`): this pool has a share but no backend in rotation, so its
    /// share goes to the other pool until one comes back. Set by the control plane, which
    /// publishes a new table for each switch; requests only read it.
    pub failover: Option<PoolId>,
}

impl RouteTable {
    pub fn pool(&self, id: PoolId) -> &Arc<Pool> {
        &self.pools[id.index()]
    }

    /// Green's effective share: the weights after pool states and failover.
    pub fn effective_green_bp(&self) -> u16 {
        match self.failover {
            Some(PoolId::Green) => 0,
            Some(PoolId::Blue) => FULL_BP,
            None => self.operated_green_bp(),
        }
    }

    /// Green's share after pool states only: a draining or maintained pool gets none
    /// (unless both are out, then the weights stand and the backends answer for themselves).
    pub fn operated_green_bp(&self) -> u16 {
        let up = |p: PoolId| self.states[p.index()] == PoolState::Ready;
        match (up(PoolId::Blue), up(PoolId::Green)) {
            (true, false) => 0,
            (false, true) => FULL_BP,
            _ => self.green_bp,
        }
    }

    /// Whether `pool` gets any share of new requests.
    pub fn takes_requests(&self, pool: PoolId) -> bool {
        self.share_bp(pool) > 0
    }

    /// `pool`'s effective share of new requests, in basis points.
    pub fn share_bp(&self, pool: PoolId) -> u16 {
        let green = self.effective_green_bp();
        match pool {
            PoolId::Green => green,
            PoolId::Blue => FULL_BP - green,
        }
    }

    /// The pool for one request. With an affinity key the choice is a pure function of
    /// (key, salt, weight) and monotone in the weight; without one it follows a low-discrepancy
    /// sequence so small shares are exact rather than merely right on average.
    pub fn pick_pool(&self, affinity_key: Option<&[u8]>) -> PoolId {
        let bp = self.effective_green_bp();
        match bp {
            0 => PoolId::Blue,
            FULL_BP => PoolId::Green,
            _ => {
                let bucket = match affinity_key {
                    Some(key) => affinity_bucket(key, self.salt),
                    None => next_spread_bucket(),
                };
                if bucket < bp {
                    PoolId::Green
                } else {
                    PoolId::Blue
                }
            }
        }
    }
}

/// `hash(key, salt) mod 10000` with a fixed, version-independent hash (FNV-1a, then a
/// 64-bit finaliser so that short keys spread over all buckets).
pub fn affinity_bucket(key: &[u8], salt: u64) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(FULL_BP)) as u16
}

thread_local! {
    static SPREAD: Cell<u64> = Cell::new(fastrand::u64(..));
}

/// Next bucket of a per-thread Weyl sequence with the golden-ratio step: consecutive
/// requests on a thread are spread evenly over 0..10000, so any share is met within a
/// request or two per thread, with no shared counter to contend on.
fn next_spread_bucket() -> u16 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    SPREAD.with(|s| {
        let v = s.get().wrapping_add(GOLDEN);
        s.set(v);
        (((v >> 32) * u64::from(FULL_BP)) >> 32) as u16
    })
}

/// A request to close open downstream connections gradually (a pool went to drain or
/// maintenance): each connection open when it is sent closes at a random moment within
/// `window` — HTTP/1.1 after its current (or next) response, HTTP/2 with GOAWAY — so that
/// long-lived clients reconnect and rebalance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainSignal {
    /// Bumped by every signal; a connection reacts to changes after it subscribed.
    pub seq: u64,
    pub window: Duration,
}

/// The shared handle to the current route table. Readers are lock-free; writers are
/// serialised by a mutex that only the control plane takes.
#[derive(Debug)]
pub struct RouteHandle {
    table: ArcSwap<RouteTable>,
    write: Mutex<()>,
    drain: tokio::sync::watch::Sender<DrainSignal>,
}

impl RouteHandle {
    pub fn new(table: RouteTable) -> Self {
        RouteHandle {
            table: ArcSwap::from_pointee(table),
            write: Mutex::new(()),
            drain: tokio::sync::watch::Sender::new(DrainSignal::default()),
        }
    }

    /// Asks every downstream connection open now to close within `window` (see [`DrainSignal`]).
    pub fn signal_drain(&self, window: Duration) {
        self.drain.send_modify(|s| {
            s.seq += 1;
            s.window = window;
        });
    }

    /// For a new connection: changes from now on are drain requests for it.
    pub fn drain_signals(&self) -> tokio::sync::watch::Receiver<DrainSignal> {
        self.drain.subscribe()
    }

    /// The current snapshot, for one request.
    pub fn load(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Serialises control-plane changes: read, build, then [`RouteWriter::publish`].
    pub fn writer(&self) -> RouteWriter<'_> {
        // A poisoned lock only means a writer panicked mid-build; the published table is intact.
        let guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        RouteWriter {
            handle: self,
            _guard: guard,
        }
    }
}

/// Exclusive right to publish the next table.
pub struct RouteWriter<'a> {
    handle: &'a RouteHandle,
    _guard: MutexGuard<'a, ()>,
}

impl RouteWriter<'_> {
    pub fn current(&self) -> Arc<RouteTable> {
        self.handle.table.load_full()
    }

    /// Publishes a table built from the current one by `change`, with the generation bumped.
    pub fn publish(&self, change: impl FnOnce(&RouteTable) -> RouteTable) -> Arc<RouteTable> {
        let current = self.current();
        let mut next = change(&current);
        next.generation = current.generation + 1;
        let next = Arc::new(next);
        self.handle.table.store(next.clone());
        next
    }

    /// Publishes `table` as it is (restore from state, where the generation is kept).
    pub fn publish_exact(&self, table: RouteTable) -> Arc<RouteTable> {
        let table = Arc::new(table);
        self.handle.table.store(table.clone());
        table
    }
}

impl RouteTable {
    /// A copy with the same pools and settings, for a writer to modify.
    pub fn derive(&self) -> RouteTable {
        RouteTable {
            generation: self.generation,
            green_bp: self.green_bp,
            salt: self.salt,
            pools: self.pools.clone(),
            states: self.states,
            settings: self.settings.clone(),
            failover: self.failover,
        }
    }
}

#[cfg(test)]
mod tests;
