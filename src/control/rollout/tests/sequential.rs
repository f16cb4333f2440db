//! The sequential method: its bounds cover the truth at their stated rate on synthetic data
//! (looked at after every batch, as the gates are), and its decisions depend on the samples
//! only.

use super::*;
use crate::control::rollout::sequential::{
    bernoulli_bounds, count_bounds, count_bounds_near, excess_evidence, ln_gamma, quantile_prior,
    quantile_ranks, ERROR_PRIOR,
};
use crate::metrics::window::Summary;

const ALPHA: f64 = 0.05;

/// At most the stated rate, plus three standard deviations of the count over `runs`.
fn allowed(runs: u32) -> u32 {
    let (n, p) = (f64::from(runs), ALPHA);
    (n * p + 3.0 * (n * p * (1.0 - p)).sqrt()).ceil() as u32
}

#[test]
fn ln_gamma_matches_factorials() {
    let mut factorial = 1.0f64;
    for n in 1..30u32 {
        // Γ(n + 1) = n!
        factorial *= f64::from(n);
        assert!(
            (ln_gamma(f64::from(n) + 1.0) - factorial.ln()).abs() < 1e-9,
            "{n}"
        );
    }
    assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
}

#[test]
fn rate_bounds_cover_the_true_rate_at_every_look() {
    for (p, seed) in [(0.001, 1), (0.02, 2), (0.3, 3)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let runs = 200;
        let mut missed = 0;
        for _ in 0..runs {
            let (mut k, mut n) = (0u64, 0u64);
            let mut miss = false;
            for _ in 0..100 {
                for _ in 0..50 {
                    n += 1;
                    k += u64::from(rng.f64() < p);
                }
                let (lo, hi) = bernoulli_bounds(k, n, ALPHA, ERROR_PRIOR);
                miss |= p < lo || p > hi;
            }
            missed += u32::from(miss);
        }
        assert!(missed <= allowed(runs), "p {p}: {missed} of {runs} missed");
    }
}

#[test]
fn quantile_bounds_cover_the_true_quantile_at_every_look() {
    // Uniform on 0..10 ms: the q-quantile is q * 10 ms.
    for (q, seed) in [(0.5, 4), (0.99, 5)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let truth = (q * 10_000.0) as u64;
        let runs = 200;
        let mut missed = 0;
        for _ in 0..runs {
            let mut s = Summary::default();
            let mut miss = false;
            for _ in 0..60 {
                for _ in 0..50 {
                    s.add(Duration::from_micros(rng.u64(0..10_000)), false);
                }
                let (lo, hi) = quantile_ranks(s.requests, q, ALPHA);
                let lower = lo.and_then(|r| s.order_statistic(r)).map_or(0, |b| b.0);
                let upper = hi
                    .and_then(|r| s.order_statistic(r))
                    .map_or(u64::MAX, |b| b.1);
                miss |= truth < lower || truth > upper;
            }
            missed += u32::from(miss);
        }
        assert!(missed <= allowed(runs), "q {q}: {missed} of {runs} missed");
    }
}

#[test]
fn quantile_bounds_narrow_with_samples() {
    let mut s = Summary::default();
    for i in 0..10_000u64 {
        s.add(Duration::from_micros(i % 1000), false);
    }
    let (lo, hi) = quantile_ranks(s.requests, 0.5, 0.001);
    let (lo, hi) = (lo.unwrap(), hi.unwrap());
    assert!(
        lo > 4500 && hi < 5500 && lo < 5000 && hi > 5000,
        "{lo}..{hi}"
    );
}

