use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::*;
use crate::config::PoolId::{Blue, Green};

const MS: Duration = Duration::from_millis(1);

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn stats() -> LiveStats {
    LiveStats::new(Duration::from_secs(1), Duration::from_secs(30))
}

fn within(actual: Option<Duration>, expected_us: u64, tolerance: f64) {
    let actual = actual.expect("a percentile").as_micros() as f64;
    let expected = expected_us as f64;
    assert!(
        (actual - expected).abs() <= expected * tolerance,
        "{actual} µs is not {expected} µs ± {tolerance}"
    );
}

#[test]
fn bins_are_monotonic_and_precise() {
    assert_eq!(bin_of(MAX_US), BINS - 1);
    assert_eq!(bin_of(u64::MAX), BINS - 1);
    let mut last = 0;
    for v in (0..200_000).chain((200_000..MAX_US).step_by(997)) {
        let bin = bin_of(v);
        assert!(bin >= last, "bin of {v} went backwards");
        last = bin;
        let mid = bin_value(bin) as f64;
        assert!(
            (mid - v as f64).abs() <= (v as f64) / 128.0 + 0.5,
            "{v} µs reported as {mid}"
        );
    }
}

#[test]
fn counts_and_percentiles_of_known_inputs() {
    let s = stats();
    for v in 1..=1000 {
        let outcome = match v % 100 {
            0 => Outcome::HashViolation,
            1..=4 => Outcome::Error,
            _ => Outcome::Success,
        };
        s.record_at(500, Green, us(v), outcome);
    }
    s.record_at(500, Blue, us(7), Outcome::Success);
    let w = s.window_at(900, Green, Duration::from_secs(30));
    assert_eq!(
        (w.requests, w.errors, w.violations, w.latency_samples),
        (1000, 50, 10, 1000)
    );
    assert_eq!(w.error_rate(), Some(0.05));
    within(w.p50, 500, 0.01);
    within(w.p99, 990, 0.01);
    within(w.p999, 999, 0.01);
    let b = s.window_at(900, Blue, Duration::from_secs(30));
    assert_eq!((b.requests, b.errors, b.p99), (1, 0, Some(us(7))));
}

#[test]
fn percentiles_agree_with_hdrhistogram() {
    let s = stats();
    let mut hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, MAX_US, 3).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..50_000 {
        // Log-uniform from 10 µs to 100 ms.
        let v = 10f64.powf(1.0 + 4.0 * rng.f64()) as u64;
        s.record_at(0, Green, us(v), Outcome::Success);
        hdr.record(v).unwrap();
    }
    let w = s.window_at(0, Green, Duration::from_secs(1));
    within(w.p50, hdr.value_at_quantile(0.5), 0.01);
    within(w.p99, hdr.value_at_quantile(0.99), 0.01);
    within(w.p999, hdr.value_at_quantile(0.999), 0.01);
}

#[test]
fn empty_window_has_no_rate_or_percentiles() {
    let w = stats().window_at(10_000, Green, Duration::from_secs(30));
    assert_eq!(w, WindowSnapshot::default());
    assert_eq!(w.error_rate(), None);
}

#[test]
fn old_buckets_leave_the_window() {
    let s = stats();
    s.record_at(0, Green, MS, Outcome::Error);
    s.record_at(15_000, Green, MS, Outcome::Success);
    let window = Duration::from_secs(30);
    assert_eq!(s.window_at(29_999, Green, window).requests, 2);
    assert_eq!(s.window_at(30_000, Green, window).requests, 1);
    assert_eq!(s.window_at(30_000, Green, window).errors, 0);
    assert_eq!(s.window_at(45_000, Green, window).requests, 0);
    assert_eq!(
        s.window_at(15_500, Green, Duration::from_secs(1)).requests,
        1
    );
}

#[test]
fn a_reused_slot_forgets_its_old_epoch_and_ancient_samples_are_dropped() {
    let s = stats();
    let ring = (s.mask + 1) * 1000;
    s.record_at(1_000, Green, MS, Outcome::HashViolation);
    s.record_at(1_000 + ring, Green, MS, Outcome::Success);
    let w = s.window_at(1_000 + ring, Green, Duration::from_secs(30));
    assert_eq!((w.requests, w.errors, w.violations), (1, 0, 0));
    // A thread that stalled for the whole ring: its sample has no window left to land in.
    s.record_at(1_000, Green, MS, Outcome::Success);
    assert_eq!(
        s.window_at(1_000 + ring, Green, Duration::from_secs(30))
            .requests,
        1
    );
    assert_eq!(s.violations_total(Green), 1);
}

