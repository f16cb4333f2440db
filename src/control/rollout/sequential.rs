//! CONTROL PLANE: the anytime-valid statistics behind the sequential gates. Pure functions of
//! counts; no state, no clock.
//!
//! Three tools, each with a false-alarm probability of at most its `alpha` however many times
//! it is looked at (Ville's inequality on a non-negative martingale):
//! - [`bernoulli_bounds`]: a confidence sequence for a rate, from the beta-binomial mixture
//!   martingale (Robbins' conjugate mixture; Howard, Ramdas, McAuliffe and Sekhon, Ann.
//!   Statist. 2021, section 3 and its discrete-mixture examples).
//! - [`quantile_bounds`]: a confidence sequence for a latency quantile from the same martingale
//!   applied to "how many samples lie below the true quantile" (Howard and Ramdas, "Sequential
//!   estimation of quantiles", Bernoulli 2022, Theorem 1 with a conjugate-mixture boundary).
//! - [`OddsTest`]: candidate against stable on errors, conditioned on which pool each error came
//!   from (the Poisson-process comparison of Lindon et al., KDD 2022): under "the candidate is no
//!   worse", an error is the candidate's with at most the candidate's share of the traffic in
//!   that tick, whatever stable's own rate is; a mixture over a few odds ratios makes the
//!   likelihood ratio an e-process.

use serde::{Deserialize, Serialize};

/// `ln Γ(x)` for `x > 0`: Stirling's series after shifting `x` above 7 (error below 1e-12).
pub fn ln_gamma(x: f64) -> f64 {
    let (mut x, mut shift) = (x, 0.0);
    while x < 7.0 {
        shift += x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)));
    (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series - shift
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// A Beta(a, b) mixing distribution over the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    pub a: f64,
    pub b: f64,
}

impl Prior {
    /// Centred on `p` with the weight of `strength` observations.
    pub fn around(p: f64, strength: f64) -> Prior {
        Prior {
            a: (p * strength).max(1e-3),
            b: ((1.0 - p) * strength).max(1e-3),
        }
    }
}

/// The log of the beta-binomial mixture martingale at rate `p0` after `k` hits in `n`.
pub fn ln_mixture(k: u64, n: u64, p0: f64, prior: Prior) -> f64 {
    let (k, n) = (k as f64, n as f64);
    let p0 = p0.clamp(1e-300, 1.0 - 1e-16);
    ln_beta(prior.a + k, prior.b + n - k)
        - ln_beta(prior.a, prior.b)
        - k * p0.ln()
        - (n - k) * (-p0).ln_1p()
}

/// The rates not rejected at `alpha` after `k` hits in `n`: `(lower, upper)`, holding for every
/// `n` at once with probability at least `1 - alpha`.
pub fn bernoulli_bounds(k: u64, n: u64, alpha: f64, prior: Prior) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let threshold = (1.0 / alpha).ln();
    let rejects = |p: f64| ln_mixture(k, n, p, prior) >= threshold;
    let centre = k as f64 / n as f64;
    // The log-martingale is convex in p with its minimum (at most 0) at k / n.
    let lower = if k == 0 {
        0.0
    } else {
        bisect(1e-12, centre, rejects)
    };
    let upper = if k == n {
        1.0
    } else {
        1.0 - bisect(1e-12, 1.0 - centre, |q| {
            ln_mixture(k, n, 1.0 - q, prior) >= threshold
        })
    };
    (lower, upper)
}

/// The smallest `x` in `[lo, hi]` (to 1e-9 relative) where `rejected` turns false, assuming it
/// is true at `lo` and false at `hi` and changes once.
fn bisect(mut lo: f64, mut hi: f64, rejected: impl Fn(f64) -> bool) -> f64 {
    if !rejected(lo) {
        return lo;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if rejected(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-9 * hi {
            break;
        }
    }
    hi
}

/// How many of `n` samples may lie at or below the true `q`-quantile without rejecting it at
/// `alpha`: `(lowest, highest)` counts, for every `n` at once.
pub fn count_bounds(n: u64, q: f64, alpha: f64, prior: Prior) -> (u64, u64) {
    let threshold = (1.0 / alpha).ln();
    let accepts = |k: u64| ln_mixture(k, n, q, prior) < threshold;
    let centre = ((n as f64 * q).round() as u64).min(n);
    // Convex in k: search each side of the centre for the last accepted count.
    let lowest = {
        let (mut bad, mut good) = (0u64, centre);
        if accepts(0) {
            0
        } else {
            while good - bad > 1 {
                let mid = bad + (good - bad) / 2;
                if accepts(mid) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            good
        }
    };
    let highest = {
        let (mut good, mut bad) = (centre, n);
        if accepts(n) {
            n
        } else {
            while bad - good > 1 {
                let mid = good + (bad - good) / 2;
                if accepts(mid) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            good
        }
    };
    (lowest, highest)
}

/// The mixing weight for quantile `q`: about the information of a few hundred samples, where the
/// gates must decide at the traffic floor.
pub fn quantile_prior(q: f64) -> Prior {
    Prior::around(q, 200.0)
}

/// The mixing weight for error rates: centred on 1% with the weight of 50 requests.
pub const ERROR_PRIOR: Prior = Prior { a: 0.5, b: 49.5 };

/// Ranks (1-based) of the order statistics that bound the `q`-quantile of `n` samples: the
/// quantile is at least the `lower`-th smallest and at most the `upper`-th (`None`: no bound
/// yet on that side).
pub fn quantile_ranks(n: u64, q: f64, alpha: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 {
        return (None, None);
    }
    let (lowest, highest) = count_bounds(n, q, alpha, quantile_prior(q));
    let lower = (lowest >= 1).then_some(lowest);
    let upper = (highest < n).then_some(highest + 1);
    (lower, upper)
}

/// Odds ratios mixed in [`OddsTest`]: from a doubling of the error rate to a 32-fold one.
const ODDS: [f64; 5] = [2.0, 4.0, 8.0, 16.0, 32.0];

/// A sequential test of "the candidate's error rate is at most stable's" from errors seen in
/// the same ticks. Feed it each tick's new counts; it rejects when [`OddsTest::ln_evidence`]
/// reaches `ln(1 / alpha)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OddsTest {
    /// Log-likelihood ratio per mixed odds ratio.
    ln_ratio: [f64; 5],
    pub candidate_errors: u64,
    pub stable_errors: u64,
}

impl OddsTest {
    /// One tick: requests and errors of each pool over the same span.
    pub fn update(&mut self, c_requests: u64, c_errors: u64, s_requests: u64, s_errors: u64) {
        if c_requests == 0 || s_requests == 0 || c_errors + s_errors == 0 {
            return;
        }
        self.candidate_errors += c_errors;
        self.stable_errors += s_errors;
        let share = c_requests as f64 / (c_requests + s_requests) as f64;
        for (ln, odds) in self.ln_ratio.iter_mut().zip(ODDS) {
            let alt = odds * share / (odds * share + 1.0 - share);
            *ln += c_errors as f64 * (alt / share).ln()
                + s_errors as f64 * ((1.0 - alt) / (1.0 - share)).ln();
        }
    }

    /// The log of the mixture's likelihood ratio (equal weights).
    pub fn ln_evidence(&self) -> f64 {
        let max = self.ln_ratio.iter().copied().fold(f64::MIN, f64::max);
        let sum: f64 = self.ln_ratio.iter().map(|l| (l - max).exp()).sum();
        max + (sum / ODDS.len() as f64).ln()
    }

    pub fn rejects(&self, alpha: f64) -> bool {
        self.ln_evidence() >= (1.0 / alpha).ln()
    }
}