/// The error comparison's bound, `lower(c) - upper(s)` to `upper(c) - lower(s)`, each rate's
/// sequence at `ALPHA / 2`: it covers the true difference at every look in at least
/// `1 - ALPHA` of the runs (10% of the traffic on the candidate, as at the first step).
#[test]
fn difference_bounds_cover_the_true_difference_at_every_look() {
    for (pc, ps, seed) in [(0.001, 0.001, 11), (0.021, 0.001, 12), (0.05, 0.03, 13)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let runs = 200;
        let mut missed = 0;
        for _ in 0..runs {
            let (mut kc, mut nc, mut ks, mut ns) = (0u64, 0u64, 0u64, 0u64);
            let mut miss = false;
            for _ in 0..60 {
                for _ in 0..10 {
                    nc += 1;
                    kc += u64::from(rng.f64() < pc);
                }
                for _ in 0..90 {
                    ns += 1;
                    ks += u64::from(rng.f64() < ps);
                }
                let (cl, cu) = bernoulli_bounds(kc, nc, ALPHA / 2.0, ERROR_PRIOR);
                let (sl, su) = bernoulli_bounds(ks, ns, ALPHA / 2.0, ERROR_PRIOR);
                let truth = pc - ps;
                miss |= truth < cl - su || truth > cu - sl;
            }
            missed += u32::from(miss);
        }
        assert!(
            missed <= allowed(runs),
            "{pc} - {ps}: {missed} of {runs} missed"
        );
    }
}

/// The test of "the candidate errs more than stable plus the margin": at the edge of its null
/// (a difference of exactly the margin, the hardest case) it reaches `ln(1 / ALPHA)` at some
/// look in at most `ALPHA` of the runs; a +2-point candidate at 10 requests/s reaches it within
/// two minutes in most runs; and its value depends on the totals only, not on the ticks.
#[test]
fn excess_evidence_keeps_its_rate_at_the_margin_and_finds_a_real_excess() {
    let margin = 0.0025;
    let needed = (1.0 / ALPHA).ln();
    let run = |pc: f64, ps: f64, rng: &mut fastrand::Rng| {
        let (mut kc, mut nc, mut ks, mut ns) = (0u64, 0u64, 0u64, 0u64);
        for second in 1..=120u32 {
            for _ in 0..10 {
                nc += 1;
                kc += u64::from(rng.f64() < pc);
            }
            for _ in 0..90 {
                ns += 1;
                ks += u64::from(rng.f64() < ps);
            }
            if excess_evidence(kc, nc, ks, ns, margin, ERROR_PRIOR) >= needed {
                return Some(second);
            }
        }
        None
    };
    for (ps, seed) in [(0.001, 21), (0.01, 22), (0.0, 23)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let runs = 200;
        let alarms = (0..runs)
            .filter(|_| run(ps + margin, ps, &mut rng).is_some())
            .count() as u32;
        assert!(
            alarms <= allowed(runs),
            "at the margin over {ps}: {alarms} of {runs} alarms"
        );
    }
    let mut rng = fastrand::Rng::with_seed(24);
    let caught = (0..100)
        .filter(|_| run(0.021, 0.001, &mut rng).is_some())
        .count();
    assert!(caught >= 80, "+2 points caught in {caught} of 100 runs");
    // No errors, or no excess at all: no evidence.
    assert_eq!(excess_evidence(0, 500, 3, 4500, margin, ERROR_PRIOR), 0.0);
    assert!(excess_evidence(1, 500, 9, 4500, margin, ERROR_PRIOR) < 1.0);
    // Without stable's samples, stable's rate could be anything: no evidence either.
    assert!(excess_evidence(30, 500, 0, 0, margin, ERROR_PRIOR) <= 0.0);
    assert!(excess_evidence(30, 500, 0, 4500, margin, ERROR_PRIOR) >= needed);
}

#[test]
fn the_count_search_lands_on_the_same_counts_from_any_guess() {
    for (n, q) in [
        (1, 0.5),
        (7, 0.99),
        (300, 0.99),
        (4000, 0.5),
        (123_457, 0.99),
    ] {
        let prior = quantile_prior(q);
        let scratch = count_bounds(n, q, 0.001, prior);
        for guess in [
            (0, 0),
            (0, n),
            (n, n),
            (n / 2, n / 2),
            (scratch.0 + 3, scratch.1 - scratch.1.min(3)),
        ] {
            assert_eq!(
                count_bounds_near(n, q, 0.001, prior, Some(guess)),
                scratch,
                "n {n}, q {q}, guess {guess:?}"
            );
        }
    }
}

fn sequential_plan() -> Plan {
    let mut p = plan();
    p.gates.method = Method::Sequential;
    p.gates.min_latency_samples = 300;
    p
}

/// `n` requests around `median_us` (spread ±20%) with `errors` errors.
fn summary(n: u64, median_us: u64, errors: u64) -> Summary {
    let mut s = Summary::default();
    for i in 0..n {
        let us = median_us * 8 / 10 + (i * 7919 % 1000) * median_us * 4 / 10 / 1000;
        s.add(Duration::from_micros(us), i < errors);
    }
    s
}

