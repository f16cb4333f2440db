//! The shipped alert rules fire on the series they watch (`promtool test rules`, with
//! Prometheus's own rule evaluation; promtool comes from scripts/install-test-deps.sh).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// Runs `promtool test rules` on the shipped rules with `tests`, the YAML list that
/// follows `tests:` (series, evaluation times and the alerts expected at each).
fn promtool_test(tests: &str) {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus-alerts.yml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.test.yml");
    let text = format!(
        "rule_files: [\"{}\"]\nevaluation_interval: 1m\ntests:\n{tests}",
        rules.display()
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool on PATH (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn state_not_saved_fires_when_a_save_fails_and_not_before() {
    // One failure at minute 5: firing at minute 6, quiet at minute 3 and after 10 more.
    promtool_test(
        r#"  - interval: 1m
    input_series:
      - series: 'switchyard_state_save_failures_total{job="switchyard",instance="a"}'
        values: '0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 3m
        alertname: SwitchyardStateNotSaved
        exp_alerts: []
      - eval_time: 6m
        alertname: SwitchyardStateNotSaved
        exp_alerts:
          - exp_labels: { severity: critical, job: switchyard, instance: a }
            exp_annotations:
              summary: "switchyard cannot save its state on a"
              description: "1 changes in the last 10 minutes could not be written to the state file on a: operator changes are refused with state_unwritable, rollbacks apply unsaved. `switchyard ctl status` shows the last error (last_state_save_failure)."
              runbook: "docs/operations.md#switchyardstatenotsaved"
      - eval_time: 20m
        alertname: SwitchyardStateNotSaved
        exp_alerts: []
"#,
    );
}

#[test]
fn upstream_connection_churn_fires_for_the_churning_backend_only() {
    // Both backends answer 100 requests/s; backend a dials 20 new connections/s (a fifth of
    // its requests), backend b 1/s. Firing for a after its 15 minutes, never for b.
    promtool_test(
        r#"  - interval: 1m
    input_series:
      - series: 'switchyard_backend_requests_total{job="switchyard",instance="i",pool="blue",backend="a:80",code_class="2xx"}'
        values: '0+6000x40'
      - series: 'switchyard_upstream_connections_opened_total{job="switchyard",instance="i",pool="blue",backend="a:80"}'
        values: '0+1200x40'
      - series: 'switchyard_backend_requests_total{job="switchyard",instance="i",pool="blue",backend="b:80",code_class="2xx"}'
        values: '0+6000x40'
      - series: 'switchyard_upstream_connections_opened_total{job="switchyard",instance="i",pool="blue",backend="b:80"}'
        values: '0+60x40'
    alert_rule_test:
      - eval_time: 12m
        alertname: SwitchyardUpstreamConnectionChurn
        exp_alerts: []
      - eval_time: 30m
        alertname: SwitchyardUpstreamConnectionChurn
        exp_alerts:
          - exp_labels: { severity: warning, job: switchyard, instance: i, pool: blue, backend: "a:80" }
            exp_annotations:
              summary: "switchyard opens many connections to backend a:80 on i"
              description: "20 new connections/s to backend a:80 of pool blue, more than a tenth of its responses."
              runbook: "docs/operations.md#switchyardupstreamconnectionchurn"
"#,
    );
}