#[test]
fn since_excludes_earlier_samples() {
    let s = stats();
    s.record_at(1_000, Green, us(100), Outcome::Error);
    s.record_at(2_000, Green, us(200), Outcome::Success);
    s.record_at(2_600, Green, us(300), Outcome::Success);
    s.record_at(3_100, Green, us(400), Outcome::Success);
    let since = s.since_at(5_000, 2_000, Green);
    assert_eq!((since.requests, since.errors), (3, 0));
    within(since.p50, 300, 0.01);
    // Mid-bucket: the whole bucket holding `since` is left out.
    assert_eq!(s.since_at(5_000, 2_500, Green).requests, 1);
    // A 4 s window at 5.0 s spans buckets 2..=5 (the current one is partial).
    assert_eq!(
        s.window_since_at(5_000, Green, Duration::from_secs(4), 0)
            .requests,
        3
    );
    assert_eq!(
        s.window_since_at(5_000, Green, Duration::from_secs(30), 3_000)
            .requests,
        1
    );
}

#[test]
fn concurrent_recording_across_bucket_boundaries_loses_nothing() {
    let s = Arc::new(LiveStats::new(MS, Duration::from_secs(1)));
    let per_thread = 200_000u64;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    // Every thread walks the same 1000 buckets, so they race on every reset.
                    let outcome = if (i + t) % 10 == 0 {
                        Outcome::Error
                    } else {
                        Outcome::Success
                    };
                    s.record_at(i / 200, Green, us(i % 5000), outcome);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let w = s.window_at(999, Green, Duration::from_secs(1));
    assert_eq!(w.requests, 4 * per_thread);
    assert_eq!(w.errors, 4 * per_thread / 10);
}

#[test]
fn consecutive_errors_reset_on_success() {
    let s = stats();
    for _ in 0..3 {
        s.record_at(0, Green, MS, Outcome::Error);
    }
    s.record_at(0, Green, MS, Outcome::HashViolation);
    assert_eq!(
        (s.consecutive_errors(Green), s.consecutive_errors(Blue)),
        (4, 0)
    );
    s.record_at(0, Green, MS, Outcome::Success);
    assert_eq!(s.consecutive_errors(Green), 0);
    assert_eq!(s.violations_total(Green), 1);
}

#[test]
fn tripwire_fires_only_for_the_watched_pool() {
    let s = stats();
    s.watch(Some(Green), 3);
    s.record_at(0, Blue, MS, Outcome::HashViolation);
    s.record_at(0, Green, MS, Outcome::Error);
    s.record_at(0, Green, MS, Outcome::Error);
    assert!(s.tripwire().notified().now_or_never().is_none());
    s.record_at(0, Green, MS, Outcome::Error);
    assert!(s.tripwire().notified().now_or_never().is_some());
    s.record_at(0, Green, MS, Outcome::HashViolation);
    assert!(s.tripwire().notified().now_or_never().is_some());
    s.watch(None, 3);
    s.record_at(0, Green, MS, Outcome::HashViolation);
    assert!(s.tripwire().notified().now_or_never().is_none());
}

#[test]
fn record_reads_the_clock() {
    let s = stats();
    s.record(Green, MS, Outcome::Success);
    s.record_from(Instant::now(), Green, Outcome::Success);
    assert_eq!(s.window(Green).requests, 2);
}

#[test]
fn summaries_of_adjacent_spans_merge_into_the_whole_span() {
    let s = LiveStats::new(Duration::from_secs(1), Duration::from_secs(30));
    for ms in (0..10_000u64).step_by(7) {
        let outcome = if ms % 100 == 0 {
            Outcome::Error
        } else {
            Outcome::Success
        };
        s.record_at(
            ms,
            PoolId::Green,
            Duration::from_micros(100 + ms % 5000),
            outcome,
        );
    }
    let whole = s.summary(PoolId::Green, 0, 9);
    let mut parts = s.summary(PoolId::Green, 0, 3);
    parts.merge(&s.summary(PoolId::Green, 4, 9));
    assert_eq!(parts, whole);
    assert_eq!(
        whole.snapshot(),
        s.window_at(9_999, PoolId::Green, Duration::from_secs(10))
    );
    assert_eq!(whole.requests, (0..10_000u64).step_by(7).count() as u64);
    assert_eq!(whole.to_histogram().len(), whole.requests);
    // Order statistics bracket the recorded values: the smallest is 100 µs.
    let (low, high) = whole.order_statistic(1).unwrap();
    assert!(low <= 100 && high >= 100, "{low}..{high}");
    assert_eq!(whole.order_statistic(whole.requests + 1), None);
}
