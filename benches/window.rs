//! METRICS/DATA PLANE: cost of recording one request into the live statistics, and of the
//! controller's per-tick window merge.
//!
//! `cargo bench --bench window -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::config::PoolId;
use switchyard::metrics::window::{LiveStats, Outcome, Summary};

fn stats() -> LiveStats {
    LiveStats::new(Duration::from_secs(1), Duration::from_secs(30))
}

fn record(c: &mut Criterion) {
    let s = stats();
    let latency = Duration::from_micros(1234);
    c.bench_function("window/record_at", |b| {
        b.iter(|| {
            s.record_at(
                black_box(5_000),
                PoolId::Green,
                black_box(latency),
                Outcome::Success,
            )
        })
    });
    c.bench_function("window/record_at_error", |b| {
        b.iter(|| {
            s.record_at(
                black_box(5_000),
                PoolId::Green,
                black_box(latency),
                Outcome::Error,
            )
        })
    });
    // The request path's form: one clock read gives both the bucket and the latency.
    let start = Instant::now();
    c.bench_function("window/record_from", |b| {
        b.iter(|| s.record_from(black_box(start), PoolId::Green, Outcome::Success))
    });
    // Another thread records into the same pool meanwhile, so cache lines move between cores.
    let shared = Arc::new(stats());
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                shared.record(PoolId::Green, latency, Outcome::Success);
            }
        })
    };
    c.bench_function("window/record_contended", |b| {
        b.iter(|| shared.record(PoolId::Green, black_box(latency), Outcome::Success))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
}

fn merge(c: &mut Criterion) {
    let s = stats();
    let mut rng = fastrand::Rng::with_seed(1);
    for ms in (0..30_000).step_by(2) {
        let latency = Duration::from_micros(rng.u64(200..20_000));
        s.record_at(ms, PoolId::Green, latency, Outcome::Success);
    }
    c.bench_function("window/merge_30s", |b| {
        b.iter(|| s.window_at(black_box(29_999), PoolId::Green, Duration::from_secs(30)))
    });
}

/// The controller's per-tick work for the sequential gates: one completed bucket merged
/// into a step's summary.
fn summary(c: &mut Criterion) {
    let s = stats();
    let mut rng = fastrand::Rng::with_seed(1);
    for ms in (0..30_000).step_by(2) {
        let latency = Duration::from_micros(rng.u64(200..20_000));
        s.record_at(ms, PoolId::Green, latency, Outcome::Success);
    }
    let mut step = Summary::default();
    c.bench_function("window/summary_merge_bucket", |b| {
        b.iter(|| step.merge(&s.summary(PoolId::Green, black_box(28), 28)))
    });
}

criterion_group!(benches, record, merge, summary);
criterion_main!(benches);