fn seq_obs(c: Summary, s: Summary) -> Observation {
    Observation {
        candidate: c.snapshot(),
        stable: s.snapshot(),
        candidate_healthy: true,
        stable_healthy: true,
        stable_step: s.clone(),
        stable_rollout: s,
        candidate_step: c,
        ..Observation::default()
    }
}

#[test]
fn a_slower_candidate_is_rolled_back_by_the_median_gate_with_its_evidence() {
    let (mut r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
    let o = seq_obs(summary(400, 4000, 0), summary(3600, 1000, 0));
    let d = r.step(secs(10), &o);
    let Decision::Rollback { gate, reason } = d else {
        panic!("{d:?}");
    };
    assert_eq!(gate, Gate::P50Relative);
    assert!(
        reason.contains("bounds") && reason.contains("limit +1.00ms"),
        "{reason}"
    );
}

#[test]
fn a_healthy_candidate_passes_its_step_after_the_hold() {
    let (mut r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
    let o = seq_obs(summary(400, 1000, 0), summary(3600, 1000, 3));
    assert_eq!(
        r.step(secs(30), &o),
        Decision::None,
        "the hold has not passed"
    );
    assert_eq!(
        r.step(secs(60), &o),
        Decision::SetWeight { candidate_bp: 5000 }
    );
    let p50 = r
        .gates()
        .iter()
        .find(|g| g.gate == Gate::P50Relative)
        .unwrap();
    assert_eq!(p50.verdict, Verdict::Pass);
    assert!(p50.lower.is_some() && p50.upper.is_some(), "{p50:?}");
}

#[test]
fn too_few_samples_pause_at_max_hold_instead_of_passing() {
    let (mut r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
    let o = seq_obs(summary(100, 1000, 0), summary(900, 1000, 0));
    assert_eq!(r.step(secs(60), &o), Decision::None);
    assert_eq!(
        r.step(secs(600), &o),
        Decision::Pause {
            reason: PauseReason::InsufficientData
        }
    );
}

#[test]
fn the_same_samples_give_the_same_decisions() {
    let ticks: Vec<Observation> = (1..=90u64)
        .map(|t| {
            seq_obs(
                summary(10 * t, 1000 + t * 40, t / 10),
                summary(90 * t, 1000, t / 30),
            )
        })
        .collect();
    let run = || {
        let (mut r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
        let decisions: Vec<Decision> = ticks
            .iter()
            .enumerate()
            .map(|(i, o)| r.step(secs(i as u64 + 1), o))
            .collect();
        (decisions, r.gates().to_vec(), r.phase().clone())
    };
    assert_eq!(run(), run());
}

/// The bounds carried from tick to tick only save work: a rollout whose cache is dropped
/// before every tick (as a restored one's is) decides the same.
#[test]
fn the_bounds_carried_between_ticks_change_no_decision() {
    let ticks: Vec<Observation> = (1..=120u64)
        .map(|t| {
            seq_obs(
                summary(10 * t, 1000 + t * 30, t / 8),
                summary(90 * t + 3000, 1000, t / 30),
            )
        })
        .collect();
    let run = |fresh: bool| {
        let (mut r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
        let mut decisions = Vec::new();
        for (i, o) in ticks.iter().enumerate() {
            if r.is_terminal() {
                break;
            }
            if fresh {
                r = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
            }
            let d = r.step(secs(i as u64 + 1), o);
            decisions.push((d, r.gates().to_vec()));
        }
        (decisions, r.phase().clone())
    };
    assert_eq!(run(true), run(false));
    // Terse reports (the simulator's) decide the same, with the same reasons.
    let (r, _) = Rollout::start(sequential_plan(), secs(0)).unwrap();
    let mut r = r.terse();
    let mut terse = Vec::new();
    for (i, o) in ticks.iter().enumerate() {
        if r.is_terminal() {
            break;
        }
        terse.push(r.step(secs(i as u64 + 1), o));
    }
    let full: Vec<Decision> = run(false).0.into_iter().map(|(d, _)| d).collect();
    assert_eq!(terse, full);
}
