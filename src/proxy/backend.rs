//! DATA PLANE: the live state of the backends: each backend's address, keep-alive
//! connections, in-flight count and health (operator switch, active checks, passive
//! ejection), and each pool's backends with their retry budget. Route tables share these
//! (an `Arc` per pool): a new table does not reset them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;

use crate::config::PoolId;
use crate::proxy::upstream::{ConnPool, UpstreamOptions};

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
    /// `switchyard_upstream_connections_opened_total`, registered once like `responses`.
    pub(crate) opened: std::sync::OnceLock<metrics::Counter>,
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
            opened: std::sync::OnceLock::new(),
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
