//! CONTROL PLANE: zero-downtime restart by handing the listening sockets over.
//!
//! `switchyard run --takeover` (process B) connects to the admin socket of the daemon that
//! serves the same config (process A) and sends `handover` (an admin verb). A stops changing
//! its route table (every change is refused with `superseded`, so it no longer writes the
//! state file) and answers with one JSON line that lists its listening sockets, the sockets
//! themselves attached (SCM_RIGHTS). B serves on those very sockets — the same accept
//! queues, not new sockets beside them — so no connection is refused or reset while both
//! run, and none when A closes its copies. B then restores the (now settled) state file,
//! replaces the admin socket path atomically (bind beside it, rename over it) and, once it
//! serves, sends `handover-done`. The operator (or the service manager) then sends SIGTERM
//! to A, which stops accepting, closes its keep-alive connections gently (see
//! `proxy::conn`) and exits after its in-flight requests. If B goes away before
//! `handover-done`, A takes changes again. `docs/upgrade.md` is the procedure.
//!
//! A listener of B's config takes the handed socket of the same kind whose configured or
//! actual address is its own; a listener with no match is bound afresh (SO_REUSEPORT).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The verb B sends first, and the one that confirms it serves.
pub const VERB: &str = "handover";
pub const DONE: &str = "handover-done";
/// How long B waits for each of A's replies.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most sockets handed over at once (listeners plus metrics).
const MAX_SOCKETS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    /// A plain proxy listener (`proxy.listen`).
    Http,
    /// A TLS proxy listener (`[[proxy.tls]] listen`).
    Tls,
    /// The Prometheus listener (`metrics.listen`).
    Metrics,
}

/// What A says about each socket, in the order of the attached descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    pub kind: SocketKind,
    /// The address as configured (may have port 0).
    pub config: SocketAddr,
    /// The address it is bound to.
    pub local: SocketAddr,
}

/// The listening sockets a daemon can hand to its successor: duplicates of its own.
#[derive(Default)]
pub struct Inheritable {
    sockets: Vec<(SocketInfo, OwnedFd)>,
}

impl Inheritable {
    /// Records a duplicate of `listener` (left out, with a warning, if it cannot be duplicated).
    pub fn add(
        &mut self,
        kind: SocketKind,
        config: SocketAddr,
        listener: &tokio::net::TcpListener,
    ) {
        let local = listener.local_addr().unwrap_or(config);
        match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => self.sockets.push((
                SocketInfo {
                    kind,
                    config,
                    local,
                },
                fd,
            )),
            Err(e) => {
                tracing::warn!(%local, error = %e, "cannot duplicate a listening socket; it will not be handed over")
            }
        }
    }

    pub fn infos(&self) -> Vec<SocketInfo> {
        self.sockets.iter().map(|(i, _)| i.clone()).collect()
    }

    /// Writes `reply` (one JSON line) on `stream` with every socket attached.
    pub async fn send(&self, stream: &UnixStream, reply: &str) -> io::Result<()> {
        let fds: Vec<_> = self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let sent = loop {
            stream.writable().await?;
            let attempt = stream.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                    return Err(io::Error::other("too many sockets for one message"));
                }
                rustix::net::sendmsg(
                    stream,
                    &[IoSlice::new(reply.as_bytes())],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        // The descriptors went with the first bytes; the rest of the line is plain data.
        let mut rest = &reply.as_bytes()[sent..];
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// B's side of a hand-over in progress: the sockets not yet taken and the open connection
/// to A, on which [`Takeover::complete`] confirms.
pub struct Takeover {
    stream: StdUnixStream,
    /// A's pid, as it reported it.
    pub old_pid: Option<u32>,
    sockets: Vec<Option<(SocketInfo, OwnedFd)>>,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("old_pid", &self.old_pid)
            .field("sockets", &self.sockets.len())
            .finish()
    }
}

impl Takeover {
    /// Asks the daemon at `socket` for its sockets. `Ok(None)` when nobody answers there
    /// (nothing to take over: start as usual).
    pub fn begin(socket: &Path) -> Result<Option<Takeover>, String> {
        let mut stream = match StdUnixStream::connect(socket) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach the running daemon at {}: {e}",
                    socket.display()
                ))
            }
        };
        let fail =
            |what: &str, e: io::Error| format!("hand-over from {}: {what}: {e}", socket.display());
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| fail("socket option", e))?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| fail("socket option", e))?;
        stream
            .write_all(format!("{VERB}\n").as_bytes())
            .map_err(|e| fail("send", e))?;

        let mut data = vec![0u8; 64 * 1024];
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| fail("receive", e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        let mut line = data[..got.bytes].to_vec();
        while !line.contains(&b'\n') {
            let n = stream.read(&mut data).map_err(|e| fail("receive", e))?;
            if n == 0 {
                return Err(format!(
                    "hand-over from {}: the daemon closed the connection",
                    socket.display()
                ));
            }
            line.extend_from_slice(&data[..n]);
        }
        let reply: Value = serde_json::from_slice(&line).map_err(|e| {
            format!(
                "hand-over from {}: reply is not JSON ({e})",
                socket.display()
            )
        })?;
        if reply["ok"] != true {
            return Err(format!(
                "the running daemon refused the hand-over: [{}] {}",
                reply["error"]["code"].as_str().unwrap_or("?"),
                reply["error"]["message"].as_str().unwrap_or("")
            ));
        }
        let infos: Vec<SocketInfo> = serde_json::from_value(reply["sockets"].clone())
            .map_err(|e| format!("hand-over from {}: bad socket list ({e})", socket.display()))?;
        if infos.len() != fds.len() {
            return Err(format!(
                "hand-over from {}: {} sockets announced, {} received",
                socket.display(),
                infos.len(),
                fds.len()
            ));
        }
        Ok(Some(Takeover {
            stream,
            old_pid: reply["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            sockets: infos.into_iter().zip(fds).map(Some).collect(),
        }))
    }

    /// The handed socket of `kind` whose configured or actual address is `addr`.
    pub fn take(&mut self, kind: SocketKind, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let slot = self.sockets.iter_mut().find(|s| {
            s.as_ref()
                .is_some_and(|(i, _)| i.kind == kind && (i.config == addr || i.local == addr))
        })?;
        let (_, fd) = slot.take()?;
        Some(std::net::TcpListener::from(fd))
    }

    /// What was handed over but matched no listener of this config (closed here).
    pub fn unused(&self) -> Vec<SocketInfo> {
        self.sockets
            .iter()
            .flatten()
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Tells A that this process serves; A then waits for SIGTERM.
    pub fn complete(mut self) -> Result<(), String> {
        self.stream
            .write_all(format!("{DONE}\n").as_bytes())
            .map_err(|e| format!("confirming the hand-over: {e}"))?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\n") {
            match self.stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => reply.push(byte[0]),
                Err(e) => return Err(format!("confirming the hand-over: {e}")),
            }
        }
        match serde_json::from_slice::<Value>(&reply) {
            Ok(v) if v["ok"] == true => Ok(()),
            Ok(v) => Err(format!("the old daemon did not confirm the hand-over: {v}")),
            Err(_) => {
                Err("the old daemon closed the connection before confirming the hand-over".into())
            }
        }
    }
}

/// A's reply to `handover`, before the sockets are attached.
pub fn reply(generation: u64, sockets: &Inheritable) -> String {
    let mut line = json!({
        "ok": true,
        "pid": std::process::id(),
        "generation": generation,
        "sockets": sockets.infos(),
    })
    .to_string();
    line.push('\n');
    line
}
