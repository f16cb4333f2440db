//! DATA PLANE: the route table — which pool, then which backend, serves a request.
//!
//! A [`RouteTable`] is an immutable snapshot: weights, pools, pool states, the settings
//! requests are checked against, and a generation. The control plane builds a complete new
//! table for every change and publishes it with one `ArcSwap::store`; a request loads it
//! once ([`RouteHandle::load`]) and keeps that snapshot to the end.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::config::PoolId;
use crate::proxy::settings::Settings;
use crate::proxy::upstream::{ConnPool, UpstreamOptions};

/// Basis points: green's share of new requests is `green_bp / 10_000`.
pub const FULL_BP: u16 = 10_000;

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

/// One upstream address. Counters are live data shared by every table that holds it.
#[derive(Debug)]
pub struct Backend {
    pub addr: String,
    pub authority: Authority,
    /// The address when `addr` is an IP literal (no resolver round trip per connect).
    pub socket_addr: Option<SocketAddr>,
    pub conns: ConnPool,
    inflight: AtomicUsize,
    enabled: AtomicBool,
    /// Verdict of the active health checks (true until they say otherwise).
    healthy: AtomicBool,
    /// Consecutive failures seen by requests (connect errors, 5xx).
    fails: AtomicU32,
    /// Active checks in a row: positive passes, negative failures.
    pub(crate) check_streak: std::sync::atomic::AtomicI32,
    /// Passive ejection: out of rotation until this time (ms on [`clock_ms`]); 0 = in.
    ejected_until: AtomicU64,
    /// `switchyard_backend_requests_total` by status class, registered once (see
    /// [`crate::metrics::Metrics::backend_response`]).
    pub(crate) responses: std::sync::OnceLock<[metrics::Counter; 5]>,
}

/// Milliseconds since the process's first call: a cheap monotonic clock for ejections.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Backend {
    pub fn new(addr: &str, opts: UpstreamOptions) -> Result<Backend, http::uri::InvalidUri> {
        Ok(Backend {
            addr: addr.to_string(),
            authority: Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(
                addr.as_bytes(),
            ))?,
            socket_addr: addr.parse().ok(),
            conns: ConnPool::new(opts),
            inflight: AtomicUsize::new(0),
            enabled: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            check_streak: std::sync::atomic::AtomicI32::new(0),
            ejected_until: AtomicU64::new(0),
            responses: std::sync::OnceLock::new(),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the active-check verdict; true when it changed.
    pub fn set_healthy(&self, on: bool) -> bool {
        self.healthy.swap(on, Ordering::Relaxed) != on
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// In rotation: enabled by the operator, healthy, not ejected.
    pub fn in_rotation(&self) -> bool {
        self.is_enabled() && self.is_healthy() && !self.is_ejected()
    }

    /// A request through this backend succeeded.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed on this backend; returns the consecutive count.
    pub fn record_failure(&self) -> u32 {
        self.fails.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }
}

/// Counts a request against its backend until dropped (after the response body ends).
#[derive(Debug)]
pub struct InflightGuard(Arc<Backend>);

impl InflightGuard {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool: its backends, each with its own keep-alive connections.
#[derive(Debug)]
pub struct Pool {
    pub id: PoolId,
    pub backends: Box<[Arc<Backend>]>,
    pub retries: RetryBudget,
    pub passive: PassiveHealth,
    pub health: crate::config::HealthConfig,
}

/// Passive ejection settings of a pool.
#[derive(Debug, Clone)]
pub struct PassiveHealth {
    /// Consecutive failures (connect errors, 5xx) that take a backend out of rotation.
    pub consecutive_failures: u32,
    pub ejection: std::time::Duration,
    /// At most this share of a pool's backends may be ejected at once.
    pub max_ejected_percent: u32,
}

impl Pool {
    /// Power of two choices on in-flight requests among enabled backends.
    pub fn pick_backend(&self) -> Option<&Arc<Backend>> {
        self.pick_backend_except(None)
    }

    /// As [`Pool::pick_backend`], avoiding `except` (a backend that just failed) when
    /// another is available.
    pub fn pick_backend_except(&self, except: Option<&Arc<Backend>>) -> Option<&Arc<Backend>> {
        let usable =
            |b: &Arc<Backend>| b.in_rotation() && !except.is_some_and(|x| Arc::ptr_eq(x, b));
        let n = self.backends.len();
        match n {
            0 => None,
            1 => Some(&self.backends[0]).filter(|b| usable(b)),
            _ => {
                let i = fastrand::usize(..n);
                let mut j = fastrand::usize(..n - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (&self.backends[i], &self.backends[j]);
                match (usable(a), usable(b)) {
                    (true, true) => Some(if b.inflight() < a.inflight() { b } else { a }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both samples out: fall back to a scan, which is rare and bounded.
                    (false, false) => self
                        .backends
                        .iter()
                        .filter(|b| usable(b))
                        .min_by_key(|b| b.inflight()),
                }
            }
        }
        .or_else(|| {
            // Nothing in rotation: rather than empty the pool, use the enabled backends
            // whatever the checks say (they may be wrong; the requests will tell).
            self.backends
                .iter()
                .filter(|b| b.is_enabled() && !except.is_some_and(|x| Arc::ptr_eq(x, b)))
                .min_by_key(|b| b.inflight())
        })
    }

    /// Records a failed request on `backend`; ejects it after enough consecutive failures
    /// unless that would take more than the allowed share of the pool out. True if ejected.
    pub fn record_failure(&self, backend: &Backend) -> bool {
        let fails = backend.record_failure();
        if fails < self.passive.consecutive_failures || backend.is_ejected() {
            return false;
        }
        let cap = self.backends.len() * self.passive.max_ejected_percent as usize / 100;
        let out = self.backends.iter().filter(|b| b.is_ejected()).count();
        if out >= cap {
            return false;
        }
        backend.fails.store(0, Ordering::Relaxed);
        backend.ejected_until.store(
            clock_ms() + self.passive.ejection.as_millis() as u64,
            Ordering::Relaxed,
        );
        true
    }

    /// How many backends are in rotation now.
    pub fn in_rotation(&self) -> usize {
        self.backends.iter().filter(|b| b.in_rotation()).count()
    }

    pub fn inflight(&self) -> usize {
        self.backends.iter().map(|b| b.inflight()).sum()
    }
}

/// Retries are capped at a share of recent requests (plus a small floor), so that a
/// failing backend cannot turn into a retry storm. Counters restart every period.
#[derive(Debug)]
pub struct RetryBudget {
    epoch: Instant,
    period_start_ms: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    percent: u64,
    floor: u64,
}

impl RetryBudget {
    const PERIOD_MS: u64 = 10_000;

    pub fn new(percent: u64, floor: u64) -> Self {
        RetryBudget {
            epoch: Instant::now(),
            period_start_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            percent,
            floor,
        }
    }

    pub fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_withdraw(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let start = self.period_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) > Self::PERIOD_MS
            && self
                .period_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
        let allowed = self.requests.load(Ordering::Relaxed) * self.percent / 100 + self.floor;
        self.retries.fetch_add(1, Ordering::Relaxed) < allowed
    }
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
