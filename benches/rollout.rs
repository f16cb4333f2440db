//! CONTROL PLANE: cost of one gate evaluation and of one controller tick (`Rollout::step`),
//! with the window method and with the sequential one (confidence sequences over summaries).
//!
//! `cargo bench --bench rollout -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::config::PoolId;
use switchyard::control::rollout::{
    evaluate, Baseline, GateLimits, Method, Observation, Plan, Rollout,
};
use switchyard::metrics::window::{Summary, WindowSnapshot};

fn limits() -> GateLimits {
    GateLimits {
        p99_max: Duration::from_millis(5),
        p99_ratio_max: 1.5,
        p99_min_delta: Duration::from_millis(1),
        p50_max_delta: Duration::from_millis(1),
        method: Method::Window,
        alpha: 0.01,
        error_rate_max: 0.01,
        error_rate_margin: 0.005,
        min_requests: 300,
        min_latency_samples: 1000,
        fail_windows: 2,
        consecutive_errors: 5,
        hash_violations_max: 1,
        tripwire_error_rate: 0.05,
        tripwire_min_requests: 20,
    }
}

fn snap(requests: u64, errors: u64, p99: Duration) -> WindowSnapshot {
    WindowSnapshot {
        requests,
        errors,
        violations: 0,
        p50: Some(p99 / 2),
        p99: Some(p99),
        p999: Some(p99 * 2),
        latency_samples: requests,
    }
}

fn observation() -> Observation {
    Observation {
        candidate: snap(15_000, 12, Duration::from_micros(2100)),
        stable: snap(135_000, 90, Duration::from_micros(1900)),
        candidate_consecutive_errors: 0,
        candidate_violations: 0,
        candidate_healthy: true,
        stable_healthy: true,
        ..Observation::default()
    }
}

/// A step's summaries: 15,000 candidate and 135,000 stable requests over 1-3 ms.
fn summaries(obs: &mut Observation) {
    let mut rng = fastrand::Rng::with_seed(1);
    for (s, n, errors) in [
        (&mut obs.candidate_step, 15_000u64, 12u64),
        (&mut obs.stable_step, 135_000, 90),
    ] {
        for i in 0..n {
            s.add(Duration::from_micros(rng.u64(1000..3000)), i < errors);
        }
    }
    obs.stable_rollout = obs.stable_step.clone();
}

fn gates(c: &mut Criterion) {
    let (limits, obs, baseline) = (limits(), observation(), Baseline::default());
    c.bench_function("rollout/evaluate_gates", |b| {
        b.iter(|| evaluate(&limits, black_box(&obs), PoolId::Green, 1000, &baseline))
    });
}

fn plan(method: Method) -> Plan {
    let mut gates = limits();
    gates.method = method;
    Plan {
        candidate: PoolId::Green,
        steps_bp: vec![1000, 5000, 10_000],
        hold: Duration::from_secs(3600),
        bake: Duration::from_secs(300),
        window: Duration::from_secs(30),
        max_hold: Duration::from_secs(7200),
        settle: Duration::from_secs(5),
        gates,
    }
}

fn step(c: &mut Criterion) {
    let Ok((mut rollout, _)) = Rollout::start(plan(Method::Window), Duration::ZERO) else {
        panic!("the bench plan is valid");
    };
    let obs = observation();
    let now = Duration::from_secs(60);
    c.bench_function("rollout/step", |b| {
        b.iter(|| rollout.step(black_box(now), black_box(&obs)))
    });
    let Ok((mut rollout, _)) = Rollout::start(plan(Method::Sequential), Duration::ZERO) else {
        panic!("the bench plan is valid");
    };
    let mut obs = observation();
    summaries(&mut obs);
    let _: &Summary = &obs.candidate_step;
    c.bench_function("rollout/step_sequential", |b| {
        b.iter(|| rollout.step(black_box(now), black_box(&obs)))
    });
}

criterion_group!(benches, gates, step);
criterion_main!(benches);
