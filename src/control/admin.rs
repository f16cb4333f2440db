//! CONTROL PLANE: the admin unix socket. One command per line of UTF-8 words in, one JSON
//! line out: `{"ok":true,...}` or `{"ok":false,"error":{"code":...,"message":...}}`
//! (`reload_failed` adds `"key"`). `echo status | socat - UNIX-CONNECT:/run/switchyard/admin.sock`
//! works.
//!
//! Verbs ([`super::command::VERBS`]): `status`, `weight [POOL] PERCENT`, `rollback [to POOL]`,
//! `pool POOL ready|drain|maint`, `backend POOL ADDR enable|disable`, `reload`,
//! `rollout start|pause|resume|promote|abort|status` and `gates` ([`super::controller`]),
//! `watch`,
//! `wait-drained POOL [timeout D]` (answers once the pool has nothing in flight),
//! `handover` (see [`super::handover`]), `help`; each mutation takes a trailing `expect-gen N`. `watch` answers `{"ok":true,
//! "watching":true,...}` and then streams one JSON event per line (`{"event":"route",...}`,
//! the rollout's events, `{"event":"lagged","missed":N}` when this client fell behind)
//! until the client closes.
//!
//! Error codes ([`super::command::ERROR_CODES`]): `unknown_command`, `bad_argument`,
//! `conflict`, `rollout_active`, `permission_denied`, `invalid_transition`, `busy`,
//! `idle_timeout`, `ambiguous_pool`, `state_unwritable`, `reload_failed`, `timeout`,
//! `superseded`, `internal`.
//!
//! Peers are identified by SO_PEERCRED when they connect and checked by
//! [`super::access::decide`]: a peer in no access list is answered `permission_denied` and
//! disconnected at once, holding nothing. Input is bounded: a line longer than [`MAX_LINE`]
//! or not UTF-8 gets `bad_argument` and the connection goes on. Capacity (`admin::slots`):
//! read-only peers hold at most `admin.max_clients` connections and admin peers at most
//! `admin.max_admin_clients`, separately (then `busy`); when the admin limit is reached the
//! oldest idle admin connection that is not a `watch` is closed to make room, so an
//! emergency `rollback` always gets in. A client silent for `admin.idle_timeout` (10 s by
//! default) gets `idle_timeout` and is closed (a `watch` client is expected to be silent;
//! it is closed only if it stops reading for that long). Mutations run on the
//! blocking pool (they fsync the state file), never on a proxy worker.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::access::{allows, decide, Access, AccessPolicy, Peer};
use super::command::{is_mutating_verb, AdminCommand, AdminError};
use super::handover::{self, Inheritable};
use super::{drain, execute, Actor, Control};
use crate::config::{AdminConfig, PoolId};

/// Longest accepted command line, in bytes.
pub const MAX_LINE: usize = 4096;

/// Peers with no access being answered at once; more are closed without an answer.
const MAX_REFUSING: usize = 64;

mod slots;
use slots::{Slot, Slots};

/// Creates the socket with the configured mode, in a directory created 0750 if missing.
/// A stale socket (nobody answers) is replaced; a live one means another daemon runs with
/// this config, and this one refuses to start rather than steal its socket and state.
pub fn bind(cfg: &AdminConfig) -> std::io::Result<UnixListener> {
    bind_with(cfg, false)
}

/// [`bind`] for `run --takeover`: a live socket at the path (the daemon handing over) is
/// replaced atomically — the new socket is bound beside it and renamed over it, so the path
/// always answers.
pub fn bind_replacing(cfg: &AdminConfig) -> std::io::Result<UnixListener> {
    bind_with(cfg, true)
}

fn bind_with(cfg: &AdminConfig, replace_live: bool) -> std::io::Result<UnixListener> {
    let path = &cfg.socket;
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; remove it or choose another admin.socket",
        ));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            if !replace_live {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another switchyard daemon is serving this admin socket; stop it first, \
                     or take it over with `switchyard run --takeover` (docs/upgrade.md)",
                ));
            }
        } else {
            std::fs::remove_file(path)?;
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let beside = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
    let _ = std::fs::remove_file(&beside);
    let listener = UnixListener::bind(&beside)?;
    let placed = std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(cfg.mode))
        .and_then(|()| std::fs::rename(&beside, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&beside);
        return Err(e);
    }
    Ok(listener)
}

