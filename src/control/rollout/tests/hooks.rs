//! Gating hooks in the pure machine: it waits, the outcome is handed in as a value.

use super::*;

fn with_hooks(pre_rollout: bool, step: bool, pre_promote: bool) -> Rollout {
    Rollout::idle(plan()).with_hooks(GatingHooks {
        pre_rollout,
        step,
        pre_promote,
    })
}

fn pending(r: &Rollout) -> (HookPoint, u32) {
    let p = r.pending().expect("the rollout waits for a hook");
    (p.point, p.seq)
}

#[test]
fn pre_rollout_moves_no_traffic_until_it_passes() {
    let mut r = with_hooks(true, false, false);
    assert_eq!(r.begin(secs(0)), Ok(Decision::None));
    assert_eq!(r.candidate_weight_bp(), 0);
    let (point, seq) = pending(&r);
    assert_eq!(point, HookPoint::PreRollout);
    // However long the hook takes, no tick moves the weight.
    assert_eq!(run(&mut r, 1, 900, &healthy()), vec![]);
    assert_eq!(r.candidate_weight_bp(), 0);
    // A stale outcome is ignored.
    assert_eq!(r.hook_outcome(secs(901), seq + 1, Ok(())), Decision::None);
    assert_eq!(
        r.hook_outcome(secs(901), seq, Ok(())),
        Decision::SetWeight { candidate_bp: 1000 }
    );
    assert_eq!((r.pending(), r.samples_since()), (None, secs(906)));
}

#[test]
fn a_failing_pre_rollout_aborts_with_hook_failed_and_moves_nothing() {
    let mut r = with_hooks(true, false, false);
    r.begin(secs(0)).unwrap();
    let (_, seq) = pending(&r);
    let d = r.hook_outcome(secs(3), seq, Err("hook \"smoke\" answered 500".into()));
    assert_eq!(d, Decision::Done);
    match r.phase() {
        Phase::Aborted {
            reason: Some(why), ..
        } => assert!(
            why.starts_with("hook_failed: hook \"smoke\" answered 500"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!((r.candidate_weight_bp(), r.is_terminal()), (0, true));
}

#[test]
fn step_and_pre_promote_hooks_hold_the_weight_until_they_answer() {
    let mut r = with_hooks(false, true, true);
    assert_eq!(
        r.begin(secs(0)),
        Ok(Decision::SetWeight { candidate_bp: 1000 })
    );
    // The hold passes at 60 s: the rollout waits for the step hook at 10%.
    assert_eq!(run(&mut r, 1, 60, &healthy()), vec![]);
    let (point, seq) = pending(&r);
    assert_eq!((point, r.candidate_weight_bp()), (HookPoint::Step, 1000));
    assert_eq!(run(&mut r, 61, 200, &healthy()), vec![]);
    assert_eq!(
        r.hook_outcome(secs(200), seq, Ok(())),
        Decision::SetWeight { candidate_bp: 5000 }
    );
    run(&mut r, 201, 260, &healthy());
    let (_, seq) = pending(&r);
    r.hook_outcome(secs(260), seq, Ok(()));
    assert_eq!(r.candidate_weight_bp(), 10_000);
    // Into the bake (no hook), then the bake passes: pre_promote.
    run(&mut r, 261, 900, &healthy());
    let (point, seq) = pending(&r);
    assert_eq!((point, r.phase()), (HookPoint::PrePromote, &Phase::Baking));
    assert_eq!(r.hook_outcome(secs(901), seq, Ok(())), Decision::Promote);
    assert_eq!(r.phase(), &Phase::Promoted);
}

#[test]
fn a_failing_step_hook_rolls_back_naming_it_and_gates_stay_live_meanwhile() {
    let mut r = with_hooks(false, true, false);
    r.begin(secs(0)).unwrap();
    run(&mut r, 1, 60, &healthy());
    let (_, seq) = pending(&r);
    let d = r.hook_outcome(secs(61), seq, Err("hook \"confirm\" answered 503".into()));
    assert_eq!(
        d,
        Decision::Rollback {
            gate: Gate::HookFailed,
            reason: "hook \"confirm\" answered 503".into()
        }
    );
    // While waiting, a tripwire still rolls back.
    let mut r = with_hooks(false, true, false);
    r.begin(secs(0)).unwrap();
    run(&mut r, 1, 60, &healthy());
    let mut bad = healthy();
    bad.candidate_violations = 1;
    let d = r.step(secs(62), &bad);
    assert!(matches!(d, Decision::Rollback { .. }), "{d:?}");
    assert_eq!(r.pending(), None);
}

#[test]
fn operators_pause_and_abort_while_a_hook_is_pending() {
    let mut r = with_hooks(true, false, false);
    r.begin(secs(0)).unwrap();
    let (_, first) = pending(&r);
    r.pause(secs(1)).unwrap();
    assert_eq!(r.pending(), None);
    // The old call's answer is ignored; a resume calls the hook again.
    assert_eq!(r.hook_outcome(secs(2), first, Ok(())), Decision::None);
    assert_eq!(r.resume(secs(3)), Ok(Decision::None));
    let (point, again) = pending(&r);
    assert!(point == HookPoint::PreRollout && again != first);
    assert!(r.abort(secs(4), "uid 0").is_ok());
    assert_eq!(r.hook_outcome(secs(5), again, Ok(())), Decision::None);
    assert!(matches!(r.phase(), Phase::Aborted { reason: None, .. }));
}
