//! SIMULATOR: synthetic latencies and counts — latency distributions as probabilities per
//! histogram bin, and the few random draws the simulator needs (on `fastrand`).

use std::path::Path;
use std::time::Duration;

use crate::metrics::window::Summary;

/// Where a pool's latencies come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    /// 99.5% lognormal around 1 ms (sigma 0.35), 0.5% a slow mode around 6 ms (sigma 0.5).
    HeavyTail,
    /// 85% around 0.6 ms, 15% around 2 ms (a cache hit and a miss).
    Bimodal,
    /// Latencies read back from a file (one number of microseconds per line).
    Recorded(Vec<u64>),
}

impl Latency {
    pub fn name(&self) -> &'static str {
        match self {
            Latency::HeavyTail => "lognormal+tail",
            Latency::Bimodal => "bimodal",
            Latency::Recorded(_) => "recorded",
        }
    }

    /// Reads a file of latencies in microseconds, one a line (`#` comments and blanks skipped).
    pub fn read(path: &Path) -> Result<Latency, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let us = line.parse::<u64>().map_err(|_| {
                format!(
                    "{} line {}: {line:?} is not a whole number of microseconds",
                    path.display(),
                    i + 1
                )
            })?;
            samples.push(us);
        }
        if samples.is_empty() {
            return Err(format!("{} holds no latencies", path.display()));
        }
        Ok(Latency::Recorded(samples))
    }

    /// One latency in microseconds.
    fn sample(&self, rng: &mut fastrand::Rng) -> f64 {
        match self {
            Latency::HeavyTail => {
                if rng.f64() < 0.995 {
                    lognormal(rng, 1000.0, 0.35)
                } else {
                    lognormal(rng, 6000.0, 0.5)
                }
            }
            Latency::Bimodal => {
                if rng.f64() < 0.85 {
                    lognormal(rng, 600.0, 0.2)
                } else {
                    lognormal(rng, 2000.0, 0.25)
                }
            }
            Latency::Recorded(v) => v[rng.usize(..v.len())] as f64,
        }
    }
}

/// What the candidate does differently from stable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    None,
    /// Every request slower by this much.
    Shift(Duration),
    /// Every request's latency times this.
    Scale(f64),
    /// This much more error rate (a fraction: 0.02 is two points).
    Errors(f64),
}

impl Change {
    pub fn describe(&self) -> String {
        match *self {
            Change::None => "A/A (identical)".into(),
            Change::Shift(d) => format!("latency +{} ms", d.as_secs_f64() * 1000.0),
            Change::Scale(f) => format!("latency x{f}"),
            Change::Errors(p) => format!("errors +{} points", p * 100.0),
        }
    }
}

/// A latency distribution as probabilities per histogram bin, for fast sampling.
pub struct BinTable {
    /// Non-empty bins and their probabilities.
    bins: Vec<(usize, f64)>,
    /// Cumulative probabilities of `bins`.
    cumulative: Vec<f64>,
}

impl BinTable {
    /// Estimates the bins from `draws` samples of `latency` changed by `change`.
    pub fn new(latency: &Latency, change: Change, draws: usize, seed: u64) -> BinTable {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = vec![0u64; Summary::BINS];
        for _ in 0..draws {
            let mut us = latency.sample(&mut rng);
            match change {
                Change::Shift(d) => us += d.as_secs_f64() * 1e6,
                Change::Scale(f) => us *= f,
                Change::None | Change::Errors(_) => {}
            }
            counts[Summary::bin_of(us.max(0.0) as u64)] += 1;
        }
        let bins: Vec<(usize, f64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| (b, n as f64 / draws as f64))
            .collect();
        let mut total = 0.0;
        let cumulative = bins
            .iter()
            .map(|(_, p)| {
                total += p;
                total
            })
            .collect();
        BinTable { bins, cumulative }
    }

    /// Poisson(`mean`) requests over the bins, into `out` as (bin, count), sorted by bin.
    /// `limits` keeps each bin's `exp(-mean * p)` between draws of the same mean.
    pub fn draw(
        &self,
        rng: &mut fastrand::Rng,
        mean: f64,
        out: &mut Vec<(usize, u64)>,
        limits: &mut Limits,
    ) {
        out.clear();
        if mean <= 0.0 {
            return;
        }
        if mean < self.bins.len() as f64 {
            // Few requests: draw each one's bin.
            let n = poisson(rng, mean);
            for _ in 0..n {
                let u = rng.f64() * self.cumulative.last().copied().unwrap_or(1.0);
                let i = self.cumulative.partition_point(|&c| c < u);
                let bin = self.bins[i.min(self.bins.len() - 1)].0;
                match out.iter_mut().find(|(b, _)| *b == bin) {
                    Some((_, c)) => *c += 1,
                    None => out.push((bin, 1)),
                }
            }
            out.sort_unstable();
        } else {
            // Many: each bin's count is an independent Poisson (a Poisson total, split).
            if limits.mean != mean || limits.of.len() != self.bins.len() {
                limits.mean = mean;
                limits.of.clear();
                limits
                    .of
                    .extend(self.bins.iter().map(|&(_, p)| (-mean * p).exp()));
            }
            for (&(bin, p), &limit) in self.bins.iter().zip(&limits.of) {
                let n = poisson_below(rng, mean * p, limit);
                if n > 0 {
                    out.push((bin, n));
                }
            }
        }
    }
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    let v = rng.f64();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn lognormal(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

/// A Poisson draw: exact (by multiplication) below a mean of 30, a rounded normal above.
pub fn poisson(rng: &mut fastrand::Rng, mean: f64) -> u64 {
    poisson_below(rng, mean, (-mean).exp())
}

/// Each bin's `exp(-mean * p)` for one mean (a bin table's draws at a steady rate).
#[derive(Debug, Default)]
pub struct Limits {
    mean: f64,
    of: Vec<f64>,
}

/// [`poisson`] with `limit = exp(-mean)` given.
fn poisson_below(rng: &mut fastrand::Rng, mean: f64, limit: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let (mut k, mut p) = (0u64, rng.f64());
        while p > limit {
            k += 1;
            p *= rng.f64();
        }
        return k;
    }
    (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u64
}

/// How many of `n` requests fail at rate `p`: exact below 64 requests, else Poisson.
pub fn binomial(rng: &mut fastrand::Rng, n: u64, p: f64) -> u64 {
    if p <= 0.0 || n == 0 {
        return 0;
    }
    if n < 64 {
        return (0..n).filter(|_| rng.f64() < p).count() as u64;
    }
    poisson(rng, n as f64 * p).min(n)
}
