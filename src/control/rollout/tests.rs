use std::time::Duration;

mod gates;
mod hooks;
mod sequential;

use super::*;
use crate::config::PoolId::{Blue, Green};
use crate::metrics::window::WindowSnapshot;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn plan() -> Plan {
    Plan {
        candidate: Green,
        steps_bp: vec![1000, 5000, 10_000],
        hold: secs(60),
        bake: secs(300),
        window: secs(30),
        max_hold: secs(600),
        settle: secs(5),
        gates: GateLimits {
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
        },
    }
}

fn snap(requests: u64, errors: u64, p99_ms: f64) -> WindowSnapshot {
    let p99 = Duration::from_secs_f64(p99_ms / 1000.0);
    WindowSnapshot {
        requests,
        errors,
        violations: 0,
        p50: (requests > 0).then_some(p99 / 2),
        p99: (requests > 0).then_some(p99),
        p999: (requests > 0).then_some(p99 * 2),
        latency_samples: requests,
    }
}

fn obs(candidate: WindowSnapshot, stable: WindowSnapshot) -> Observation {
    Observation {
        candidate,
        stable,
        candidate_consecutive_errors: 0,
        candidate_violations: 0,
        candidate_healthy: true,
        stable_healthy: true,
        ..Observation::default()
    }
}

fn healthy() -> Observation {
    obs(snap(2000, 2, 2.0), snap(20_000, 10, 2.0))
}

fn started() -> Rollout {
    let (r, d) = Rollout::start(plan(), secs(0)).unwrap();
    assert_eq!(d, Decision::SetWeight { candidate_bp: 1000 });
    r
}

/// Ticks every second over `from..=to`; the decisions that were not `None`, by second.
fn run(r: &mut Rollout, from: u64, to: u64, o: &Observation) -> Vec<(u64, Decision)> {
    (from..=to)
        .map(|t| (t, r.step(secs(t), o)))
        .filter(|(_, d)| *d != Decision::None)
        .collect()
}

fn rolled_back_by(r: &Rollout) -> Option<Gate> {
    match r.phase() {
        Phase::RolledBack { gate, .. } => Some(*gate),
        _ => None,
    }
}

#[test]
fn healthy_candidate_goes_10_50_100_bakes_and_is_promoted() {
    let mut r = started();
    assert_eq!(r.phase(), &Phase::Progressing { step: 0 });
    let decisions = run(&mut r, 1, 480, &healthy());
    let expected = vec![
        (60, Decision::SetWeight { candidate_bp: 5000 }),
        (
            120,
            Decision::SetWeight {
                candidate_bp: 10_000,
            },
        ),
        (480, Decision::Promote),
    ];
    assert_eq!(decisions, expected);
    assert_eq!(
        (r.phase(), r.candidate_weight_bp(), r.is_terminal()),
        (&Phase::Promoted, 10_000, true)
    );
    assert_eq!(r.step(secs(481), &healthy()), Decision::Done);
}

#[test]
fn last_step_completes_into_the_bake_keeping_weight_and_samples() {
    let mut r = started();
    run(&mut r, 1, 120, &healthy());
    assert_eq!(r.samples_since(), secs(125));
    assert_eq!(r.step(secs(180), &healthy()), Decision::None);
    assert_eq!(r.phase(), &Phase::Baking);
    assert_eq!(
        (r.candidate_weight_bp(), r.samples_since()),
        (10_000, secs(125))
    );
    assert_eq!(r.hold_remaining(secs(200)), Some(secs(280)));
}

#[test]
fn settle_moves_the_sample_start_after_each_weight_change() {
    let mut r = started();
    assert_eq!(r.samples_since(), secs(5));
    r.step(secs(60), &healthy());
    assert_eq!(r.samples_since(), secs(65));
    // Samples still settling: the reports cannot estimate a wait yet.
    let thin = obs(snap(0, 0, 0.0), snap(20_000, 10, 2.0));
    r.step(secs(61), &thin);
    let p99 = r
        .gates()
        .iter()
        .find(|g| g.gate == Gate::P99Absolute)
        .unwrap();
    assert_eq!((p99.verdict, p99.eta_ms), (Verdict::Inconclusive, None));
}

#[test]
fn paused_rollout_holds_its_step_until_resumed() {
    let mut r = started();
    assert_eq!(
        r.pause(secs(10)),
        Ok(Decision::Pause {
            reason: PauseReason::Manual
        })
    );
    assert_eq!(r.pause(secs(11)), Ok(Decision::None));
    assert_eq!(run(&mut r, 12, 100, &healthy()), vec![]);
    assert_eq!(r.hold_remaining(secs(100)), None);
    assert_eq!(
        r.resume(secs(100)),
        Ok(Decision::SetWeight { candidate_bp: 1000 })
    );
    assert_eq!(r.phase(), &Phase::Progressing { step: 0 });
    assert_eq!(
        run(&mut r, 101, 160, &healthy()),
        vec![(160, Decision::SetWeight { candidate_bp: 5000 })]
    );
    assert!(r.resume(secs(161)).is_err());
}