pub struct AdminServer {
    pub control: Arc<Control>,
    /// The daemon's own uid: the owner of the socket it created.
    pub own_uid: u32,
    /// See [`AccessPolicy::implicit_admins`].
    pub implicit_admins: bool,
    /// (device, inode) of the socket file this daemon created: it removes the path on exit
    /// only if it is still its own (a successor may have replaced it).
    socket_id: Option<(u64, u64)>,
    /// The listening sockets `handover` passes to a successor.
    sockets: Option<Arc<Inheritable>>,
}

enum Handled {
    Reply(String),
    Watch,
    WaitDrained(PoolId, Duration),
    Handover(Peer, Actor),
}

/// How long a daemon that handed its sockets over waits for the successor's confirmation
/// before it takes route changes again.
const HANDOVER_CONFIRM: Duration = Duration::from_secs(60);

impl AdminServer {
    pub fn new(control: Arc<Control>, implicit_admins: bool) -> Self {
        let socket = control.config().admin.socket.clone();
        let own_uid = std::fs::metadata(&socket)
            .or_else(|_| std::fs::metadata("/proc/self"))
            .map(|m| m.uid())
            .unwrap_or(0);
        let socket_id = std::fs::metadata(&socket).ok().map(|m| (m.dev(), m.ino()));
        AdminServer {
            control,
            own_uid,
            implicit_admins,
            socket_id,
            sockets: None,
        }
    }

    /// The listening sockets this daemon may hand to a successor (`handover`).
    pub fn with_sockets(mut self, sockets: Arc<Inheritable>) -> Self {
        self.sockets = Some(sockets);
        self
    }

    /// The policy of the config in force (access lists take effect on reload).
    pub fn policy(&self) -> AccessPolicy {
        AccessPolicy::from_config(
            &self.control.config().admin,
            self.own_uid,
            self.implicit_admins,
        )
    }

