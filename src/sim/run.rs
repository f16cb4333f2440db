//! SIMULATOR: one row of the table — many rollouts of one scenario, and their tally.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::dist::{binomial, BinTable, Change, Latency, Limits};
use crate::control::rollout::{Method, Observation, Phase, Plan, Rollout};
use crate::metrics::window::{Summary, WindowSnapshot};

/// What every rollout of a row shares.
#[derive(Debug, Clone)]
pub struct Setup {
    pub plan: Plan,
    pub tick: Duration,
    pub latency: Latency,
    pub base_error: f64,
    pub rollouts: usize,
    pub seed: u64,
}

/// How the rollouts of a row ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub rollouts: usize,
    pub promoted: usize,
    pub rolled_back: usize,
    /// Rollbacks by gate name.
    pub by_gate: BTreeMap<&'static str, usize>,
    pub paused_insufficient: usize,
    pub paused_other: usize,
    /// Neither promoted, rolled back nor paused by the time limit.
    pub undecided: usize,
    /// Seconds from the start to the rollback, sorted.
    pub times: Vec<f64>,
}

impl Tally {
    pub fn header() -> &'static str {
        "| method | req/s | candidate | rolled back | by gate | promoted | paused: insufficient_data / other | undecided | median / P95 time to roll back | run time |"
    }

    pub fn rule() -> &'static str {
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"
    }

    /// Adds another part's counts (its times unsorted).
    fn merge(&mut self, other: Tally) {
        self.promoted += other.promoted;
        self.rolled_back += other.rolled_back;
        for (gate, n) in other.by_gate {
            *self.by_gate.entry(gate).or_default() += n;
        }
        self.paused_insufficient += other.paused_insufficient;
        self.paused_other += other.paused_other;
        self.undecided += other.undecided;
        self.times.extend(other.times);
    }

    /// The `q`-quantile of the rollback times, in seconds.
    pub fn time_quantile(&self, q: f64) -> Option<f64> {
        if self.times.is_empty() {
            return None;
        }
        let i = ((q * self.times.len() as f64).ceil() as usize).clamp(1, self.times.len()) - 1;
        Some(self.times[i])
    }

    pub fn row(&self, method: &str, rate: f64, change: Change, took: Duration) -> String {
        let pct = |n: usize| 100.0 * n as f64 / self.rollouts.max(1) as f64;
        let gates = self
            .by_gate
            .iter()
            .map(|(g, n)| format!("{g} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let times = match (self.time_quantile(0.5), self.time_quantile(0.95)) {
            (Some(m), Some(p)) => format!("{m:.0} s / {p:.0} s"),
            _ => "-".into(),
        };
        format!(
            "| {method} | {rate} | {} | {:.2}% ({}) | {} | {:.1}% | {:.1}% / {:.1}% | {} | {times} | {:.1} s |",
            change.describe(),
            pct(self.rolled_back),
            self.rolled_back,
            if gates.is_empty() { "-".into() } else { gates },
            pct(self.promoted),
            pct(self.paused_insufficient),
            pct(self.paused_other),
            self.undecided,
            took.as_secs_f64()
        )
    }
}

/// `setup.rollouts` rollouts at `rate` requests/s in total with the candidate changed by
/// `change`, on every core. Deterministic for a seed.
pub fn simulate(setup: &Setup, rate: f64, change: Change) -> Tally {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    simulate_on(setup, rate, change, cores)
}

