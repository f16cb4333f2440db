//! CONTROL PLANE: query gates in the pure machine — verdicts on the values a Prometheus query
//! returned, handed in by the driver as [`QueryReading`]s (see `control::query`).
//!
//! A value out of `[min, max]` fails; an error, an empty result or a timeout is
//! inconclusive, never a pass. `fail_windows` failing evaluations in a row (each new
//! evaluation counted once, whatever the tick) roll back; an inconclusive one breaks the row.
//! A step completes only when every query gate passed on an answer given after the step's
//! samples start (its weight change plus settle).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gates::{Gate, Observation, Trip, Verdict};
use super::Rollout;

/// A query gate's bounds, fixed when the rollout starts (persisted with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryBound {
    pub name: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub fail_windows: u32,
}

/// The driver's latest evaluation of one query gate.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryReading {
    /// Counts the evaluations: a streak grows once per evaluation.
    pub n: u64,
    /// When the answer came, on the machine's clock.
    pub at: Duration,
    /// The value, or why there is none (an error, an empty result, a timeout).
    pub value: Result<f64, String>,
}

/// One query gate's last verdict, for `ctl gates`, `rollout status` and the watch events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryReport {
    pub name: String,
    pub value: Option<f64>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub verdict: Verdict,
    pub fail_streak: u32,
    /// Evaluations so far in this rollout.
    pub evaluations: u64,
    pub detail: String,
}

/// What the machine carries from tick to tick per query gate.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct QueryTrack {
    last_n: u64,
    pub(super) streak: u32,
}

/// The reports of every query gate, and the first one at its failure limit.
pub(super) fn judge(
    bounds: &[QueryBound],
    tracks: &mut Vec<QueryTrack>,
    readings: &[Option<QueryReading>],
    samples_from: Duration,
) -> (Vec<QueryReport>, Option<Trip>) {
    tracks.resize(bounds.len(), QueryTrack::default());
    let mut trip = None;
    let mut reports = Vec::with_capacity(bounds.len());
    for (i, (b, track)) in bounds.iter().zip(tracks.iter_mut()).enumerate() {
        let reading = readings.get(i).and_then(Option::as_ref);
        let (value, verdict, detail) = match reading.map(|r| &r.value) {
            None => (None, Verdict::Inconclusive, "not answered yet".to_string()),
            Some(Err(why)) => (None, Verdict::Inconclusive, why.clone()),
            Some(Ok(v)) if v.is_nan() => (None, Verdict::Inconclusive, "NaN".to_string()),
            Some(Ok(v)) => match out_of_bounds(b, *v) {
                Some(why) => (Some(*v), Verdict::Fail, why),
                None => (
                    Some(*v),
                    Verdict::Pass,
                    format!("{v} within {}", bounds_text(b)),
                ),
            },
        };
        if let Some(r) = reading.filter(|r| r.n != track.last_n) {
            track.last_n = r.n;
            track.streak = if verdict == Verdict::Fail {
                track.streak.saturating_add(1)
            } else {
                0
            };
        }
        if verdict == Verdict::Fail && track.streak >= b.fail_windows && trip.is_none() {
            trip = Some(Trip {
                gate: Gate::Query,
                reason: format!(
                    "query gate {:?}: {detail} ({} evaluations in a row)",
                    b.name, track.streak
                ),
            });
        }
        // A pass from before the step's samples start says nothing about this step.
        let verdict = match (verdict, reading) {
            (Verdict::Pass, Some(r)) if r.at < samples_from => Verdict::Inconclusive,
            (v, _) => v,
        };
        reports.push(QueryReport {
            name: b.name.clone(),
            value,
            max: b.max,
            min: b.min,
            verdict,
            fail_streak: track.streak,
            evaluations: reading.map_or(0, |r| r.n),
            detail,
        });
    }
    (reports, trip)
}

impl Rollout {
    /// The query gates this rollout judges; set before [`Rollout::begin`].
    pub fn with_queries(mut self, queries: Vec<QueryBound>) -> Rollout {
        self.queries = queries;
        self
    }

