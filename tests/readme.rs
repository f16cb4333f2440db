//! The README's CI examples, run as written against a running daemon: every
//! `switchyard ctl …` line of its YAML blocks, through `sh`, with the socket in
//! `$SWITCHYARD_SOCKET` as the examples set it.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const FAST_ROLLOUT: &str = r#"
[rollout]
hold = "1s"
bake = "1s"
window = "3s"
settle = "200ms"
tick = "250ms"
[rollout.gates]
p99_max = "200ms"
p99_min_delta = "100ms"
min_requests = 40
min_latency_samples = 40
"#;

/// The shell lines of each YAML block in README.md that call `switchyard ctl`.
fn ci_examples() -> Vec<Vec<String>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (line.trim_start(), current.as_mut()) {
            ("```yaml", None) => current = Some(Vec::new()),
            ("```", Some(_)) => blocks.extend(current.take()),
            (l, Some(cmds)) if l.contains("switchyard ctl") => {
                let cmd = l
                    .trim_start_matches("- ")
                    .trim_start_matches("run: ")
                    .trim();
                cmds.push(cmd.to_string());
            }
            _ => {}
        }
    }
    blocks
        .into_iter()
        .filter(|b: &Vec<String>| !b.is_empty())
        .collect()
}

fn sh(cmd: &str, socket: &Path) -> (Option<i32>, String) {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .env("PATH", path)
        .env("SWITCHYARD_SOCKET", socket)
        .env("CI_JOB_STATUS", "success")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_ci_examples_promote_a_rollout() {
    let examples = ci_examples();
    assert_eq!(
        examples.len(),
        2,
        "expected the GitHub Actions and GitLab CI examples: {examples:?}"
    );
    for commands in examples {
        assert!(
            commands
                .iter()
                .any(|c| c.contains("rollout start") && c.contains("--wait")),
            "{commands:?}"
        );
        let (blue, green) = (upstream("blue").await, upstream("green").await);
        let p = proxy(&blue, &green, FAST_ROLLOUT).await;
        // Client traffic for the gates to judge, bounded in time.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (url, stop) = (p.url("/"), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    send(&c, get(&url)).await;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        for cmd in &commands {
            let socket = p.socket.clone();
            let c = cmd.clone();
            let (code, stdout) = tokio::task::spawn_blocking(move || sh(&c, &socket))
                .await
                .unwrap();
            assert_eq!(code, Some(0), "`{cmd}` failed:\n{stdout}");
            if cmd.contains("rollout start") {
                let last: serde_json::Value =
                    serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
                assert_eq!(last["phase"], "promoted", "{stdout}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        let status = p.admin("status").await;
        assert_eq!(status["stable"], "green", "{status}");
    }
}
