//! The shipped alert rules fire on the series they watch (`promtool test rules`, with
//! Prometheus's own rule evaluation; promtool comes from scripts/install-test-deps.sh).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn state_not_saved_fires_when_a_save_fails_and_not_before() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus-alerts.yml");
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("state.test.yml");
    // One failure at minute 5: firing at minute 6, quiet at minute 3 and after 10 more.
    std::fs::write(
        &test,
        format!(
            r#"rule_files: ["{}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'switchyard_state_save_failures_total{{job="switchyard",instance="a"}}'
        values: '0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 3m
        alertname: SwitchyardStateNotSaved
        exp_alerts: []
      - eval_time: 6m
        alertname: SwitchyardStateNotSaved
        exp_alerts:
          - exp_labels: {{ severity: critical, job: switchyard, instance: a }}
            exp_annotations:
              summary: "switchyard cannot save its state on a"
              description: "1 changes in the last 10 minutes could not be written to the state file on a: operator changes are refused with state_unwritable, rollbacks apply unsaved. `switchyard ctl status` shows the last error (last_state_save_failure)."
              runbook: "docs/operations.md#switchyardstatenotsaved"
      - eval_time: 20m
        alertname: SwitchyardStateNotSaved
        exp_alerts: []
"#,
            rules.display()
        ),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("promtool on PATH (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
