//! CONTROL PLANE: the anytime-valid statistics behind the sequential gates. Pure functions of
//! counts; no state, no clock.
//!
//! Three tools, each with a false-alarm probability of at most its `alpha` however many times
//! it is looked at (Ville's inequality on a non-negative martingale):
//! - [`bernoulli_bounds`]: a confidence sequence for a rate, from the beta-binomial mixture
//!   martingale (Robbins' conjugate mixture; Howard, Ramdas, McAuliffe and Sekhon, Ann.
//!   Statist. 2021, section 3 and its discrete-mixture examples).
//! - [`count_bounds`], [`quantile_ranks`]: a confidence sequence for a latency quantile from
//!   the same martingale applied to "how many samples lie below the true quantile" (Howard
//!   and Ramdas, "Sequential estimation of quantiles", Bernoulli 2022, Theorem 1 with a
//!   conjugate-mixture boundary).
//! - a difference of two rates (candidate minus stable) is bounded by the difference of their
//!   bounds: `lower(c) - upper(s)` to `upper(c) - lower(s)` holds whenever both sequences do,
//!   so at every tick with probability at least `1 - alpha_c - alpha_s` (a union bound).
//! - [`excess_evidence`]: evidence that one rate exceeds another by more than a margin, by
//!   universal inference (Wasserman, Ramdas and Balakrishnan, "Universal inference", PNAS
//!   2020): both pools' mixture likelihoods over the best likelihood any pair within the margin
//!   gives. Far sharper than the difference of two bounds when errors are rare: it weighs the
//!   candidate's errors against stable's jointly instead of paying for each pool's bound.
//!
//! Cost: a rate's bounds are two bisections of a closed form; a quantile's are two searches
//! over counts, which start from the last tick's answer when given one
//! ([`count_bounds_near`]) and land on the same counts as a search from scratch.

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
    Mixture::new(k, n, prior).at(p0)
}

/// [`ln_mixture`] for fixed counts, its `ln B` terms computed once for a search over `p0`
/// (the same arithmetic in the same order: the same bits).
struct Mixture {
    k: f64,
    n: f64,
    ln_betas: f64,
}

impl Mixture {
    fn new(k: u64, n: u64, prior: Prior) -> Mixture {
        let (k, n) = (k as f64, n as f64);
        Mixture {
            k,
            n,
            ln_betas: ln_beta(prior.a + k, prior.b + n - k) - ln_beta(prior.a, prior.b),
        }
    }

    fn at(&self, p0: f64) -> f64 {
        let p0 = p0.clamp(1e-300, 1.0 - 1e-16);
        self.ln_betas - self.k * p0.ln() - (self.n - self.k) * (-p0).ln_1p()
    }
}

/// [`ln_mixture`] at a fixed rate `p0` for counts varying in a search: the terms that do not
/// depend on the counts computed once (the same bits as [`ln_mixture`]).
struct AtRate {
    prior: Prior,
    ln_beta_prior: f64,
    ln_p: f64,
    ln_q: f64,
}

impl AtRate {
    fn new(p0: f64, prior: Prior) -> AtRate {
        let p0 = p0.clamp(1e-300, 1.0 - 1e-16);
        AtRate {
            prior,
            ln_beta_prior: ln_beta(prior.a, prior.b),
            ln_p: p0.ln(),
            ln_q: (-p0).ln_1p(),
        }
    }

    fn at(&self, k: u64, n: u64) -> f64 {
        let (k, n) = (k as f64, n as f64);
        ln_beta(self.prior.a + k, self.prior.b + n - k)
            - self.ln_beta_prior
            - k * self.ln_p
            - (n - k) * self.ln_q
    }
}

/// The log of an e-value for "the candidate's rate exceeds stable's by more than `margin`",
/// from `kc` errors in `nc` candidate requests and `ks` in `ns` stable ones: the two pools'
/// beta-binomial mixture likelihoods over the largest likelihood of any pair of rates with
/// `p_c - p_s <= margin` (universal inference). For any such true pair the ratio is at most the
/// mixture martingale at that pair, so under the null it reaches `ln(1 / alpha)` at any tick
/// with probability at most `alpha` (Ville's inequality). Counts are cumulative; the result
/// does not depend on how they were split into ticks.
pub fn excess_evidence(kc: u64, nc: u64, ks: u64, ns: u64, margin: f64, prior: Prior) -> f64 {
    if nc == 0 || kc == 0 {
        // Without a candidate error nothing can speak for harm (and the ratio is at most 1).
        return 0.0;
    }
    let (c, s) = (
        Mixture::new(kc, nc, prior),
        Mixture::new(ks, ns.max(1), prior),
    );
    let mixtures = c.ln_betas + if ns == 0 { 0.0 } else { s.ln_betas };
    // ln L(p) of the counts, -inf-safe at the edges.
    let ln_lik = |m: &Mixture, p: f64| {
        let p = p.clamp(1e-300, 1.0 - 1e-16);
        m.k * p.ln() + (m.n - m.k) * (-p).ln_1p()
    };
    let (pc, ps) = (kc as f64 / nc as f64, ks as f64 / ns.max(1) as f64);
    let stable = |p: f64| if ns == 0 { 0.0 } else { ln_lik(&s, p) };
    let best_null = if pc - ps <= margin {
        // The maximum likelihood pair is itself in the null: no evidence beyond the mixtures'.
        ln_lik(&c, pc) + stable(ps)
    } else {
        // On the boundary p_c = p_s + margin; concave in p_s: a golden-section search.
        let f = |p: f64| ln_lik(&c, p + margin) + stable(p);
        let (mut lo, mut hi) = (0.0, 1.0 - margin);
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let (mut x1, mut x2) = (hi - g * (hi - lo), lo + g * (hi - lo));
        let (mut f1, mut f2) = (f(x1), f(x2));
        for _ in 0..80 {
            if f1 < f2 {
                lo = x1;
                (x1, f1) = (x2, f2);
                x2 = lo + g * (hi - lo);
                f2 = f(x2);
            } else {
                hi = x2;
                (x2, f2) = (x1, f1);
                x1 = hi - g * (hi - lo);
                f1 = f(x1);
            }
        }
        f1.max(f2).max(f(0.0))
    };
    mixtures - best_null
}

