//! CONTROL PLANE: the admin unix socket. One command per line of words in, one JSON line
//! out: `{"ok":true,...}` or `{"ok":false,"error":{"code":...,"message":...}}`.
//!
//! Verbs: `status`, `weight PERCENT [expect-gen N]`, `help` (see [`super::command::VERBS`]).
//!
//! Peers are identified by SO_PEERCRED. Root, the daemon's own user and the configured
//! admin uids/gids may mutate; configured read-only uids/gids may only read; anyone else
//! is refused. Lines are bounded in length, clients in number and in idle time.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::command::{AdminCommand, AdminError, VERBS};
use super::Control;
use crate::config::AdminConfig;

/// Longest accepted command line.
pub const MAX_LINE: usize = 4096;

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    ReadOnly,
    Denied,
}

/// Creates the socket (replacing a stale one) with the configured mode.
pub fn bind(cfg: &AdminConfig) -> std::io::Result<UnixListener> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.mode))?;
    Ok(listener)
}

pub struct AdminServer {
    pub control: Arc<Control>,
    pub cfg: AdminConfig,
    /// The daemon's own uid: the owner of the socket it created.
    pub own_uid: u32,
}

impl AdminServer {
    pub fn new(control: Arc<Control>, cfg: AdminConfig) -> Self {
        let own_uid = std::fs::metadata(&cfg.socket).map(|m| m.uid()).unwrap_or(0);
        AdminServer { control, cfg, own_uid }
    }

    pub fn access(&self, uid: u32, gid: u32) -> Access {
        let c = &self.cfg;
        if uid == 0 || uid == self.own_uid || c.admin_uids.contains(&uid) || c.admin_gids.contains(&gid) {
            Access::Admin
        } else if c.readonly_uids.contains(&uid) || c.readonly_gids.contains(&gid) {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }

    pub async fn run(self: Arc<Self>, listener: UnixListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_clients));
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
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let mut stream = stream;
                let _ = stream.write_all(reply_err(&AdminError::new("busy", "too many admin clients")).as_bytes()).await;
                continue;
            };
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                this.serve(stream, shutdown).await;
                drop(permit);
            });
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
    }

    async fn serve(&self, stream: UnixStream, shutdown: CancellationToken) {
        let (uid, gid, pid) = match stream.peer_cred() {
            Ok(c) => (c.uid(), c.gid(), c.pid()),
            Err(e) => {
                warn!(error = %e, "admin peer credentials unavailable");
                return;
            }
        };
        let access = self.access(uid, gid);
        let (read, mut write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(self.cfg.idle_timeout, lines.next()) => n,
                _ = shutdown.cancelled() => return,
            };
            let reply = match next {
                Err(_) => {
                    debug!(peer.uid = uid, "admin client idle; closing");
                    return;
                }
                Ok(None) => return,
                Ok(Some(Ok(line))) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    self.execute(&line, access, uid, pid)
                }
                Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                    reply_err(&AdminError::bad_argument(format!("line longer than {MAX_LINE} bytes")))
                }
                Ok(Some(Err(LinesCodecError::Io(e)))) => {
                    let msg = if e.kind() == std::io::ErrorKind::InvalidData {
                        "command is not valid UTF-8".to_string()
                    } else {
                        e.to_string()
                    };
                    let _ = write.write_all(reply_err(&AdminError::bad_argument(msg)).as_bytes()).await;
                    return;
                }
            };
            if write.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Runs one command line and renders its reply line.
    pub fn execute(&self, line: &str, access: Access, uid: u32, pid: Option<i32>) -> String {
        let cmd = match AdminCommand::parse(line) {
            Ok(c) => c,
            Err(e) => return reply_err(&e),
        };
        let allowed = match access {
            Access::Admin => true,
            Access::ReadOnly => !cmd.is_mutation(),
            Access::Denied => false,
        };
        if !allowed {
            warn!(peer.uid = uid, peer.pid = ?pid, command = line, "admin command refused");
            return reply_err(&AdminError::new("permission_denied", format!("uid {uid} may not run `{line}`")));
        }
        let result = match cmd {
            AdminCommand::Status => Ok(self.control.status()),
            AdminCommand::Help => Ok(json!({
                "commands": VERBS.iter().map(|(u, p)| json!({"usage": u, "purpose": p})).collect::<Vec<_>>()
            })),
            AdminCommand::Weight { green_bp, expect_gen } => {
                let before = self.control.routes.load();
                self.control.set_weight(green_bp, expect_gen).map(|t| {
                    info!(peer.uid = uid, peer.pid = ?pid, from_bp = before.green_bp, to_bp = t.green_bp,
                        generation = t.generation, "weight changed");
                    json!({ "generation": t.generation, "green_percent": super::percent(t.green_bp) })
                })
            }
        };
        match result {
            Ok(v) => reply_ok(v),
            Err(e) => reply_err(&e),
        }
    }
}

fn reply_ok(v: Value) -> String {
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
    let mut out = json!({ "ok": false, "error": { "code": e.code, "message": e.message } }).to_string();
    out.push('\n');
    out
}

/// Sends one command and returns the reply line (the `ctl` client and tests use this).
pub async fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    use tokio::io::AsyncBufReadExt;
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(line.as_bytes()).await?;
    write.write_all(b"\n").await?;
    let mut reply = String::new();
    tokio::io::BufReader::new(read).read_line(&mut reply).await?;
    Ok(reply)
}