    /// The query gates' bounds, in the order of `Observation::queries`.
    pub fn queries(&self) -> &[QueryBound] {
        &self.queries
    }

    /// The query gates' verdicts as of the last `step`.
    pub fn query_reports(&self) -> &[QueryReport] {
        &self.query_reports
    }

    /// Judges the query gates on `obs.queries`: the first one at its failure limit.
    pub(super) fn judge_queries(&mut self, obs: &Observation) -> Option<Trip> {
        if self.queries.is_empty() {
            return None;
        }
        let (reports, trip) = judge(
            &self.queries,
            &mut self.query_tracks,
            &obs.queries,
            self.samples_from,
        );
        self.query_reports = reports;
        trip
    }
}

fn out_of_bounds(b: &QueryBound, v: f64) -> Option<String> {
    if let Some(max) = b.max.filter(|&max| v > max) {
        return Some(format!("{v} > max {max}"));
    }
    b.min
        .filter(|&min| v < min)
        .map(|min| format!("{v} < min {min}"))
}

fn bounds_text(b: &QueryBound) -> String {
    match (b.min, b.max) {
        (Some(min), Some(max)) => format!("[{min}, {max}]"),
        (Some(min), None) => format!(">= {min}"),
        (None, Some(max)) => format!("<= {max}"),
        (None, None) => "no bounds".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> QueryBound {
        QueryBound {
            name: "errors".into(),
            max: Some(0.05),
            min: None,
            fail_windows: 2,
        }
    }

    fn reading(n: u64, at: u64, value: Result<f64, String>) -> Option<QueryReading> {
        Some(QueryReading {
            n,
            at: Duration::from_secs(at),
            value,
        })
    }

    #[test]
    fn a_value_over_max_trips_after_fail_windows_new_evaluations() {
        let (b, mut t) = (vec![bound()], Vec::new());
        let from = Duration::ZERO;
        let r1 = [reading(1, 1, Ok(0.5))];
        let (reports, trip) = judge(&b, &mut t, &r1, from);
        assert_eq!((reports[0].verdict, trip), (Verdict::Fail, None));
        // The same evaluation seen on the next tick is not counted again.
        assert_eq!(judge(&b, &mut t, &r1, from).1, None);
        let (_, trip) = judge(&b, &mut t, &[reading(2, 2, Ok(0.5))], from);
        let trip = trip.expect("two failing evaluations in a row");
        assert_eq!(trip.gate, Gate::Query);
        assert!(trip.reason.contains("\"errors\"") && trip.reason.contains("0.5 > max 0.05"));
    }

    #[test]
    fn errors_and_empty_results_are_inconclusive_and_break_the_row() {
        let (b, mut t) = (vec![bound()], Vec::new());
        let from = Duration::ZERO;
        judge(&b, &mut t, &[reading(1, 1, Ok(0.5))], from);
        let (reports, trip) = judge(&b, &mut t, &[reading(2, 2, Err("empty".into()))], from);
        assert_eq!((reports[0].verdict, trip), (Verdict::Inconclusive, None));
        let (_, trip) = judge(&b, &mut t, &[reading(3, 3, Ok(0.5))], from);
        assert_eq!(trip, None);
        let (reports, _) = judge(&b, &mut t, &[None], from);
        assert_eq!(reports[0].verdict, Verdict::Inconclusive);
    }

    #[test]
    fn a_pass_counts_only_after_the_step_samples_start() {
        let (b, mut t) = (vec![bound()], Vec::new());
        let (reports, _) = judge(
            &b,
            &mut t,
            &[reading(1, 4, Ok(0.01))],
            Duration::from_secs(5),
        );
        assert_eq!(reports[0].verdict, Verdict::Inconclusive);
        let (reports, _) = judge(
            &b,
            &mut t,
            &[reading(2, 6, Ok(0.01))],
            Duration::from_secs(5),
        );
        assert_eq!(reports[0].verdict, Verdict::Pass);
    }
}
