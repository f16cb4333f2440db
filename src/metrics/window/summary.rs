//! A pool's samples over any span, as plain counts and latency bins: what the sequential gates
//! accumulate over a step and what an instance can hand to another to merge.
//!
//! The bins are the ring's own layout (HdrHistogram's log-linear buckets with 7 sub-bucket bits
//! over microseconds, see the module above), so merging is adding counts bin by bin and a
//! summary converts losslessly to an `hdrhistogram::Histogram` ([`Summary::to_histogram`]).

use std::time::Duration;

use super::{bin_lower, bin_upper, bin_value, quantile, WindowSnapshot, BINS};

/// Counts and latency bins of one pool; the default is empty. `requests` equals the sum of
/// the bins (every request records its latency).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub violations: u64,
    /// Empty, or exactly [`Summary::BINS`] counts.
    bins: Vec<u64>,
}

impl Summary {
    /// Latency bins of a non-empty summary.
    pub const BINS: usize = BINS;

    /// One request of `latency`, an error or not: for tests and the simulator.
    pub fn add(&mut self, latency: Duration, error: bool) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.add_n(super::bin_of(us), 1, u64::from(error));
    }

    /// `n` requests in latency bin `bin` (see [`Summary::bin_of`]), `errors` of them errors.
    pub fn add_n(&mut self, bin: usize, n: u64, errors: u64) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS];
        }
        let bin = bin.min(BINS - 1);
        self.bins[bin] += n;
        self.requests += n;
        self.errors += errors;
    }

    /// Adds errors that are not tied to a latency bin (the latency was recorded already).
    pub fn add_errors(&mut self, errors: u64, violations: u64) {
        self.errors += errors;
        self.violations += violations;
    }

    /// Takes back `n` requests of bin `bin` added before (a sliding window's oldest part).
    pub fn remove_n(&mut self, bin: usize, n: u64) {
        if let Some(count) = self.bins.get_mut(bin) {
            let n = n.min(*count);
            *count -= n;
            self.requests = self.requests.saturating_sub(n);
        }
    }

    /// Takes back errors added before.
    pub fn remove_errors(&mut self, errors: u64) {
        self.errors = self.errors.saturating_sub(errors);
    }

    /// The bin a latency in microseconds falls in.
    pub fn bin_of(us: u64) -> usize {
        super::bin_of(us)
    }

    /// Adds `other`'s samples to these.
    pub fn merge(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.violations += other.violations;
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.bins.clone_from(&other.bins);
            return;
        }
        for (dst, src) in self.bins.iter_mut().zip(&other.bins) {
            *dst += src;
        }
    }

    pub(super) fn from_bins(bins: Vec<u64>, errors: u64, violations: u64) -> Summary {
        debug_assert_eq!(bins.len(), BINS);
        Summary {
            requests: bins.iter().sum(),
            errors,
            violations,
            bins,
        }
    }

    /// Latency counts per bin (empty if nothing was recorded).
    pub fn bins(&self) -> &[u64] {
        &self.bins
    }

    /// The point figures of a [`WindowSnapshot`].
    pub fn snapshot(&self) -> WindowSnapshot {
        let total = self.requests;
        WindowSnapshot {
            requests: total,
            errors: self.errors,
            violations: self.violations,
            p50: quantile(&self.bins, total, 0.50),
            p99: quantile(&self.bins, total, 0.99),
            p999: quantile(&self.bins, total, 0.999),
            latency_samples: total,
        }
    }

    /// The `rank`-th smallest latency (1-based) as its bin's lowest and highest value, in
    /// microseconds; `None` if `rank` is 0 or beyond the samples.
    pub fn order_statistic(&self, rank: u64) -> Option<(u64, u64)> {
        if rank == 0 || rank > self.requests {
            return None;
        }
        let mut seen = 0;
        let bin = self.bins.iter().position(|&n| {
            seen += n;
            seen >= rank
        })?;
        Some((bin_lower(bin), bin_upper(bin)))
    }

    /// [`Summary::order_statistic`] of several ranks in one pass over the bins.
    pub fn order_statistics<const N: usize>(&self, ranks: [u64; N]) -> [Option<(u64, u64)>; N] {
        let mut out = [None; N];
        let mut left = ranks
            .iter()
            .filter(|&&r| r != 0 && r <= self.requests)
            .count();
        let mut seen = 0;
        for (bin, &n) in self.bins.iter().enumerate() {
            if left == 0 {
                break;
            }
            if n == 0 {
                continue;
            }
            seen += n;
            for (slot, &rank) in out.iter_mut().zip(&ranks) {
                if slot.is_none() && rank != 0 && rank <= seen && rank <= self.requests {
                    *slot = Some((bin_lower(bin), bin_upper(bin)));
                    left -= 1;
                }
            }
        }
        out
    }

    /// What `self` holds beyond `older`, an earlier state of the same running total; counts
    /// that went down (a total that started again) are taken as zero.
    pub fn since(&self, older: &Summary) -> Summary {
        let mut bins = vec![0u64; BINS];
        if !self.bins.is_empty() {
            for (bin, dst) in bins.iter_mut().enumerate() {
                let old = older.bins.get(bin).copied().unwrap_or(0);
                *dst = self.bins[bin].saturating_sub(old);
            }
        }
        Summary::from_bins(
            bins,
            self.errors.saturating_sub(older.errors),
            self.violations.saturating_sub(older.violations),
        )
    }

    /// Counts and an HdrHistogram made by [`Summary::to_histogram`] (or any histogram of
    /// microseconds) back into a summary: each recorded value goes to the bin it falls in.
    pub fn from_histogram(
        h: &hdrhistogram::Histogram<u64>,
        errors: u64,
        violations: u64,
    ) -> Summary {
        let mut bins = vec![0u64; BINS];
        for v in h.iter_recorded() {
            let us = h.lowest_equivalent(v.value_iterated_to());
            bins[super::bin_of(us)] += v.count_at_value();
        }
        Summary::from_bins(bins, errors, violations)
    }

    /// The summary's latencies as an HdrHistogram (each bin's count at its midpoint).
    pub fn to_histogram(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::new_with_bounds(1, 1 << 27, 3)
            .expect("fixed bounds and precision are valid");
        for (bin, &n) in self.bins.iter().enumerate().filter(|(_, &n)| n > 0) {
            h.record_n(bin_value(bin).max(1), n)
                .expect("bin values are within the histogram's bounds");
        }
        h
    }
}
