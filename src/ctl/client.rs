//! CONTROL PLANE: `switchyard ctl`, the admin socket's client. Sends one command, prints
//! the reply — for a person on a terminal, as the reply's JSON line otherwise (or with
//! `--json`) — and exits with the design's code: 0 ok, 1 usage or internal error,
//! 2 socket unreachable or permission denied, 7 conflict (also `rollout_active`),
//! 8 invalid transition, 9 busy (every admin connection of the peer's level in use; retry),
//! 10 state_unwritable (the change was refused: the state file cannot be written). `ctl watch` prints events until the daemon or the user ends it.
//! `ctl rollout ... --wait` follows the rollout ([`crate::control::follow`]: 3 rolled back by a gate,
//! 4 aborted, 5 timeout, 6 paused). `ctl wait-drained POOL [--timeout D]` waits until the
//! pool has nothing in flight and exits 5 when D passes first.
//!
//! The pieces ([`Connection`], [`exit_code`], [`render`]) are public so that verbs with
//! their own client loop (`rollout start --wait`) reuse them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The socket used when neither `--socket` nor `$SWITCHYARD_SOCKET` names one.
pub const DEFAULT_SOCKET: &str = "/run/switchyard/admin.sock";

/// How long `ctl` waits for a reply (a reload builds pools; nothing takes longer).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub const EXIT_OK: u8 = 0;
pub const EXIT_USAGE: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 2;
/// `wait-drained` reached its timeout.
pub const EXIT_TIMEOUT: u8 = 5;
pub const EXIT_CONFLICT: u8 = 7;
pub const EXIT_INVALID_TRANSITION: u8 = 8;
/// `busy`: every admin connection of the peer's level is in use; retrying shortly is safe.
pub const EXIT_BUSY: u8 = 9;
/// `state_unwritable`: the change was refused because the state file cannot be written.
pub const EXIT_STATE_UNWRITABLE: u8 = 10;

/// The exit code for an error code of the protocol.
pub fn exit_code(code: &str) -> u8 {
    match code {
        "permission_denied" => EXIT_UNREACHABLE,
        "conflict" | "rollout_active" => EXIT_CONFLICT,
        "invalid_transition" => EXIT_INVALID_TRANSITION,
        "timeout" => EXIT_TIMEOUT,
        "busy" => EXIT_BUSY,
        "state_unwritable" => EXIT_STATE_UNWRITABLE,
        _ => EXIT_USAGE,
    }
}

/// One connection to the admin socket.
pub struct Connection {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Connection {
    pub async fn connect(socket: &Path) -> std::io::Result<Connection> {
        let (read, write) = UnixStream::connect(socket).await?.into_split();
        Ok(Connection {
            read: BufReader::new(read),
            write,
        })
    }

    pub async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.write.write_all(format!("{line}\n").as_bytes()).await
    }

    /// The next line from the daemon, parsed; `None` when it closed the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Value>> {
        let mut line = String::new();
        if self.read.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("reply is not JSON ({e}): {line}"),
            )
        })
    }
}

