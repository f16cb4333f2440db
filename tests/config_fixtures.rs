//! Config fixtures: every file in `config/tests/valid` loads, every file in
//! `config/tests/invalid` is refused with an error naming the key given on its first
//! line (`# expect-key: a.b[0]`), and the documented example `config/switchyard.toml` loads.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use switchyard::config::Config;

fn fixtures(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/tests")
        .join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_load() {
    let files = fixtures("valid");
    assert!(files.len() >= 5, "expected at least 5 valid fixtures");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            Config::load(path)
                .err()
                .map(|err| format!("{}: {err}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "valid fixtures refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_fixtures_fail_naming_their_key() {
    let files = fixtures("invalid");
    assert!(files.len() >= 15, "expected at least 15 invalid fixtures");
    let mut failures = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).expect("fixture is readable");
        let Some(expected) = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect-key:"))
            .map(str::trim)
        else {
            failures.push(format!(
                "{}: first line must be `# expect-key: KEY`",
                path.display()
            ));
            continue;
        };
        match Config::load(path) {
            Ok(_) => failures.push(format!("{}: loaded, but should fail", path.display())),
            Err(err) => {
                let shown = err.to_string();
                if !shown.contains(expected) || err.key() != Some(expected) {
                    failures.push(format!(
                        "{}: expected key `{expected}`, got key {:?} in: {shown}",
                        path.display(),
                        err.key()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid fixtures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn documented_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/switchyard.toml");
    if let Err(err) = Config::load(&path) {
        panic!("config/switchyard.toml is refused: {err}");
    }
}
