#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::Duration;

use super::backend::parse_backend;
use super::fields::{fmt_bp, fmt_duration};
use super::units::{parse_octal_mode, parse_size};
use super::*;

/// Ends inside `[proxy]`, so `with("workers = 4")` sets a proxy key and
/// `with("[split]\n…")` adds a section.
const MINIMAL: &str = r#"
[pools.blue]
backends = ["127.0.0.1:9001"]
[pools.green]
backends = ["127.0.0.1:9011"]
[proxy]
listen = ["127.0.0.1:8080"]
"#;

const DESIGN_EXAMPLE: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]

[[proxy.tls]]
listen = "127.0.0.1:8443"
certs = [{ cert = "/etc/switchyard/site.pem", key = "/etc/switchyard/site.key" }]

[pools.blue]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
[pools.green]
backends = ["127.0.0.1:9011"]

[split]
green_percent = 0
affinity = "none"

[constitution]
hash = "cdd01ef066bc6cf2"
header = "X-Constitutional-Hash"
requests = "enforce"
responses = "enforce"

[admin]
socket = "/run/switchyard/admin.sock"

[metrics]
listen = "127.0.0.1:9901"

[state]
path = "/var/lib/switchyard/state.json"

[rollout]
steps = [10, 50, 100]
hold = "60s"
bake = "5m"
window = "30s"
max_hold = "10m"

[rollout.gates]
p99_max = "5ms"
error_rate_max = 0.01
min_requests = 300
fail_windows = 2
"#;

fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

fn load(text: &str) -> Config {
    match Config::from_toml_str(text) {
        Ok(config) => config,
        Err(err) => panic!("config should load, got: {err}\n{text}"),
    }
}

fn error(text: &str) -> ConfigError {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(err) => err,
    }
}

