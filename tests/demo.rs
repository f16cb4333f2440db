//! `switchyard demo --quick`: one rollout promoted, one rolled back by the gate that
//! matches the injected fault, exit 0 — for each kind of fault.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn demo(fault: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--quick", "--json", "--fault", fault])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "report").then_some(v)
    });
    let report = report.unwrap_or_else(|| {
        panic!(
            "no report line; stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo --fault {fault} failed: {report}"
    );
    report
}

#[test]
fn demo_promotes_once_and_rolls_back_by_the_matching_gate() {
    for (fault, gates) in [
        ("hash", &["hash_violation"][..]),
        (
            "errors",
            &[
                "error_rate",
                "error_rate_relative",
                "error_rate_tripwire",
                "consecutive_errors",
            ][..],
        ),
        (
            "latency",
            &["p50_relative", "p99_absolute", "p99_relative"][..],
        ),
    ] {
        let r = demo(fault);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["first"]["phase"], "promoted", "{r}");
        assert_eq!(r["first"]["candidate"], "green", "{r}");
        assert_eq!(r["second"]["phase"], "rolled_back", "{r}");
        assert_eq!(r["second"]["candidate"], "blue", "{r}");
        let gate = r["second"]["gate"].as_str().unwrap();
        assert!(
            gates.contains(&gate),
            "fault {fault} rolled back by {gate}: {r}"
        );
        assert!(
            r["served"]["green"].as_u64().unwrap() > 0 && r["served"]["blue"].as_u64().unwrap() > 0
        );
    }
}
