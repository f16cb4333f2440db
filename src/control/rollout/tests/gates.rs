//! The gates, each driven through the machine: what trips at once, what needs
//! `fail_windows`, and what pauses instead of flipping.

use super::*;

#[test]
fn error_gate_rolls_back_after_fail_windows_in_a_row() {
    let mut r = started();
    // 3% errors: over the 1% ceiling, but under the tripwire's confidence bound.
    let bad = obs(snap(1000, 30, 2.0), snap(20_000, 10, 2.0));
    assert_eq!(r.step(secs(10), &bad), Decision::None);
    let report = r
        .gates()
        .iter()
        .find(|g| g.gate == Gate::ErrorRate)
        .unwrap();
    assert_eq!(
        (report.verdict, report.fail_streak, report.pool),
        (Verdict::Fail, 1, Green)
    );
    assert_eq!(
        r.step(secs(11), &healthy()),
        Decision::None,
        "a pass resets the streak"
    );
    assert_eq!(r.step(secs(12), &bad), Decision::None);
    let d = r.step(secs(13), &bad);
    assert!(
        matches!(d, Decision::Rollback { gate: Gate::ErrorRate, ref reason } if reason.contains("3.00%")),
        "{d:?}"
    );
    assert_eq!(
        (rolled_back_by(&r), r.candidate_weight_bp()),
        (Some(Gate::ErrorRate), 0)
    );
}

#[test]
fn p99_ceiling_and_p99_relative_to_stable() {
    let mut r = started();
    let slow = obs(snap(2000, 0, 8.0), snap(20_000, 10, 2.0));
    assert_eq!(run(&mut r, 10, 11, &slow).len(), 1);
    assert_eq!(rolled_back_by(&r), Some(Gate::P99Absolute));

    let mut r = started();
    let slower = obs(snap(2000, 0, 4.0), snap(20_000, 10, 1.0));
    run(&mut r, 10, 11, &slower);
    assert_eq!(rolled_back_by(&r), Some(Gate::P99Relative));

    // Three times slower but only 0.2 ms more: under the minimum delta, not a failure.
    let mut r = started();
    let fast = obs(snap(2000, 0, 0.3), snap(20_000, 10, 0.1));
    assert_eq!(
        run(&mut r, 10, 60, &fast),
        vec![(60, Decision::SetWeight { candidate_bp: 5000 })]
    );
}

#[test]
fn one_hash_violation_rolls_back_at_once() {
    let mut r = started();
    let o = Observation {
        candidate_violations: 1,
        ..healthy()
    };
    let d = r.step(secs(1), &o);
    assert!(
        matches!(
            d,
            Decision::Rollback {
                gate: Gate::HashViolation,
                ..
            }
        ),
        "{d:?}"
    );
    assert_eq!(rolled_back_by(&r), Some(Gate::HashViolation));
}

#[test]
fn consecutive_candidate_errors_roll_back_at_once() {
    let mut r = started();
    let four = Observation {
        candidate_consecutive_errors: 4,
        ..healthy()
    };
    assert_eq!(r.step(secs(1), &four), Decision::None);
    let five = Observation {
        candidate_consecutive_errors: 5,
        ..healthy()
    };
    assert!(matches!(
        r.step(secs(2), &five),
        Decision::Rollback {
            gate: Gate::ConsecutiveErrors,
            ..
        }
    ));
}

#[test]
fn wilson_tripwire_acts_on_a_small_but_clear_sample() {
    assert!(wilson_lower(3, 20, WILSON_Z) > 0.05);
    assert!(wilson_lower(2, 20, WILSON_Z) < 0.05);
    assert!(wilson_lower(30, 1000, WILSON_Z) < 0.05);
    assert_eq!(wilson_lower(0, 0, WILSON_Z), 0.0);

    let mut r = started();
    let too_few = obs(snap(19, 10, 2.0), snap(20_000, 10, 2.0));
    assert_eq!(r.step(secs(1), &too_few), Decision::None);
    let clear = obs(snap(25, 10, 2.0), snap(20_000, 10, 2.0));
    assert!(matches!(
        r.step(secs(2), &clear),
        Decision::Rollback {
            gate: Gate::ErrorRateTripwire,
            ..
        }
    ));
}

#[test]
fn candidate_without_healthy_backend_is_rolled_back() {
    let mut r = started();
    let o = Observation {
        candidate_healthy: false,
        ..healthy()
    };
    r.step(secs(1), &o);
    assert_eq!(rolled_back_by(&r), Some(Gate::NoHealthyBackend));
}