#[test]
fn gates_stay_live_while_paused() {
    let mut r = started();
    r.pause(secs(1)).unwrap();
    let o = Observation {
        candidate_violations: 1,
        ..healthy()
    };
    assert!(matches!(
        r.step(secs(2), &o),
        Decision::Rollback {
            gate: Gate::HashViolation,
            ..
        }
    ));
}

#[test]
fn pausing_the_bake_resumes_the_bake() {
    let mut r = started();
    run(&mut r, 1, 180, &healthy());
    r.pause(secs(200)).unwrap();
    assert_eq!(
        r.phase(),
        &Phase::Paused {
            reason: PauseReason::Manual,
            step: 2
        }
    );
    r.resume(secs(210)).unwrap();
    assert_eq!(r.phase(), &Phase::Baking);
    assert_eq!(
        run(&mut r, 211, 510, &healthy()),
        vec![(510, Decision::Promote)]
    );
}

#[test]
fn verbs_refused_in_the_wrong_state_say_invalid_transition() {
    let mut idle = Rollout::idle(plan());
    let err = idle.promote(secs(0)).unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().as_str()),
        (
            "invalid_transition",
            "cannot promote a rollout that is idle"
        )
    );
    assert!(idle.pause(secs(0)).is_err());
    assert!(idle.resume(secs(0)).is_err());
    assert!(idle.abort(secs(0), "ops").is_err());
    assert_eq!(
        idle.rollback(secs(0), Gate::Operator, "x".into()),
        Decision::None
    );
    assert_eq!(idle.step(secs(0), &healthy()), Decision::None);

    let mut r = started();
    assert_eq!(r.begin(secs(1)).unwrap_err().code(), "invalid_transition");
    assert_eq!(r.promote(secs(5)), Ok(Decision::Promote));
    assert_eq!(
        (r.phase(), r.candidate_weight_bp()),
        (&Phase::Promoted, 10_000)
    );
    assert!(r.promote(secs(6)).is_err());
}

#[test]
fn bad_plans_are_refused() {
    for steps in [
        vec![],
        vec![5000, 1000, 10_000],
        vec![1000, 5000],
        vec![0, 10_000],
        vec![5000, 5000, 10_000],
    ] {
        let err = Rollout::start(
            Plan {
                steps_bp: steps.clone(),
                ..plan()
            },
            secs(0),
        )
        .unwrap_err();
        assert_eq!(err.code(), "bad_argument", "{steps:?}");
    }
    assert!(Rollout::start(
        Plan {
            steps_bp: vec![10_000],
            ..plan()
        },
        secs(0)
    )
    .is_ok());
}

#[test]
fn abort_rolls_back_and_records_the_actor() {
    let mut r = started();
    let d = r.abort(secs(5), "uid 1000").unwrap();
    assert_eq!(
        d,
        Decision::Rollback {
            gate: Gate::Operator,
            reason: "aborted by uid 1000".into()
        }
    );
    assert_eq!(
        (r.phase(), r.candidate_weight_bp()),
        (
            &Phase::Aborted {
                actor: "uid 1000".into(),
                reason: None,
            },
            0
        )
    );
    assert!(r.abort(secs(6), "again").is_err());
    assert_eq!(
        r.rollback(secs(7), Gate::Operator, "late".into()),
        Decision::None
    );
    assert_eq!(r.step(secs(8), &healthy()), Decision::Done);
}

#[test]
fn rollback_is_one_decision_and_idempotent() {
    let mut r = started();
    r.pause(secs(1)).unwrap();
    let d = r.rollback(secs(2), Gate::Operator, "emergency".into());
    assert_eq!(
        d,
        Decision::Rollback {
            gate: Gate::Operator,
            reason: "emergency".into()
        }
    );
    assert_eq!(
        r.rollback(secs(3), Gate::Operator, "again".into()),
        Decision::None
    );
    assert_eq!(
        r.phase(),
        &Phase::RolledBack {
            gate: Gate::Operator,
            reason: "emergency".into()
        }
    );
}

#[test]
fn restored_after_a_restart_is_paused_at_the_same_weight() {
    let mut r = started();
    r.step(secs(60), &healthy());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["phase"]["state"], "progressing");
    assert_eq!(json["plan"]["candidate"], "green");
    let back: Rollout = serde_json::from_value(json).unwrap();
    // The new process's clock starts near zero.
    let mut r = back.restored(secs(3));
    assert_eq!(
        r.phase(),
        &Phase::Paused {
            reason: PauseReason::Restarted,
            step: 1
        }
    );
    assert_eq!(
        (r.candidate_weight_bp(), r.samples_since()),
        (5000, secs(3))
    );
    assert_eq!(
        r.resume(secs(4)),
        Ok(Decision::SetWeight { candidate_bp: 5000 })
    );
    assert_eq!(
        run(&mut r, 5, 64, &healthy()),
        vec![(
            64,
            Decision::SetWeight {
                candidate_bp: 10_000
            }
        )]
    );

    let (done, _) = Rollout::start(plan(), secs(0)).unwrap();
    let mut done = done;
    done.promote(secs(1)).unwrap();
    assert_eq!(done.clone().restored(secs(0)), done);
}