/// The rates not rejected at `alpha` after `k` hits in `n`: `(lower, upper)`, holding for every
/// `n` at once with probability at least `1 - alpha`.
pub fn bernoulli_bounds(k: u64, n: u64, alpha: f64, prior: Prior) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let threshold = (1.0 / alpha).ln();
    let m = Mixture::new(k, n, prior);
    let rejects = |p: f64| m.at(p) >= threshold;
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
        1.0 - bisect(1e-12, 1.0 - centre, |q| m.at(1.0 - q) >= threshold)
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
    count_bounds_near(n, q, alpha, prior, None)
}

/// [`count_bounds`], searching outwards from `guess` (e.g. the last tick's answer moved by
/// `q` times the new samples) before bisecting: a few evaluations instead of two bisections
/// over `0..n`, and the same answer whatever the guess (each side has one boundary).
pub fn count_bounds_near(
    n: u64,
    q: f64,
    alpha: f64,
    prior: Prior,
    guess: Option<(u64, u64)>,
) -> (u64, u64) {
    let threshold = (1.0 / alpha).ln();
    let m = AtRate::new(q, prior);
    let accepts = |k: u64| m.at(k, n) < threshold;
    let centre = ((n as f64 * q).round() as u64).min(n);
    // Convex in k with its minimum (accepted) at the centre: below it the accepted counts are
    // `lowest..=centre`, above it `centre..=highest`.
    let (lo_guess, hi_guess) = guess.unwrap_or((0, n));
    let lowest = if accepts(0) {
        0
    } else {
        // `bad` rejected, `good` accepted, bad < good.
        let (bad, good) = bracket(lo_guess.max(1).min(centre), 0, centre, &accepts, false);
        boundary(bad, good, &accepts)
    };
    let highest = if accepts(n) {
        n
    } else {
        let start = hi_guess.min(n.saturating_sub(1)).max(centre);
        let (good, bad) = bracket(start, centre, n, &accepts, true);
        boundary(bad, good, &accepts)
    };
    (lowest, highest)
}

/// From `guess`, doubling steps until `accepts` changes between two counts within
/// `floor..=ceil`: `(low, high)` with one accepted and one rejected. `upper`: the accepted
/// side is below (the highest count), else above (the lowest count). `floor` is rejected and
/// `ceil` accepted when `!upper` (the reverse when `upper`).
fn bracket(
    guess: u64,
    floor: u64,
    ceil: u64,
    accepts: &impl Fn(u64) -> bool,
    upper: bool,
) -> (u64, u64) {
    let accepted = accepts(guess);
    // Move towards the other verdict: down when (accepted, lowest) or (rejected, highest).
    let down = accepted != upper;
    let (mut near, mut step) = (guess, 1u64);
    loop {
        let next = if down {
            near.saturating_sub(step).max(floor)
        } else {
            near.saturating_add(step).min(ceil)
        };
        if next == near || accepts(next) != accepted {
            return if down { (next, near) } else { (near, next) };
        }
        near = next;
        step = step.saturating_mul(2);
    }
}

/// Bisects between `bad` (rejected) and `good` (accepted), in either order, to the accepted
/// count next to a rejected one.
fn boundary(mut bad: u64, mut good: u64, accepts: &impl Fn(u64) -> bool) -> u64 {
    while bad.abs_diff(good) > 1 {
        let mid = bad.min(good) + bad.abs_diff(good) / 2;
        if accepts(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    good
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
    ranks_of(n, count_bounds(n, q, alpha, quantile_prior(q)))
}

/// The ranks of [`quantile_ranks`] from the counts of [`count_bounds`].
pub fn ranks_of(n: u64, (lowest, highest): (u64, u64)) -> (Option<u64>, Option<u64>) {
    if n == 0 {
        return (None, None);
    }
    let lower = (lowest >= 1).then_some(lowest);
    let upper = (highest < n).then_some(highest + 1);
    (lower, upper)
}