/// [`simulate`] on `threads` threads: rollout `i` draws from its own seed, so the tally is
/// the same whatever the number.
pub fn simulate_on(setup: &Setup, rate: f64, change: Change, threads: usize) -> Tally {
    let stable = BinTable::new(&setup.latency, Change::None, 2_000_000, setup.seed);
    let candidate = match change {
        Change::Shift(_) | Change::Scale(_) => {
            BinTable::new(&setup.latency, change, 2_000_000, setup.seed ^ 0x5eed)
        }
        // The same table: an A/A candidate is exactly stable.
        Change::None | Change::Errors(_) => {
            BinTable::new(&setup.latency, Change::None, 2_000_000, setup.seed)
        }
    };
    let extra = match change {
        Change::Errors(p) => p,
        _ => 0.0,
    };
    let pools = [
        Pool::new(&candidate, setup.base_error + extra),
        Pool::new(&stable, setup.base_error),
    ];
    let threads = threads.clamp(1, setup.rollouts.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let parts: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut part = Tally::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= setup.rollouts {
                            return part;
                        }
                        let mut rng = fastrand::Rng::with_seed(rollout_seed(setup.seed, rate, i));
                        one(setup, rate, &pools, &mut rng, &mut part);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a simulator thread does not panic"))
            .collect()
    });
    let mut tally = Tally {
        rollouts: setup.rollouts,
        ..Tally::default()
    };
    for part in parts {
        tally.merge(part);
    }
    tally.times.sort_by(f64::total_cmp);
    tally
}