/// Runs `switchyard ctl` and returns its exit code.
pub async fn run(socket: &Path, words: &[String], json_out: bool) -> u8 {
    let json_out = json_out || !std::io::stdout().is_terminal();
    let out = Output { json: json_out };
    if words.is_empty() {
        return out.fail(
            EXIT_USAGE,
            "usage",
            "no command given; try `switchyard ctl help`",
        );
    }
    if let Some(bad) = words.iter().find(|w| w.chars().any(char::is_control)) {
        return out.fail(
            EXIT_USAGE,
            "usage",
            &format!("argument {bad:?} contains a control character"),
        );
    }
    let wait_applied = words.iter().any(|w| w == "--wait-applied");
    let words: Vec<String> = words
        .iter()
        .filter(|w| *w != "--wait-applied")
        .cloned()
        .collect();
    let (words, follow) = match crate::control::follow::take(&words) {
        Ok(x) => x,
        Err(msg) => return out.fail(EXIT_USAGE, "usage", &msg),
    };
    let (words, reply_timeout) = match wait_drained_words(&words) {
        Ok(x) => x,
        Err(msg) => return out.fail(EXIT_USAGE, "usage", &msg),
    };
    let line = words.join(" ");
    let mut conn = match Connection::connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot reach the admin socket {}: {e}", socket.display());
            return out.fail(EXIT_UNREACHABLE, "unreachable", &msg);
        }
    };
    if let Err(e) = conn.send(&line).await {
        // The daemon may have answered and closed before reading (`busy`,
        // `permission_denied`): its reply says more than the broken pipe.
        match tokio::time::timeout(Duration::from_secs(1), conn.next()).await {
            Ok(Ok(Some(reply))) if reply["ok"] == false => {
                out.print("", &reply);
                return exit_code(reply["error"]["code"].as_str().unwrap_or("internal"));
            }
            _ => {
                return out.fail(
                    EXIT_UNREACHABLE,
                    "unreachable",
                    &format!("{}: {e}", socket.display()),
                )
            }
        }
    }
    let reply = match tokio::time::timeout(reply_timeout, conn.next()).await {
        Err(_) => {
            return out.fail(
                EXIT_USAGE,
                "internal",
                &format!("no reply within {reply_timeout:?}"),
            )
        }
        Ok(Err(e)) => return out.fail(EXIT_USAGE, "internal", &e.to_string()),
        Ok(Ok(None)) => {
            return out.fail(
                EXIT_USAGE,
                "internal",
                "the daemon closed the connection without a reply",
            )
        }
        Ok(Ok(Some(v))) => v,
    };
    let verb = words.first().map(String::as_str).unwrap_or("");
    out.print(verb, &reply);
    if reply["ok"] != true {
        let code = exit_code(reply["error"]["code"].as_str().unwrap_or("internal"));
        if follow.wait {
            crate::control::follow::refused(&reply, code, out.json);
        }
        return code;
    }
    if follow.wait {
        return crate::control::follow::follow(&mut conn, &reply, &follow, out.json).await;
    }
    if wait_applied {
        if let Some(g) = reply["generation"].as_u64() {
            return wait_applied_by_fleet(&mut conn, g, &out).await;
        }
    }
    if verb == "watch" {
        loop {
            let event = tokio::select! {
                e = conn.next() => e,
                _ = tokio::signal::ctrl_c() => return EXIT_OK,
                // The reader went away (`ctl watch | grep -m1 route`): nobody to print for.
                _ = stdout_closed() => return EXIT_OK,
            };
            match event {
                Ok(Some(v)) => {
                    if !out.print("event", &v) {
                        return EXIT_OK;
                    }
                }
                Ok(None) => return EXIT_OK,
                Err(e) => return out.fail(EXIT_USAGE, "internal", &e.to_string()),
            }
        }
    }
    EXIT_OK
}

/// How long `--wait-applied` waits for the fleet before it exits 5.
const WAIT_APPLIED_LIMIT: Duration = Duration::from_secs(30);

