//! `switchyard check`: exit 1 with the key named for every invalid fixture, exit 0 for
//! every valid one and for the shipped example.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/tests")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn invalid_fixtures_exit_1_naming_the_key() {
    let all = fixtures("invalid");
    assert!(all.len() >= 15);
    for path in all {
        let text = std::fs::read_to_string(&path).unwrap();
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-key:"))
            .unwrap()
            .trim()
            .to_string();
        let (code, out) = check(&path);
        assert_eq!(code, Some(1), "{}: {out}", path.display());
        assert!(
            out.contains(&key),
            "{}: message does not name `{key}`: {out}",
            path.display()
        );
    }
}

#[test]
fn valid_fixtures_and_the_example_exit_0() {
    let mut all = fixtures("valid");
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml"));
    for path in all {
        let (code, out) = check(&path);
        assert_eq!(code, Some(0), "{}: {out}", path.display());
    }
}

#[test]
fn missing_file_exits_1() {
    let (code, out) = check(Path::new("/nonexistent/switchyard.toml"));
    assert_eq!(code, Some(1));
    assert!(out.contains("/nonexistent/switchyard.toml"), "{out}");
}