/// The seed of rollout `i` of a row: SplitMix64 over the row's seed, rate and index.
fn rollout_seed(seed: u64, rate: f64, i: usize) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(rate.to_bits())
        .wrapping_add((i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A pool's traffic model.
struct Pool<'a> {
    table: &'a BinTable,
    error_rate: f64,
}

impl<'a> Pool<'a> {
    fn new(table: &'a BinTable, error_rate: f64) -> Pool<'a> {
        Pool { table, error_rate }
    }

    /// One tick's requests: bins, errors, and the run of consecutive errors (`run` carries in
    /// and out); returns the longest run seen within the tick.
    fn tick(&self, rng: &mut fastrand::Rng, mean: f64, t: &mut TickDraw) -> u32 {
        self.table.draw(rng, mean, &mut t.bins, &mut t.limits);
        t.requests = t.bins.iter().map(|(_, n)| n).sum();
        t.errors = binomial(rng, t.requests, self.error_rate);
        if t.errors == 0 {
            let longest = t.run;
            if t.requests > 0 {
                t.run = 0;
            }
            return longest;
        }
        // Where the errors fall among the tick's requests, in order.
        t.positions.clear();
        t.positions
            .extend((0..t.errors).map(|_| rng.u64(0..t.requests)));
        t.positions.sort_unstable();
        t.positions.dedup();
        let (mut run, mut longest, mut previous) = (t.run, t.run, None::<u64>);
        for &p in &t.positions {
            let adjacent = match previous {
                None => p == 0,
                Some(q) => p == q + 1,
            };
            run = if adjacent { run + 1 } else { 1 };
            longest = longest.max(run);
            previous = Some(p);
        }
        t.run = if previous == Some(t.requests - 1) {
            run
        } else {
            0
        };
        longest
    }
}

#[derive(Default)]
struct TickDraw {
    bins: Vec<(usize, u64)>,
    limits: Limits,
    positions: Vec<u64>,
    requests: u64,
    errors: u64,
    run: u32,
}

/// A sliding window of ticks, as the ring of buckets gives the controller.
/// One tick of a pool: its start (ms), its (bin, count) pairs, its errors.
type Tick = (u64, Vec<(usize, u64)>, u64);

#[derive(Default)]
struct Sliding {
    ticks: VecDeque<Tick>,
    sum: Summary,
}

impl Sliding {
    fn push(&mut self, at: u64, bins: &[(usize, u64)], errors: u64) {
        add(&mut self.sum, bins, errors);
        self.ticks.push_back((at, bins.to_vec(), errors));
    }

    /// Drops ticks before `from`.
    fn expire(&mut self, from: u64) {
        while self.ticks.front().is_some_and(|(at, _, _)| *at < from) {
            if let Some((_, bins, errors)) = self.ticks.pop_front() {
                for &(bin, n) in &bins {
                    self.sum.remove_n(bin, n);
                }
                self.sum.remove_errors(errors);
            }
        }
    }

    fn clear(&mut self) {
        self.ticks.clear();
        self.sum = Summary::default();
    }

    /// Counts only (the tripwires), or with the percentiles (the window method's gates).
    fn snapshot(&self, percentiles: bool) -> WindowSnapshot {
        if percentiles {
            return self.sum.snapshot();
        }
        WindowSnapshot {
            requests: self.sum.requests,
            errors: self.sum.errors,
            latency_samples: self.sum.requests,
            ..WindowSnapshot::default()
        }
    }
}

fn add(s: &mut Summary, bins: &[(usize, u64)], errors: u64) {
    for &(bin, n) in bins {
        s.add_n(bin, n, 0);
    }
    s.add_errors(errors, 0);
}

/// One rollout, from start to promotion, rollback, pause or the time limit.
fn one(setup: &Setup, rate: f64, pools: &[Pool; 2], rng: &mut fastrand::Rng, tally: &mut Tally) {
    let plan = &setup.plan;
    let tick_ms = u64::try_from(setup.tick.as_millis()).unwrap_or(1000).max(1);
    let window_ms = u64::try_from(plan.window.as_millis()).unwrap_or(30_000);
    let percentiles = plan.gates.method == Method::Window;
    let stages = plan.steps_bp.len() as u64 + 1;
    let limit_ms = u64::try_from(
        (plan.hold.max(plan.max_hold) * stages as u32 + plan.bake + plan.max_hold).as_millis(),
    )
    .unwrap_or(u64::MAX);
    let (rollout, _) = Rollout::start(plan.clone(), Duration::ZERO).expect("a valid plan");
    let mut rollout = rollout.terse();
    let mut obs = Observation {
        candidate_healthy: true,
        stable_healthy: true,
        ..Observation::default()
    };
    let (mut c_window, mut s_window) = (Sliding::default(), Sliding::default());
    let (mut c, mut s) = (TickDraw::default(), TickDraw::default());
    // Stable's window before the rollout: all traffic.
    let before = rate * window_ms as f64 / 1000.0;
    pools[1].tick(rng, before, &mut s);
    add(&mut obs.stable_rollout, &s.bins, s.errors);
    s_window.push(0, &s.bins, s.errors);
    let mut since = u64::MAX;
    let mut t = 0u64;
    while t < limit_ms {
        let start = t;
        t += tick_ms;
        let share = f64::from(rollout.candidate_weight_bp()) / 10_000.0;
        let per_tick = rate * tick_ms as f64 / 1000.0;
        let longest = pools[0].tick(rng, per_tick * share, &mut c);
        pools[1].tick(rng, per_tick * (1.0 - share), &mut s);
        let from = u64::try_from(rollout.samples_since().as_millis()).unwrap_or(0);
        if from != since {
            since = from;
            c_window.clear();
            obs.candidate_step = Summary::default();
            obs.stable_step = Summary::default();
        }
        add(&mut obs.stable_rollout, &s.bins, s.errors);
        s_window.push(start, &s.bins, s.errors);
        if start >= since {
            add(&mut obs.candidate_step, &c.bins, c.errors);
            add(&mut obs.stable_step, &s.bins, s.errors);
            c_window.push(start, &c.bins, c.errors);
        }
        let from = t.saturating_sub(window_ms);
        c_window.expire(from);
        s_window.expire(from);
        obs.candidate = c_window.snapshot(percentiles);
        obs.stable = s_window.snapshot(percentiles);
        obs.candidate_consecutive_errors = longest;
        rollout.step(Duration::from_millis(t), &obs);
        match rollout.phase() {
            Phase::Promoted => {
                tally.promoted += 1;
                return;
            }
            Phase::RolledBack { gate, .. } => {
                tally.rolled_back += 1;
                *tally.by_gate.entry(gate.as_str()).or_default() += 1;
                tally.times.push(t as f64 / 1000.0);
                return;
            }
            Phase::Paused { reason, .. } => {
                if reason.as_str() == "insufficient_data" {
                    tally.paused_insufficient += 1;
                } else {
                    tally.paused_other += 1;
                }
                return;
            }
            _ => {}
        }
    }
    tally.undecided += 1;
}