#[test]
fn too_little_traffic_pauses_at_max_hold_and_never_rolls_back() {
    let mut r = started();
    let thin = obs(snap(50, 0, 2.0), snap(500, 0, 2.0));
    let decisions = run(&mut r, 1, 700, &thin);
    assert_eq!(
        decisions,
        vec![(
            600,
            Decision::Pause {
                reason: PauseReason::InsufficientData
            }
        )]
    );
    assert_eq!(
        r.phase(),
        &Phase::Paused {
            reason: PauseReason::InsufficientData,
            step: 0
        }
    );
    assert_eq!(r.candidate_weight_bp(), 1000);
    let errors = r
        .gates()
        .iter()
        .find(|g| g.gate == Gate::ErrorRate)
        .unwrap();
    assert_eq!(
        (errors.samples, errors.needed, errors.eta_ms),
        (50, 300, None),
        "30 s holds only 50"
    );
}

#[test]
fn both_pools_degraded_pauses_instead_of_flipping() {
    let mut r = started();
    let both = obs(snap(1000, 30, 2.0), snap(10_000, 300, 2.0));
    assert_eq!(r.step(secs(10), &both), Decision::None);
    assert_eq!(
        r.step(secs(11), &both),
        Decision::Pause {
            reason: PauseReason::BothDegraded
        }
    );
    assert_eq!(r.step(secs(12), &both), Decision::None, "already paused");
    assert_eq!(r.candidate_weight_bp(), 1000);
    // Stable recovers while the candidate keeps failing: now the flip helps.
    let candidate_only = obs(snap(1000, 30, 2.0), snap(10_000, 5, 2.0));
    assert!(matches!(
        r.step(secs(13), &candidate_only),
        Decision::Rollback {
            gate: Gate::ErrorRate,
            ..
        }
    ));

    let mut r = started();
    let stable_down = Observation {
        candidate_violations: 1,
        stable_healthy: false,
        ..healthy()
    };
    assert_eq!(
        r.step(secs(1), &stable_down),
        Decision::Pause {
            reason: PauseReason::BothDegraded
        }
    );
    let stable = r
        .gates()
        .iter()
        .find(|g| g.pool == Blue && g.gate == Gate::NoHealthyBackend)
        .unwrap();
    assert_eq!(stable.verdict, Verdict::Fail);
}

#[test]
fn relative_gates_use_stable_baseline_once_stable_has_no_traffic() {
    let mut r = Rollout::start(
        Plan {
            steps_bp: vec![10_000],
            ..plan()
        },
        secs(0),
    )
    .unwrap()
    .0;
    let alone = obs(snap(2000, 0, 4.0), WindowSnapshot::default());
    r.step(secs(10), &alone);
    let rel = r
        .gates()
        .iter()
        .find(|g| g.gate == Gate::P99Relative)
        .unwrap();
    assert_eq!(
        rel.verdict,
        Verdict::Skipped,
        "no baseline, nothing to compare with"
    );
    assert_eq!(run(&mut r, 60, 60, &alone), vec![]);
    assert_eq!(r.phase(), &Phase::Baking);

    let mut r = started();
    run(
        &mut r,
        1,
        120,
        &obs(snap(2000, 0, 1.0), snap(20_000, 0, 1.0)),
    );
    assert_eq!(r.candidate_weight_bp(), 10_000);
    run(&mut r, 130, 131, &alone);
    assert_eq!(
        rolled_back_by(&r),
        Some(Gate::P99Relative),
        "4 ms against stable's last 1 ms"
    );
}

#[test]
fn gate_reports_cover_both_pools() {
    let mut r = started();
    r.step(secs(20), &obs(snap(150, 0, 2.0), snap(20_000, 10, 2.0)));
    let reports = r.gates();
    assert!(reports
        .iter()
        .any(|g| g.pool == Blue && g.gate == Gate::P99Absolute && g.verdict == Verdict::Pass));
    let errors = reports
        .iter()
        .find(|g| g.pool == Green && g.gate == Gate::ErrorRate)
        .unwrap();
    // 150 requests in the 15 s since settle: 10/s, so the other 150 take 15 s.
    assert_eq!(
        (errors.verdict, errors.eta_ms),
        (Verdict::Inconclusive, Some(15_000))
    );
    let json = serde_json::to_value(errors).unwrap();
    assert_eq!(
        (json["gate"].as_str(), json["pool"].as_str()),
        (Some("error_rate"), Some("green"))
    );
}
