//! `switchyard check`: exit 1 with the key named for every invalid fixture, exit 0 for
//! every valid one and for the shipped example.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (Option<i32>, String) {
    check_with(path, &[])
}

fn check_with(path: &Path, flags: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .args(flags)
        .arg("--config")
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
    // The certificate files these configs name are not on this machine: the config
    // alone is checked here (`--config-only`); the files are below.
    for path in all {
        let (code, out) = check_with(&path, &["--config-only"]);
        assert_eq!(code, Some(0), "{}: {out}", path.display());
    }
}

#[test]
fn a_valid_config_naming_missing_certificates_exits_1_naming_the_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tests/valid/tls_listener.toml");
    let (code, out) = check(&path);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("/etc/switchyard/example.com.pem"), "{out}");
}

/// A self-signed certificate for `localhost` valid until `days` from now (negative: expired).
fn cert(days: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, d) = civil(now.div_euclid(86_400) + days);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let c = params.self_signed(&key).unwrap();
    (c.pem(), key.serialize_pem())
}

/// Days since 1970-01-01 as (year, month, day) (proleptic Gregorian).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// A config with one TLS listener on `cert`/`key` (paths in `dir`).
fn tls_config(dir: &Path, cert: &Path, key: &Path) -> std::path::PathBuf {
    let text = format!(
        "[proxy]\nlisten = []\n[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9011\"]\n",
        cert.display(),
        key.display()
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_loads_every_certificate_and_key_as_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good_cert, good_key) = cert(365);
    let (_, other_key) = cert(365);
    std::fs::write(d.join("good.crt"), &good_cert).unwrap();
    std::fs::write(d.join("good.key"), &good_key).unwrap();
    std::fs::write(d.join("other.key"), &other_key).unwrap();
    std::fs::write(d.join("junk.crt"), "not a certificate\n").unwrap();
    std::fs::create_dir(d.join("dir.crt")).unwrap();
    let cases = [
        ("missing.crt", "good.key", "missing.crt"),
        ("junk.crt", "good.key", "junk.crt"),
        ("good.crt", "other.key", "does not match"),
        ("good.crt", "missing.key", "missing.key"),
        // Unreadable (a directory: root reads any file whatever its mode).
        ("dir.crt", "good.key", "dir.crt"),
    ];
    for (c, k, needle) in cases {
        let (code, out) = check(&tls_config(d, &d.join(c), &d.join(k)));
        assert_eq!(code, Some(1), "{c} + {k}: {out}");
        assert!(out.contains(needle), "{c} + {k} names `{needle}`: {out}");
    }
    let (code, out) = check(&tls_config(d, &d.join("good.crt"), &d.join("good.key")));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("expires in") && !out.contains("warning"),
        "{out}"
    );
}

#[test]
fn check_warns_about_a_certificate_that_expires_within_14_days() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (days, needle) in [(5, "expires in"), (-3, "EXPIRED")] {
        let (c, k) = cert(days);
        std::fs::write(d.join("soon.crt"), c).unwrap();
        std::fs::write(d.join("soon.key"), k).unwrap();
        let (code, out) = check(&tls_config(d, &d.join("soon.crt"), &d.join("soon.key")));
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("warning") && out.contains(needle),
            "{days} days: {out}"
        );
    }
}

#[test]
fn missing_file_exits_1() {
    let (code, out) = check(Path::new("/nonexistent/switchyard.toml"));
    assert_eq!(code, Some(1));
    assert!(out.contains("/nonexistent/switchyard.toml"), "{out}");
}