    pub async fn run(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        let slots = Arc::new(Slots::default());
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.cancelled() => break,
            };
            let (stream, _) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = match stream.peer_cred() {
                Ok(c) => Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    warn!(error = %e, "admin peer credentials unavailable; closing");
                    continue;
                }
            };
            let access = decide(&self.policy(), &peer);
            if access == Access::Denied {
                // Answered and closed without taking a slot; past MAX_REFUSING at once,
                // closed without an answer.
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.refuse(stream, peer).await;
                        drop(permit);
                    });
                }
                continue;
            }
            let admin = access == Access::Admin;
            let limit = {
                let cfg = &self.control.config().admin;
                if admin {
                    cfg.max_admin_clients
                } else {
                    cfg.max_clients
                }
            };
            let Ok(slot) = slots.acquire(admin, limit) else {
                let (key, level) = if admin {
                    ("admin.max_admin_clients", "admin")
                } else {
                    ("admin.max_clients", "read-only")
                };
                debug!(peer.uid = peer.uid, peer.pid = ?peer.pid, limit, "admin client refused: busy");
                let busy = reply_err(&AdminError::new(
                    "busy",
                    format!("all {limit} {level} connections (`{key}`) are in use; retry shortly"),
                ));
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        stream.write_all(busy.as_bytes()),
                    )
                    .await;
                });
                continue;
            };
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.serve(stream, peer, access, slot, shutdown).await;
            });
        }
        let path = self.control.config().admin.socket.clone();
        let current = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.socket_id {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// A peer in no access list: `permission_denied` at once, then the connection closes.
    /// The first line it sent within a second is read, so a refused change is audited.
    async fn refuse(&self, stream: UnixStream, peer: Peer) {
        let limit = Duration::from_secs(1);
        let (read, mut write) = stream.into_split();
        warn!(peer.uid = peer.uid, peer.gid = peer.gid, peer.pid = ?peer.pid, "admin peer has no access; refused");
        let e = AdminError::new(
            "permission_denied",
            format!(
                "uid {} (gid {}) is in none of the admin socket's access lists (admin_uids, admin_gids, readonly_uids, readonly_gids)",
                peer.uid, peer.gid
            ),
        );
        if !send(&mut write, &reply_err(&e), limit).await {
            return;
        }
        let mut reader = LineReader::new(BufReader::new(read), MAX_LINE);
        if let Ok(Ok(Line::Text(bytes))) = tokio::time::timeout(limit, reader.next()).await {
            let line = String::from_utf8_lossy(&bytes);
            if is_mutating_verb(&line) {
                self.control
                    .audit_refusal(&Actor::admin(peer), line.trim(), &e);
            }
        }
    }

    async fn serve(
        &self,
        stream: UnixStream,
        peer: Peer,
        access: Access,
        slot: Slot,
        shutdown: CancellationToken,
    ) {
        let (read, mut write) = stream.into_split();
        let mut reader = LineReader::new(BufReader::new(read), MAX_LINE);
        loop {
            let idle = self.control.config().admin.idle_timeout;
            slot.idle();
            let next = tokio::select! {
                n = tokio::time::timeout(idle, reader.next()) => n,
                _ = slot.evicted.cancelled() => {
                    debug!(peer.uid = peer.uid, peer.pid = ?peer.pid, "idle admin client closed to make room");
                    let e = AdminError::new(
                        "idle_timeout",
                        "closed while idle: every admin connection (`admin.max_admin_clients`) was taken and another admin client needed one",
                    );
                    let _ = send(&mut write, &reply_err(&e), Duration::from_secs(1)).await;
                    return;
                }
                _ = shutdown.cancelled() => return,
            };
            slot.busy();
            let reply = match next {
                Err(_) => {
                    debug!(peer.uid = peer.uid, peer.pid = ?peer.pid, "admin client idle; closing");
                    let msg = format!("no command for {idle:?}; closing");
                    let _ = send(
                        &mut write,
                        &reply_err(&AdminError::new("idle_timeout", msg)),
                        idle,
                    )
                    .await;
                    return;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "admin read failed");
                    return;
                }
                Ok(Ok(Line::Eof)) => return,
                Ok(Ok(Line::TooLong)) => reply_err(&AdminError::bad_argument(format!(
                    "line longer than {MAX_LINE} bytes; nothing was run"
                ))),
                Ok(Ok(Line::Text(bytes))) => match String::from_utf8(bytes) {
                    Err(_) => reply_err(&AdminError::bad_argument(
                        "command is not valid UTF-8; nothing was run",
                    )),
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => match self.handle(line, peer, access).await {
                        Handled::Reply(r) => r,
                        Handled::Watch => {
                            slot.watching();
                            self.watch(reader, write, idle, shutdown).await;
                            return;
                        }
                        Handled::WaitDrained(pool, timeout) => {
                            let result = tokio::select! {
                                r = drain::wait_drained(&self.control, pool, timeout) => r,
                                // The client went away: nobody to answer.
                                _ = reader.closed() => return,
                                _ = shutdown.cancelled() => Err(AdminError::new("internal", "the daemon is shutting down")),
                            };
                            match result {
                                Ok(v) => reply_ok(v),
                                Err(e) => reply_err(&e),
                            }
                        }
                        Handled::Handover(peer, actor) => {
                            self.handover(reader, write, peer, actor).await;
                            return;
                        }
                    },
                },
            };
            if !send(&mut write, &reply, idle).await {
                return;
            }
        }
    }

    /// Parses, checks access, runs; refusals of mutating verbs are audited.
    async fn handle(&self, line: String, peer: Peer, access: Access) -> Handled {
        let line = line.trim().to_string();
        let actor = Actor::admin(peer);
        let cmd = match AdminCommand::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                if is_mutating_verb(&line) {
                    self.control.audit_refusal(&actor, &line, &e);
                }
                return Handled::Reply(reply_err(&e));
            }
        };
        if !allows(access, cmd.needs_admin()) {
            let level = json!(access);
            let e = AdminError::new(
                "permission_denied",
                format!(
                    "uid {} (gid {}, access {level}) may not run `{line}`",
                    peer.uid, peer.gid
                ),
            );
            warn!(peer.uid = peer.uid, peer.gid = peer.gid, peer.pid = ?peer.pid, command = %line, "admin command refused");
            if cmd.is_mutation() {
                self.control.audit_refusal(&actor, &line, &e);
            }
            return Handled::Reply(reply_err(&e));
        }
        match cmd {
            AdminCommand::Watch => return Handled::Watch,
            AdminCommand::WaitDrained { pool, timeout } => {
                return Handled::WaitDrained(pool, timeout)
            }
            AdminCommand::Handover => return Handled::Handover(peer, actor),
            _ => {}
        }
        let result = if cmd.is_mutation() {
            let control = self.control.clone();
            tokio::task::spawn_blocking(move || execute::execute(&control, cmd, &actor, &line))
                .await
                .unwrap_or_else(|e| {
                    Err(AdminError::new(
                        "internal",
                        format!("command task failed: {e}"),
                    ))
                })
        } else {
            execute::execute(&self.control, cmd, &actor, &line)
        };
        Handled::Reply(match result {
            Ok(v) => reply_ok(v),
            Err(e) => reply_err(&e),
        })
    }

    /// `handover`: freezes the route table, sends the listening sockets, then waits for the
    /// successor's `handover-done`; without it (the successor died or gave up) the daemon
    /// takes changes again. See [`super::handover`].
    async fn handover<R>(
        &self,
        mut reader: LineReader<R>,
        mut write: OwnedWriteHalf,
        peer: Peer,
        actor: Actor,
    ) where
        R: AsyncBufRead + Unpin,
    {
        let limit = Duration::from_secs(10);
        let Some(sockets) = self.sockets.clone() else {
            let e = AdminError::new(
                "internal",
                "this daemon has no listening sockets to hand over",
            );
            let _ = send(&mut write, &reply_err(&e), limit).await;
            return;
        };
        // Audited like a change (nothing in the route table changes), and refused like one
        // when this daemon already handed over.
        let control = self.control.clone();
        let audited = tokio::task::spawn_blocking(move || {
            control.update(&actor, handover::VERB, None, |_| Ok(()))
        })
        .await;
        let generation = match audited {
            Ok(Ok(applied)) => applied.generation,
            Ok(Err(e)) => {
                let _ = send(&mut write, &reply_err(&e), limit).await;
                return;
            }
            Err(e) => {
                let e = AdminError::new("internal", format!("command task failed: {e}"));
                let _ = send(&mut write, &reply_err(&e), limit).await;
                return;
            }
        };
        let successor = peer
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p != 0)
            .unwrap_or(u32::MAX);
        self.control.set_superseded(Some(successor));
        let line = handover::reply(generation, &sockets);
        let sent = tokio::time::timeout(limit, sockets.send(write.as_ref(), &line)).await;
        if !matches!(sent, Ok(Ok(()))) {
            warn!(
                successor.pid = successor,
                "could not send the listening sockets"
            );
            self.control.set_superseded(None);
            return;
        }
        info!(
            successor.pid = successor,
            sockets = sockets.infos().len(),
            "listening sockets handed over; waiting for the new process to confirm"
        );
        match tokio::time::timeout(HANDOVER_CONFIRM, reader.next()).await {
            Ok(Ok(Line::Text(t))) if t == handover::DONE.as_bytes() => {
                let _ = send(&mut write, &reply_ok(json!({ "handed_over": true })), limit).await;
                warn!(
                    successor.pid = successor,
                    "hand-over confirmed: the new process serves; send SIGTERM to this one (pid {}) to drain and exit",
                    std::process::id()
                );
            }
            _ => self.control.set_superseded(None),
        }
    }

    /// Streams events until the client closes, a write stalls for `idle`, or shutdown.
    async fn watch<R, W>(
        &self,
        mut reader: LineReader<R>,
        mut write: W,
        idle: std::time::Duration,
        shutdown: CancellationToken,
    ) where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Subscribe before answering, so no change between the two is missed.
        let mut events = self.control.subscribe();
        let generation = self.control.routes.load().generation;
        if !send(
            &mut write,
            &reply_ok(json!({ "watching": true, "generation": generation })),
            idle,
        )
        .await
        {
            return;
        }
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = reader.discard_until_eof() => return,
                _ = shutdown.cancelled() => return,
            };
            let line = match event {
                Ok(v) => v,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    json!({ "event": "lagged", "missed": missed })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !send(&mut write, &format!("{line}\n"), idle).await {
                return;
            }
        }
    }
}