/// `--wait-applied`: asks `fleet` until every live instance runs generation `g` or later.
/// Alone (no `[fleet]`) the reply already means applied.
async fn wait_applied_by_fleet(conn: &mut Connection, g: u64, out: &Output) -> u8 {
    let start = std::time::Instant::now();
    loop {
        let view = match conn.send("fleet").await {
            Ok(()) => conn.next().await,
            Err(e) => Err(e),
        };
        let view = match view {
            Ok(Some(v)) => v,
            Ok(None) => {
                return out.fail(EXIT_USAGE, "internal", "the daemon closed the connection")
            }
            Err(e) => return out.fail(EXIT_USAGE, "internal", &e.to_string()),
        };
        if view["ok"] != true {
            return EXIT_OK;
        }
        let instances = view["instances"].as_array().cloned().unwrap_or_default();
        let behind: Vec<String> = instances
            .iter()
            .filter(|i| i["generation"].as_u64().unwrap_or(0) < g)
            .map(|i| i["name"].as_str().unwrap_or("?").to_string())
            .collect();
        if !instances.is_empty() && behind.is_empty() {
            out.print("fleet", &view);
            return EXIT_OK;
        }
        if start.elapsed() > WAIT_APPLIED_LIMIT {
            let msg = format!(
                "not every instance applied generation {g} within {WAIT_APPLIED_LIMIT:?}; behind: {}",
                behind.join(", ")
            );
            return out.fail(EXIT_TIMEOUT, "timeout", &msg);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The socket from `--socket`, else `$SWITCHYARD_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("SWITCHYARD_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

struct Output {
    json: bool,
}

impl Output {
    /// Prints a reply or event; false when stdout is gone (its reader closed). An error
    /// reply goes to stderr for a person, and in JSON mode to stderr as a sentence as
    /// well as to stdout as its JSON line.
    fn print(&self, verb: &str, v: &Value) -> bool {
        if v["ok"] == false {
            let _ = writeln!(std::io::stderr(), "switchyard ctl: {}", render(verb, v));
            if !self.json {
                return true;
            }
        }
        let text = if self.json {
            v.to_string()
        } else {
            render(verb, v)
        };
        print_line(&text)
    }

    /// Reports a failure that has no reply from the daemon.
    fn fail(&self, exit: u8, code: &str, message: &str) -> u8 {
        let _ = writeln!(std::io::stderr(), "switchyard ctl: {message}");
        if self.json {
            print_line(
                &json!({ "ok": false, "error": { "code": code, "message": message } }).to_string(),
            );
        }
        exit
    }
}

/// Writes one line to stdout; false when that fails (a closed pipe). Never panics, unlike
/// `println!`.
pub fn print_line(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// Resolves when stdout is a pipe or socket whose reader has gone away; stays pending for
/// a terminal or a file (writes tell then).
pub async fn stdout_closed() {
    use std::os::fd::AsFd;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    // `with_interest` is deprecated because it accepts any `AsRawFd`, which may close its
    // descriptor while registered; an `OwnedFd` (a duplicate of stdout, only watched and
    // never read or written) cannot, and `register_with_interest` would need `unsafe`.
    #[allow(deprecated)]
    let watched = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| AsyncFd::with_interest(fd, Interest::ERROR));
    if let Ok(fd) = watched {
        loop {
            match fd.ready(Interest::ERROR).await {
                Ok(ready) if ready.ready().is_error() => return,
                Ok(mut ready) => ready.clear_ready(),
                Err(_) => break,
            }
        }
    }
    std::future::pending::<()>().await
}

/// A reply or event for a person.
pub fn render(verb: &str, v: &Value) -> String {
    if v["ok"] == false {
        let e = &v["error"];
        let key = e["key"]
            .as_str()
            .map(|k| format!(" (key `{k}`)"))
            .unwrap_or_default();
        return format!(
            "error [{}]: {}{key}",
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        );
    }
    match verb {
        "status" => render_status(v),
        "wait-drained" => format!(
            "pool {} drained: nothing in flight after {} ms (state {}, {}% of new requests){}",
            v["pool"].as_str().unwrap_or("?"),
            v["waited_ms"],
            v["state"].as_str().unwrap_or("?"),
            v["share_percent"],
            v["warning"]
                .as_str()
                .map(|w| format!("\nwarning: {w}"))
                .unwrap_or_default()
        ),
        "help" => render_help(v),
        "fleet" => render_fleet(v),
        "watch" => format!(
            "watching from generation {}; Ctrl-C to stop",
            v["generation"]
        ),
        "event" => render_event(v),
        "rollout" if v.get("changes").is_none() => {
            crate::control::follow::render_rollout(&v["rollout"])
        }
        "gates" => crate::control::follow::render_gates(v),
        _ if v.get("changes").is_some() => render_change(v),
        _ => v.to_string(),
    }
}

/// `fleet` (and the end of `status` with `[fleet]`): the leader, then one line per instance.
fn render_fleet(v: &Value) -> String {
    let store = if v["store_up"] == true {
        "etcd up"
    } else {
        "etcd UNREACHABLE (serving the last table)"
    };
    let mut s = format!(
        "fleet  generation {}  leader {}  {store}\n",
        v["generation"],
        v["leader"].as_str().unwrap_or("none")
    );
    for i in v["instances"].as_array().into_iter().flatten() {
        let applied = if i["applied"] == true {
            "applied".to_string()
        } else {
            format!("LAGGING {}s", i["lag_seconds"])
        };
        let leads = if i["leader"] == true {
            "  (leader)"
        } else {
            ""
        };
        s.push_str(&format!(
            "       {:<16} generation {:<6} {applied:<16} version {}{leads}\n",
            i["name"].as_str().unwrap_or("?"),
            i["generation"],
            i["version"].as_str().unwrap_or("?")
        ));
    }
    s
}

fn render_status(v: &Value) -> String {
    let mut s = format!(
        "generation {}  green {}%  blue {}%  (effective green {}%)  stable {}  candidate {}\n",
        v["generation"],
        v["green_percent"],
        v["blue_percent"],
        v["effective_green_percent"],
        v["stable"].as_str().unwrap_or("?"),
        v["candidate"].as_str().unwrap_or("?")
    );
    if let Some(f) = v["failover"].as_object().filter(|f| !f.is_empty()) {
        s.push_str(&format!(
            "FAILOVER: {} has no backend in rotation; its share goes to the other pool\n",
            f.get("from").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    if let Some(f) = v["last_state_save_failure"].as_object() {
        s.push_str(&format!(
            "STATE NOT SAVED: {} at generation {}: {}\n",
            f.get("time").and_then(Value::as_str).unwrap_or("?"),
            f.get("generation").cloned().unwrap_or_default(),
            f.get("error").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    for pool in ["blue", "green"] {
        let p = &v["pools"][pool];
        s.push_str(&format!(
            "{pool:<6} {}\n",
            p["state"].as_str().unwrap_or("?")
        ));
        for b in p["backends"].as_array().into_iter().flatten() {
            let on = if b["enabled"] == true {
                "enabled"
            } else {
                "DISABLED"
            };
            let health = match (b["healthy"] == true, b["ejected"] == true) {
                (true, false) => "healthy",
                (false, false) => "UNHEALTHY",
                (true, true) => "EJECTED",
                (false, true) => "UNHEALTHY+EJECTED",
            };
            let rotation = if b["in_rotation"] == false {
                "  (out of rotation)"
            } else {
                ""
            };
            s.push_str(&format!(
                "       {:<24} {on:<9} {health:<9} {} in flight{rotation}\n",
                b["addr"].as_str().unwrap_or("?"),
                b["inflight"]
            ));
        }
    }
    for l in v["tls"].as_array().into_iter().flatten() {
        s.push_str(&format!("tls    {}\n", l["listen"].as_str().unwrap_or("?")));
        for c in l["certificates"].as_array().into_iter().flatten() {
            let names: Vec<&str> = c["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            s.push_str(&format!(
                "       {}  expires {}  ({})\n",
                names.join(", "),
                c["not_after_unix"]
                    .as_i64()
                    .map_or_else(|| "?".to_string(), unix_date),
                c["file"].as_str().unwrap_or("?")
            ));
        }
    }
    if v["fleet"].is_object() {
        s.push_str(&render_fleet(&v["fleet"]));
    }
    if let Some(pid) = v["superseded_by"].as_u64() {
        s.push_str(&format!(
            "handed over to pid {pid}: this daemon is shutting down\n"
        ));
    }
    if !v["rollout"].is_null() {
        s.push_str(&format!(
            "{}\n",
            crate::control::follow::render_record(&v["rollout"])
        ));
    }
    s.trim_end().to_string()
}

/// `YYYY-MM-DD` (UTC) of a Unix time, for certificate expiry.
fn unix_date(t: i64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `wait-drained POOL [--timeout D]` → the socket's `wait-drained POOL timeout D`, and how
/// long to wait for the reply (the timeout and a margin). Other commands pass through.
fn wait_drained_words(words: &[String]) -> Result<(Vec<String>, Duration), String> {
    if words.first().map(String::as_str) != Some("wait-drained") {
        return Ok((words.to_vec(), REPLY_TIMEOUT));
    }
    let mut out = Vec::new();
    let mut timeout = crate::control::drain::DEFAULT_TIMEOUT;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let value = match w.as_str() {
            "--timeout" | "timeout" => it
                .next()
                .cloned()
                .ok_or("--timeout needs a duration, e.g. 30s")?,
            other => match other.strip_prefix("--timeout=") {
                Some(v) => v.to_string(),
                None => {
                    out.push(w.clone());
                    continue;
                }
            },
        };
        timeout = crate::config::parse_duration(&value).map_err(|e| format!("--timeout: {e}"))?;
        out.extend(["timeout".to_string(), value]);
    }
    Ok((out, timeout + REPLY_TIMEOUT))
}

fn render_help(v: &Value) -> String {
    let mut s = String::from("commands:\n");
    for c in v["commands"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {:<50} {}\n",
            c["usage"].as_str().unwrap_or(""),
            c["purpose"].as_str().unwrap_or("")
        ));
    }
    s.push_str("error codes:\n");
    for c in v["error_codes"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {:<20} {}\n",
            c["code"].as_str().unwrap_or(""),
            c["when"].as_str().unwrap_or("")
        ));
    }
    s.trim_end().to_string()
}

fn render_changes(changes: &Value) -> String {
    let parts: Vec<String> = changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {} → {}",
                c["field"].as_str().unwrap_or("?"),
                c["old"],
                c["new"]
            )
        })
        .collect();
    parts.join(", ")
}

fn render_change(v: &Value) -> String {
    let mut s = if v["changed"] == false {
        format!("ok: nothing to change (generation {})", v["generation"])
    } else {
        format!(
            "ok: generation {}: {}",
            v["generation"],
            render_changes(&v["changes"])
        )
    };
    if let (Some(stable), Some(candidate)) = (v["stable"].as_str(), v["candidate"].as_str()) {
        let share = |p: &str| v[format!("{p}_percent")].clone();
        s.push_str(&format!(
            "\nstable {stable} {}%, candidate {candidate} {}%",
            share(stable),
            share(candidate)
        ));
    }
    if let Some(keys) = v["restart_required"].as_array().filter(|k| !k.is_empty()) {
        s.push_str(&format!(
            "\nnote: takes effect at the next restart: {}",
            Value::Array(keys.clone())
        ));
    }
    if let Some(w) = v["warning"].as_str() {
        s.push_str(&format!("\nwarning: {w}"));
    }
    s
}

fn render_event(v: &Value) -> String {
    match v["event"].as_str() {
        Some("route") => format!(
            "{} generation {} `{}` by {}: {}",
            v["time"].as_str().unwrap_or(""),
            v["generation"],
            v["command"].as_str().unwrap_or(""),
            v["actor"]["uid"]
                .as_u64()
                .map_or_else(|| v["actor"]["kind"].to_string(), |u| format!("uid {u}")),
            render_changes(&v["changes"])
        ),
        Some("lagged") => format!(
            "(fell behind: {} events missed; run `status` to resync)",
            v["missed"]
        ),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_view_renders_one_line_per_instance() {
        let v = json!({
            "generation": 7, "leader": "edge-1", "store_up": true,
            "instances": [
                { "name": "edge-1", "generation": 7, "applied": true, "lag_seconds": 0.0, "version": "0.1.0", "leader": true },
                { "name": "edge-2", "generation": 6, "applied": false, "lag_seconds": 1.5, "version": "0.1.0", "leader": false },
            ],
        });
        let text = render("fleet", &v);
        assert!(
            text.starts_with("fleet  generation 7  leader edge-1  etcd up"),
            "{text}"
        );
        assert!(
            text.contains("edge-1") && text.contains("(leader)"),
            "{text}"
        );
        assert!(text.contains("LAGGING 1.5s"), "{text}");
        let down = render("fleet", &json!({ "store_up": false, "instances": [] }));
        assert!(down.contains("UNREACHABLE"), "{down}");
    }

    #[test]
    fn exit_codes_follow_the_design_table() {
        assert_eq!(exit_code("conflict"), 7);
        assert_eq!(exit_code("rollout_active"), 7);
        assert_eq!(exit_code("invalid_transition"), 8);
        assert_eq!(exit_code("permission_denied"), 2);
        assert_eq!(exit_code("bad_argument"), 1);
        assert_eq!(exit_code("something_new"), 1);
        assert_eq!(exit_code("busy"), 9);
        assert_eq!(exit_code("state_unwritable"), 10);
    }

    #[test]
    fn renders_errors_and_changes_for_people() {
        let err = json!({"ok": false, "error": {"code": "reload_failed", "message": "bad", "key": "pools.blue"}});
        assert_eq!(
            render("reload", &err),
            "error [reload_failed]: bad (key `pools.blue`)"
        );
        let ok = json!({"ok": true, "generation": 4, "changed": true,
            "changes": [{"field": "green_percent", "old": 0.0, "new": 37.0}]});
        assert_eq!(
            render("weight", &ok),
            "ok: generation 4: green_percent 0.0 → 37.0"
        );
    }
}
