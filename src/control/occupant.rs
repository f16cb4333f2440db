//! CONTROL PLANE (start-up): who holds an address this daemon could not bind. Without
//! SO_REUSEPORT a second daemon on the same port fails to start instead of silently
//! taking part of the traffic; this names the process in the way, from `/proc` (Linux),
//! and, when the config's admin socket answers, that daemon's pid and generation.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// A clause for the error message, starting with a space: ` by pid 123 (switchyard); ...`,
/// or empty when nothing is known.
pub fn describe(addr: SocketAddr, admin_socket: &Path) -> String {
    let mut out = String::new();
    if let Some((pid, comm)) = listener_inode(addr).and_then(process_of_socket) {
        out.push_str(&format!(" by pid {pid} ({comm})"));
    }
    if let Some((pid, generation)) = daemon_on(admin_socket) {
        out.push_str(&format!(
            "; the switchyard daemon on {} is pid {pid} at generation {generation}",
            admin_socket.display()
        ));
    }
    out
}

/// Pid and generation from `status` on a live admin socket (1 s limit).
fn daemon_on(socket: &Path) -> Option<(u64, u64)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    stream.write_all(b"status\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    Some((v["pid"].as_u64()?, v["generation"].as_u64()?))
}

/// The inode of a listening TCP socket on `addr` (or on the wildcard of its family).
fn listener_inode(addr: SocketAddr) -> Option<u64> {
    let table = match addr {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        if *state != "0A" {
            return None; // not LISTEN
        }
        let (ip, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let ip = parse_proc_ip(ip)?;
        let matches = port == addr.port()
            && (ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified());
        matches.then(|| inode.parse().ok()).flatten()
    })
}

/// `/proc/net/tcp*` prints addresses as 32-bit words in host byte order.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// The process (pid, command name) holding socket `inode`, other than this one.
fn process_of_socket(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == own {
                return None;
            }
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
            });
            holds.then(|| {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                (pid, comm.trim().to_string())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_addresses() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            parse_proc_ip(&format!("{lo:08X}")),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            parse_proc_ip(&format!("000000000000000000000000{one:08X}")),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(parse_proc_ip("zz"), None);
    }

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listener_inode(addr).is_some(), "{addr} is listening");
    }
}