/// Writes one reply; false when the client is gone or does not read for `limit`.
async fn send<W: AsyncWrite + Unpin>(
    write: &mut W,
    text: &str,
    limit: std::time::Duration,
) -> bool {
    matches!(
        tokio::time::timeout(limit, write.write_all(text.as_bytes())).await,
        Ok(Ok(()))
    )
}

enum Line {
    Text(Vec<u8>),
    /// Longer than the limit: the rest of it is skipped before the next line is read.
    TooLong,
    Eof,
}

/// Newline-framed input with a length bound that survives oversize and non-UTF-8 lines
/// (unlike a codec stream, which ends at its first error).
struct LineReader<R> {
    inner: R,
    max: usize,
    discarding: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            discarding: false,
        }
    }

    async fn next(&mut self) -> std::io::Result<Line> {
        let mut line = Vec::new();
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                // A last line without a newline still counts (`printf status | socat ...`).
                return Ok(if line.is_empty() || self.discarding {
                    Line::Eof
                } else {
                    Line::Text(line)
                });
            }
            let (chunk, ends) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.discarding {
                self.inner.consume(chunk + usize::from(ends));
                self.discarding = !ends;
                continue;
            }
            if line.len() + chunk > self.max {
                self.inner.consume(chunk + usize::from(ends));
                self.discarding = !ends;
                return Ok(Line::TooLong);
            }
            line.extend_from_slice(&buf[..chunk]);
            self.inner.consume(chunk + usize::from(ends));
            if ends {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Line::Text(line));
            }
        }
    }

    /// Resolves when the peer closes (or the read fails); stays pending once it sent more
    /// input, which is left unread for the next command.
    async fn closed(&mut self) {
        match self.inner.fill_buf().await {
            Ok([]) | Err(_) => {}
            Ok(_) => std::future::pending::<()>().await,
        }
    }

    /// Reads and drops input until EOF or an error (a `watch` client has nothing to say).
    async fn discard_until_eof(&mut self) {
        loop {
            match self.inner.fill_buf().await {
                Ok([]) | Err(_) => return,
                Ok(buf) => {
                    let n = buf.len();
                    self.inner.consume(n);
                }
            }
        }
    }
}