/// Asserts the error names `key`, both in `key()` and in the message, and mentions `hint`.
fn assert_refused(text: &str, key: &str, hint: &str) {
    let err = error(text);
    let shown = err.to_string();
    assert_eq!(err.key(), Some(key), "wrong key in: {shown}");
    assert!(shown.contains(key), "message lacks key {key}: {shown}");
    assert!(shown.contains(hint), "message lacks hint {hint:?}: {shown}");
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

#[test]
fn durations_parse_in_every_unit() {
    assert_eq!(parse_duration("250ms"), Ok(250 * MS));
    assert_eq!(parse_duration("60s"), Ok(60 * S));
    assert_eq!(parse_duration("5m"), Ok(300 * S));
    assert_eq!(parse_duration("1h"), Ok(3600 * S));
    assert_eq!(parse_duration("1.5s"), Ok(1500 * MS));
    assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
    assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
}

#[test]
fn durations_without_unit_or_malformed_are_refused() {
    let no_unit = parse_duration("60").unwrap_err();
    assert!(no_unit.contains("\"60s\""), "{no_unit}");
    for bad in [
        "",
        "s",
        "5x",
        "5 s",
        "-1s",
        ".5s",
        "1.s",
        "1.2.3s",
        "5M",
        "1.0000000001s",
    ] {
        let err = parse_duration(bad).unwrap_err();
        assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
    }
    assert!(parse_duration("99999999999999999999h")
        .unwrap_err()
        .contains("too long"));
}

#[test]
fn percents_become_basis_points() {
    for (text, bp) in [
        ("0", 0),
        ("10", 1000),
        ("0.5", 50),
        ("0.05", 5),
        ("12.34", 1234),
        ("100", 10_000),
        ("100.00", 10_000),
        ("010", 1000),
        ("25%", 2500),
    ] {
        assert_eq!(parse_percent_bp(text), Ok(bp), "{text}");
    }
}

#[test]
fn bad_percents_explain_the_rule() {
    let cases = [
        ("12.345", "write e.g. 12.34"),
        ("-1", "negative"),
        ("101", "above 100"),
        ("100.01", "above 100"),
        ("99999", "above 100"),
        ("abc", "not a percent"),
        ("", "not a percent"),
        ("1.", "not a percent"),
        ("1e2", "not a percent"),
    ];
    for (text, expected) in cases {
        let err = parse_percent_bp(text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn sizes_and_modes_parse() {
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("64KiB"), Ok(64 << 10));
    assert_eq!(parse_size("100MiB"), Ok(100 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert!(parse_size("64KB").unwrap_err().contains("binary units"));
    assert!(parse_size("KiB").is_err());
    assert!(parse_size("1.5GiB").is_err());
    assert_eq!(parse_octal_mode("0660"), Ok(0o660));
    assert_eq!(parse_octal_mode("600"), Ok(0o600));
    assert!(parse_octal_mode("999").is_err());
    assert!(parse_octal_mode("4755").unwrap_err().contains("setuid"));
    assert!(parse_octal_mode("").is_err());
}

#[test]
fn backends_accept_names_ipv4_and_bracketed_ipv6() {
    assert_eq!(
        parse_backend("127.0.0.1:9001").as_deref(),
        Ok("127.0.0.1:9001")
    );
    assert_eq!(
        parse_backend("App-1.Internal:80").as_deref(),
        Ok("app-1.internal:80")
    );
    assert_eq!(parse_backend("[0:0::1]:9011").as_deref(), Ok("[::1]:9011"));
    let cases = [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "1 to 65535"),
        ("127.0.0.1:70000", "1 to 65535"),
        ("127.0.0.1:+80", "1 to 65535"),
        ("http://127.0.0.1:80", "scheme"),
        ("::1:80", "brackets"),
        ("[::1]", "no port"),
        ("[zz]:80", "not an IPv6"),
        ("300.0.0.1:80", "not an IPv4"),
        ("bad host:80", "not a host name"),
        (":80", "not a host name"),
    ];
    for (text, expected) in cases {
        let err = parse_backend(text).unwrap_err();
        assert!(err.contains(expected), "{text}: {err}");
        assert!(err.contains("host:port"), "{text}: {err}");
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load(MINIMAL);
    let p = &c.proxy;
    assert_eq!(p.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert!(p.tls.is_empty());
    assert_eq!(
        (p.workers, p.max_connections, p.trusted_hops),
        (0, 10_000, 0)
    );
    let t = &p.timeouts;
    assert_eq!(
        [t.connect, t.header_read, t.upstream_response, t.idle],
        [S, 10 * S, 30 * S, 60 * S]
    );
    assert_eq!(
        [
            t.upstream_idle,
            t.shutdown_grace,
            t.tls_handshake,
            t.body_idle,
            t.tunnel_idle,
            t.request
        ],
        [90 * S, 30 * S, 10 * S, 60 * S, 3600 * S, 3600 * S]
    );
    assert_eq!(p.limits.max_header_bytes, 32 * 1024);
    assert_eq!(p.limits.max_headers, 100);
    assert_eq!(p.limits.max_body_bytes, 1 << 30);
    assert_eq!(c.pool(PoolId::Blue).backends, ["127.0.0.1:9001"]);
    assert_eq!(c.pool(PoolId::Green).backends, ["127.0.0.1:9011"]);
    assert_eq!(c.pool(PoolId::Green).max_idle_per_backend, 1024);
    assert_eq!(c.split.green_bp, 0);
    assert_eq!(c.split.affinity, Affinity::None);
    assert_eq!(
        c.split.override_header.as_ref().map(|h| h.as_str()),
        Some("x-switchyard-pool")
    );
    assert_eq!(c.split.override_token, None);
    assert_eq!(c.constitution.hash, "cdd01ef066bc6cf2");
    assert_eq!(c.constitution.header.as_str(), "x-constitutional-hash");
    assert_eq!(c.constitution.requests, HashMode::Enforce);
    assert_eq!(c.constitution.responses, HashMode::Enforce);
    let a = &c.admin;
    assert_eq!(a.socket, PathBuf::from("/run/switchyard/admin.sock"));
    assert_eq!(a.mode, 0o660);
    assert!(a.admin_uids.is_empty() && a.admin_gids.is_empty());
    assert!(a.readonly_uids.is_empty() && a.readonly_gids.is_empty());
    assert_eq!(a.audit_log, None);
    assert_eq!(
        (a.max_clients, a.max_admin_clients, a.idle_timeout),
        (64, 16, 10 * S)
    );
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(
        c.state.path,
        PathBuf::from("/var/lib/switchyard/state.json")
    );
    let r = &c.rollout;
    assert_eq!(r.steps_bp, [1000, 5000, 10_000]);
    assert_eq!(
        [r.hold, r.bake, r.window, r.max_hold],
        [60 * S, 300 * S, 30 * S, 600 * S]
    );
    assert_eq!((r.tick, r.settle), (S, 2 * S));
    let g = &r.gates;
    assert_eq!(
        (g.p99_max, g.p99_ratio_max, g.p99_min_delta),
        (5 * MS, 1.5, MS)
    );
    assert_eq!((g.error_rate_max, g.error_rate_margin), (0.01, 0.002));
    assert_eq!((g.min_requests, g.min_latency_samples), (300, 300));
    assert_eq!(
        (g.fail_windows, g.consecutive_errors, g.hash_violations_max),
        (2, 5, 1)
    );
    assert_eq!((g.tripwire_error_rate, g.tripwire_min_requests), (0.05, 20));
}

#[test]
fn design_example_loads() {
    let c = load(DESIGN_EXAMPLE);
    assert_eq!(c.proxy.tls.len(), 1);
    assert_eq!(
        c.proxy.tls[0].certs,
        [CertPair {
            cert: "/etc/switchyard/site.pem".into(),
            key: "/etc/switchyard/site.key".into()
        }]
    );
    assert_eq!(c.pools[PoolId::Blue.index()].backends.len(), 2);
    assert_eq!(c.rollout.steps_bp, [1000, 5000, 10_000]);
}

#[test]
fn values_override_defaults() {
    let c = load(&with(
        r#"workers = 4
trusted_hops = 1
[proxy.limits]
max_header_bytes = 1024
max_body_bytes = "100MiB"
[split]
green_percent = 12.34
affinity = "header:X-User-Id"
override_header = ""
override_token = "s3cret-token"
[constitution]
requests = "report"
responses = "off"
[admin]
mode = "0600"
admin_uids = [0, 1000]
audit_log = "/var/log/switchyard/audit.log"
[metrics]
listen = ""
[rollout]
steps = [0.5, 10, 100]
window = "1s"
tick = "10ms"
[rollout.gates]
p99_ratio_max = 1
error_rate_margin = 0"#,
    ));
    assert_eq!(c.proxy.workers, 4);
    assert_eq!(c.proxy.limits.max_header_bytes, 1024);
    assert_eq!(c.proxy.limits.max_body_bytes, 100 << 20);
    assert_eq!(c.split.green_bp, 1234);
    assert_eq!(
        c.split.affinity,
        Affinity::Header(http::HeaderName::from_static("x-user-id"))
    );
    assert_eq!(c.split.override_header, None);
    assert_eq!(c.split.override_token.as_deref(), Some("s3cret-token"));
    assert_eq!(c.constitution.requests, HashMode::Report);
    assert_eq!(c.constitution.responses, HashMode::Off);
    assert_eq!(c.admin.mode, 0o600);
    assert_eq!(c.admin.admin_uids, [0, 1000]);
    assert!(c.admin.audit_log.is_some());
    assert_eq!(c.metrics.listen, None);
    assert_eq!(c.rollout.steps_bp, [50, 1000, 10_000]);
    assert_eq!(c.rollout.gates.p99_ratio_max, 1.0);
    let cookie = load(&with("[split]\naffinity = \"cookie:session_id\""));
    assert_eq!(cookie.split.affinity, Affinity::Cookie("session_id".into()));
}

#[test]
fn tls_only_config_needs_no_plain_listener() {
    let text = MINIMAL.replace(
        "listen = [\"127.0.0.1:8080\"]",
        "[[proxy.tls]]\nlisten = \"[::1]:8443\"\ncerts = [{ cert = \"a.pem\", key = \"a.key\" }]",
    );
    let c = load(&text);
    assert!(c.proxy.listen.is_empty());
    assert_eq!(c.proxy.tls[0].listen, "[::1]:8443".parse().unwrap());
}

#[test]
fn unknown_keys_name_their_dotted_path() {
    let cases = [
        ("[bogus]\nx = 1", "bogus"),
        ("listn = []", "proxy.listn"),
        ("[proxy.timeouts]\nconect = \"1s\"", "proxy.timeouts.conect"),
        ("[pools.red]\nbackends = []", "pools.red"),
        ("[rollout.gates]\np99 = \"5ms\"", "rollout.gates.p99"),
        (
            "[[proxy.tls]]\nlisten = \"127.0.0.1:8443\"\ncerts = [{ cert = \"a\", kee = \"b\" }]",
            "proxy.tls[0].certs[0].kee",
        ),
    ];
    for (extra, key) in cases {
        let err = error(&with(extra));
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
        assert_eq!(err.key(), Some(key), "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains("remove the key or correct its spelling"),
            "{shown}"
        );
        assert!(shown.contains("line "), "{shown}");
    }
}

#[test]
fn wrong_value_types_name_the_key() {
    assert_refused(&with("[rollout]\nhold = 60"), "rollout.hold", "\"60s\"");
    assert_refused(&with("[admin]\nmode = 0o660"), "admin.mode", "\"0660\"");
    assert_refused(
        &with("[split]\ngreen_percent = \"10\""),
        "split.green_percent",
        "not quoted",
    );
    assert_refused(
        &with("max_connections = -1"),
        "proxy.max_connections",
        "whole number",
    );
    assert_refused(
        &with("[rollout.gates]\nmin_requests = \"300\""),
        "rollout.gates.min_requests",
        "expected a whole number",
    );
    assert_refused(
        &with("[rollout.gates]\nerror_rate_max = \"1%\""),
        "rollout.gates.error_rate_max",
        "expected a number",
    );
    let not_a_list = MINIMAL.replace("[\"127.0.0.1:8080\"]", "\"127.0.0.1:8080\"");
    assert_refused(&not_a_list, "proxy.listen", "square brackets");
    let text = MINIMAL.replace("\"127.0.0.1:9011\"", "\"127.0.0.1:9011\", 5");
    assert_refused(&text, "pools.green.backends[1]", "expected a string");
}

#[test]
fn broken_toml_reports_line_and_column() {
    let err = error("[proxy]\nlisten = [\n");
    assert!(matches!(err, ConfigError::Syntax(_)));
    assert_eq!(err.key(), None);
    assert!(err.to_string().contains("line 2, column 11"), "{err}");
}

#[test]
fn listeners_are_checked() {
    let no_listener = MINIMAL.replace("listen = [\"127.0.0.1:8080\"]", "");
    assert_refused(&no_listener, "proxy.listen", "[[proxy.tls]]");
    let bad = MINIMAL.replace("127.0.0.1:8080", "localhost:8080");
    assert_refused(&bad, "proxy.listen[0]", "\"127.0.0.1:8080\"");
    let twice = MINIMAL.replace(
        "\"127.0.0.1:8080\"",
        "\"127.0.0.1:8080\", \"127.0.0.1:8080\"",
    );
    assert_refused(&twice, "proxy.listen[1]", "already used by proxy.listen[0]");
    let ephemeral = MINIMAL.replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\", \"127.0.0.1:0\"");
    load(&ephemeral);
    assert_refused(
        &with("[metrics]\nlisten = \"127.0.0.1:8080\""),
        "metrics.listen",
        "already used",
    );
    assert_refused(
        &with("[metrics]\nlisten = \"nope\""),
        "metrics.listen",
        "ip:port",
    );
    assert_refused(
        &with("[[proxy.tls]]\ncerts = []"),
        "proxy.tls[0].listen",
        "0.0.0.0:443",
    );
    assert_refused(
        &with("[[proxy.tls]]\nlisten = \"127.0.0.1:8443\""),
        "proxy.tls[0].certs",
        "at least one certificate",
    );
    assert_refused(
        &with("[[proxy.tls]]\nlisten = \"127.0.0.1:8443\"\ncerts = [{ cert = \"a.pem\" }]"),
        "proxy.tls[0].certs[0].key",
        "PEM",
    );
    assert_refused(
        &with("max_connections = 0"),
        "proxy.max_connections",
        "at least 1",
    );
}

#[test]
fn timeouts_and_limits_are_checked() {
    assert_refused(
        &with("[proxy.timeouts]\nconnect = \"0s\""),
        "proxy.timeouts.connect",
        "above zero",
    );
    assert_refused(
        &with("[proxy.timeouts]\nidle = \"1 minute\""),
        "proxy.timeouts.idle",
        "\"60s\"",
    );
    let cases = [
        (
            "max_header_bytes = 512",
            "proxy.limits.max_header_bytes",
            "1KiB to 1MiB",
        ),
        (
            "max_header_bytes = \"2MiB\"",
            "proxy.limits.max_header_bytes",
            "1KiB to 1MiB",
        ),
        (
            "max_header_bytes = \"32KB\"",
            "proxy.limits.max_header_bytes",
            "binary units",
        ),
        ("max_headers = 0", "proxy.limits.max_headers", "1 to 1000"),
        (
            "max_headers = 1001",
            "proxy.limits.max_headers",
            "1 to 1000",
        ),
        (
            "max_body_bytes = 0",
            "proxy.limits.max_body_bytes",
            "at least 1",
        ),
        (
            "max_body_bytes = -5",
            "proxy.limits.max_body_bytes",
            "negative",
        ),
    ];
    for (line, key, hint) in cases {
        assert_refused(&with(&format!("[proxy.limits]\n{line}")), key, hint);
    }
}

#[test]
fn pools_are_checked() {
    let no_green = MINIMAL.replace("[pools.green]\nbackends = [\"127.0.0.1:9011\"]", "");
    assert_refused(&no_green, "pools.green.backends", "at least one");
    let empty_blue = MINIMAL.replace("backends = [\"127.0.0.1:9001\"]", "backends = []");
    assert_refused(&empty_blue, "pools.blue.backends", "[pools.blue]");
    let no_port = MINIMAL.replace("\"127.0.0.1:9011\"", "\"127.0.0.1:9011\", \"127.0.0.1\"");
    assert_refused(
        &no_port,
        "pools.green.backends[1]",
        "expected host:port such as \"127.0.0.1:9011\"",
    );
    let twice = MINIMAL.replace(
        "\"127.0.0.1:9001\"",
        "\"127.0.0.1:9001\", \"127.0.0.1:09001\"",
    );
    assert_refused(&twice, "pools.blue.backends[1]", "listed twice");
}

#[test]
fn split_is_checked() {
    let cases = [
        ("green_percent = 101", "split.green_percent", "above 100"),
        (
            "green_percent = 12.345",
            "split.green_percent",
            "two decimals",
        ),
        ("green_percent = -1", "split.green_percent", "negative"),
        ("affinity = \"sticky\"", "split.affinity", "cookie:NAME"),
        ("affinity = \"cookie:\"", "split.affinity", "cookie name"),
        ("affinity = \"cookie:a b\"", "split.affinity", "cookie name"),
        (
            "affinity = \"header:bad header\"",
            "split.affinity",
            "header name",
        ),
        (
            "override_header = \"x y\"",
            "split.override_header",
            "header name",
        ),
        (
            "override_header = \"X-Constitutional-Hash\"",
            "split.override_header",
            "constitution.header",
        ),
        ("override_token = \"\"", "split.override_token", "non-empty"),
        (
            "affinity = \"header:X-Switchyard-Pool\"",
            "split.affinity",
            "removes from requests",
        ),
        (
            "affinity = \"header:x-switchyard-token\"",
            "split.affinity",
            "removes from requests",
        ),
    ];
    for (line, key, hint) in cases {
        assert_refused(&with(&format!("[split]\n{line}")), key, hint);
    }
}

#[test]
fn constitution_and_admin_are_checked() {
    let cases = [
        (
            "[constitution]\nhash = \"\"",
            "constitution.hash",
            "non-empty",
        ),
        (
            "[constitution]\nhash = \"a b\"",
            "constitution.hash",
            "visible ASCII",
        ),
        (
            "[constitution]\nheader = \"X Hash\"",
            "constitution.header",
            "header name",
        ),
        (
            "[constitution]\nrequests = \"strict\"",
            "constitution.requests",
            "\"report\"",
        ),
        (
            "[constitution]\nresponses = \"Enforce\"",
            "constitution.responses",
            "\"enforce\"",
        ),
        ("[admin]\nmode = \"999\"", "admin.mode", "octal"),
        ("[admin]\nmode = \"1777\"", "admin.mode", "sticky"),
        ("[admin]\nsocket = \"\"", "admin.socket", "admin.sock"),
        (
            "[admin]\nmax_clients = 0",
            "admin.max_clients",
            "at least 1",
        ),
        (
            "[admin]\nmax_admin_clients = 0",
            "admin.max_admin_clients",
            "at least 1",
        ),
        (
            "[admin]\nidle_timeout = \"0s\"",
            "admin.idle_timeout",
            "above zero",
        ),
        (
            "[admin]\nadmin_uids = [-1]",
            "admin.admin_uids[0]",
            "whole number",
        ),
        ("[state]\npath = \"\"", "state.path", "state.json"),
    ];
    for (extra, key, hint) in cases {
        assert_refused(&with(extra), key, hint);
    }
}

#[test]
fn rollout_is_checked() {
    let cases = [
        ("steps = []", "rollout.steps", "is empty"),
        ("steps = [10, 50]", "rollout.steps", "must be 100"),
        ("steps = [0, 50, 100]", "rollout.steps[0]", "above 0"),
        (
            "steps = [50, 10, 100]",
            "rollout.steps[1]",
            "strictly increase",
        ),
        (
            "steps = [10, 10, 100]",
            "rollout.steps[1]",
            "strictly increase",
        ),
        ("steps = [10, 100.001]", "rollout.steps[1]", "two decimals"),
        ("steps = [10, 150]", "rollout.steps[1]", "above 100"),
        (
            "hold = \"2m\"\nmax_hold = \"1m\"",
            "rollout.max_hold",
            "at least the hold",
        ),
        (
            "hold = \"0s\"\nmax_hold = \"0s\"",
            "rollout.max_hold",
            "above zero",
        ),
        ("window = \"500ms\"", "rollout.window", "from 1s to 10m"),
        ("window = \"11m\"", "rollout.window", "from 1s to 10m"),
        ("tick = \"5ms\"", "rollout.tick", "from 10ms to 10s"),
        (
            "tick = \"5s\"\nwindow = \"2s\"",
            "rollout.tick",
            "no longer than the window",
        ),
        ("settle = \"10m\"", "rollout.settle", "max_hold"),
        ("bake = \"soon\"", "rollout.bake", "\"5m\""),
    ];
    for (line, key, hint) in cases {
        assert_refused(&with(&format!("[rollout]\n{line}")), key, hint);
    }
}

#[test]
fn gates_are_checked() {
    let cases = [
        ("p99_max = \"0ms\"", "rollout.gates.p99_max", "above zero"),
        (
            "p99_ratio_max = 0.9",
            "rollout.gates.p99_ratio_max",
            "1.0 or more",
        ),
        (
            "error_rate_max = 0",
            "rollout.gates.error_rate_max",
            "between 0 and 1",
        ),
        (
            "error_rate_max = 1",
            "rollout.gates.error_rate_max",
            "between 0 and 1",
        ),
        (
            "error_rate_margin = 1.0",
            "rollout.gates.error_rate_margin",
            "from 0",
        ),
        (
            "error_rate_margin = -0.1",
            "rollout.gates.error_rate_margin",
            "from 0",
        ),
        (
            "tripwire_error_rate = 2",
            "rollout.gates.tripwire_error_rate",
            "between 0 and 1",
        ),
        (
            "min_requests = 0",
            "rollout.gates.min_requests",
            "at least 1",
        ),
        (
            "min_latency_samples = 0",
            "rollout.gates.min_latency_samples",
            "at least 1",
        ),
        (
            "fail_windows = 0",
            "rollout.gates.fail_windows",
            "at least 1",
        ),
        (
            "consecutive_errors = 0",
            "rollout.gates.consecutive_errors",
            "at least 1",
        ),
        (
            "hash_violations_max = 0",
            "rollout.gates.hash_violations_max",
            "at least 1",
        ),
        (
            "tripwire_min_requests = 0",
            "rollout.gates.tripwire_min_requests",
            "at least 1",
        ),
        (
            "fail_windows = 4294967296",
            "rollout.gates.fail_windows",
            "whole number",
        ),
    ];
    for (line, key, hint) in cases {
        assert_refused(&with(&format!("[rollout.gates]\n{line}")), key, hint);
    }
}

#[test]
fn error_key_accessor_covers_every_variant() {
    let io = Config::load(Path::new("/nonexistent/switchyard.toml")).unwrap_err();
    assert!(matches!(io, ConfigError::Io { .. }));
    assert_eq!(io.key(), None);
    assert!(io.to_string().contains("/nonexistent/switchyard.toml"));
    let invalid = ConfigError::Invalid {
        key: "a.b".into(),
        message: "m".into(),
    };
    assert_eq!(invalid.key(), Some("a.b"));
    assert_eq!(invalid.to_string(), "config key `a.b`: m");
}

#[test]
fn pool_ids_round_trip() {
    for id in PoolId::ALL {
        assert_eq!(PoolId::parse(id.as_str()), Some(id));
        assert_eq!(PoolId::ALL[id.index()], id);
        assert_ne!(id.other(), id);
        assert_eq!(id.to_string(), id.as_str());
    }
    assert_eq!(PoolId::parse("GREEN"), Some(PoolId::Green));
    assert_eq!(PoolId::parse("red"), None);
    assert_eq!(serde_json::to_string(&PoolId::Blue).unwrap(), "\"blue\"");
    assert_eq!(
        serde_json::to_string(&HashMode::Report).unwrap(),
        "\"report\""
    );
}

#[test]
fn formatters_match_the_config_notation() {
    assert_eq!(fmt_bp(1234), "12.34");
    assert_eq!(fmt_bp(50), "0.5");
    assert_eq!(fmt_bp(10_000), "100");
    assert_eq!(fmt_duration(1500 * MS), "1.5s");
    assert_eq!(fmt_duration(300 * S), "5m");
    assert_eq!(fmt_duration(250 * MS), "250ms");
    assert_eq!(fmt_duration(Duration::from_micros(500)), "0.5ms");
    assert_eq!(fmt_duration(Duration::ZERO), "0s");
}
