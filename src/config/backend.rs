//! Backend addresses: `host:port` with a host name, an IPv4 address or a bracketed
//! IPv6 address. Names are resolved later, by the data plane, never here.

use std::net::{Ipv4Addr, Ipv6Addr};

const EXAMPLE: &str =
    "expected host:port such as \"127.0.0.1:9011\", \"app-1.internal:8080\" or \"[::1]:9011\"";

/// Checks one backend and returns a normalised form (lowercase host, canonical IP,
/// decimal port) used to spot duplicates.
pub(crate) fn parse_backend(text: &str) -> Result<String, String> {
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "\"{text}\" has a scheme or a path; write only host:port, {EXAMPLE}"
        ));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("\"{text}\" has no port after the IPv6 address; {EXAMPLE}"))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" is not an IPv6 address; {EXAMPLE}"))?;
        return Ok(format!("[{ip}]:{}", parse_port(text, port)?));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("\"{text}\" has no port; {EXAMPLE}"));
    };
    if host.contains(':') {
        return Err(format!(
            "\"{text}\" looks like an IPv6 address without brackets; write it as \"[{host}]:{port}\" (host:port with the address in brackets)"
        ));
    }
    let port = parse_port(text, port)?;
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("\"{host}\" is not an IPv4 address; {EXAMPLE}"))?;
        return Ok(format!("{ip}:{port}"));
    }
    if !is_host_name(host) {
        return Err(format!(
            "\"{host}\" is not a host name (letters, digits, '-' and '.' only); {EXAMPLE}"
        ));
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

fn parse_port(text: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!(
            "\"{text}\" has port \"{port}\"; a port is a number from 1 to 65535, {EXAMPLE}"
        )),
    }
}

/// RFC 1123 host name; `_` is tolerated because internal DNS zones use it.
fn is_host_name(host: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (1..=253).contains(&host.len()) && host.split('.').all(label_ok)
}