pub fn reply_ok(v: Value) -> String {
    // `ok` first, so that a human reading `echo status | socat ...` sees the verdict first.
    let body = match &v {
        Value::Object(map) if map.is_empty() => String::new(),
        Value::Object(_) => v.to_string(),
        other => json!({ "result": other }).to_string(),
    };
    let mut out = String::with_capacity(body.len() + 12);
    out.push_str("{\"ok\":true");
    if let Some(rest) = body.strip_prefix('{') {
        out.push(',');
        out.push_str(rest);
    } else {
        out.push('}');
    }
    out.push('\n');
    out
}

pub fn reply_err(e: &AdminError) -> String {
    let mut err = json!({ "code": e.code, "message": e.message });
    if let Some(key) = &e.key {
        err["key"] = json!(key);
    }
    let mut out = json!({ "ok": false, "error": err }).to_string();
    out.push('\n');
    out
}

/// Sends one command and returns the reply line (the tests use this; `ctl` uses [`crate::ctl::client`]).
pub async fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(line.as_bytes()).await?;
    write.write_all(b"\n").await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::new(BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        loop {
            match r.next().await.unwrap() {
                Line::Text(t) => out.push(String::from_utf8_lossy(&t).into_owned()),
                Line::TooLong => out.push("<too long>".into()),
                Line::Eof => return out,
            }
        }
    }

    #[tokio::test]
    async fn line_reader_bounds_lines_and_keeps_going() {
        assert_eq!(lines(b"status\r\nhelp\n", 16).await, ["status", "help"]);
        assert_eq!(lines(b"status", 16).await, ["status"]);
        let long = [&[b'x'; 100][..], b"\nstatus\n"].concat();
        assert_eq!(lines(&long, 16).await, ["<too long>", "status"]);
        assert_eq!(lines(&[b'x'; 100], 16).await, ["<too long>"]);
        assert_eq!(
            lines(b"\xff\xfe\nstatus\n", 16).await,
            ["\u{fffd}\u{fffd}", "status"]
        );
    }

    #[test]
    fn replies_put_ok_first_and_carry_the_key() {
        assert_eq!(
            reply_ok(json!({"generation": 3})),
            "{\"ok\":true,\"generation\":3}\n"
        );
        assert_eq!(reply_ok(json!({})), "{\"ok\":true}\n");
        let e = AdminError::new("reload_failed", "bad").with_key(Some("pools.blue.backends"));
        let v: Value = serde_json::from_str(&reply_err(&e)).unwrap();
        assert_eq!(v["error"]["key"], "pools.blue.backends");
    }
}
