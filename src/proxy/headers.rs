//! DATA PLANE: pure header logic — request validation, hop-by-hop removal, forwarding
//! headers and the constitutional-hash check. No I/O, no state.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::metrics::HashReason;

pub mod front;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Why a request head is refused as a smuggling shape (RFC 9112 §6.1, §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smuggling {
    ContentLengthWithTransferEncoding,
    DuplicateContentLength,
    InvalidContentLength,
    TransferEncodingNotChunked,
    /// Seen on the wire by [`crate::proxy::sniff`]: Content-Length with Transfer-Encoding,
    /// or Content-Length repeated, which the codec had already folded away.
    AmbiguousLength,
}

impl Smuggling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentLengthWithTransferEncoding => "content-length with transfer-encoding",
            Self::DuplicateContentLength => "duplicate content-length",
            Self::InvalidContentLength => "invalid content-length",
            Self::TransferEncodingNotChunked => "transfer-encoding not ending in chunked",
            Self::AmbiguousLength => "content-length with transfer-encoding or repeated",
        }
    }
}

/// Checks the framing headers of a request that reached the service. The HTTP/1 codec
/// already refuses most shapes; this is the second line for what it lets through.
pub fn check_framing(headers: &HeaderMap) -> Result<(), Smuggling> {
    let mut cls = headers.get_all(header::CONTENT_LENGTH).iter();
    let has_cl = match cls.next() {
        None => false,
        Some(first) => {
            if cls.next().is_some() {
                return Err(Smuggling::DuplicateContentLength);
            }
            let v = first.as_bytes();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Smuggling::InvalidContentLength);
            }
            true
        }
    };
    let mut last_coding: Option<&[u8]> = None;
    for te in headers.get_all(header::TRANSFER_ENCODING) {
        if let Some(c) = te.as_bytes().rsplit(|&b| b == b',').next() {
            last_coding = Some(c.trim_ascii());
        }
    }
    match last_coding {
        None => Ok(()),
        Some(_) if has_cl => Err(Smuggling::ContentLengthWithTransferEncoding),
        Some(c) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        Some(_) => Err(Smuggling::TransferEncodingNotChunked),
    }
}

/// Approximate wire size of a header block: name, value, ": " and CRLF per field.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): those named by `Connection`, and
/// Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding and Upgrade.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names says which of the fixed fields are there: most messages
    // carry none of them, or only Connection, and comparing each name (an enum compare for
    // the standard ones) is cheaper than a hashed lookup per field that is not there.
    let mut connection = false;
    let mut present = [false; FIXED_HOP_BY_HOP];
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if let Some(i) = fixed_hop_by_hop(name) {
            present[i] = true;
        }
    }
    if connection {
        strip_connection_named(headers, keep_upgrade);
    }
    for (i, there) in present.into_iter().enumerate() {
        if there && !(keep_upgrade && i == UPGRADE_INDEX) {
            headers.remove(hop_by_hop_name(i));
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade: removed by name.
const FIXED_HOP_BY_HOP: usize = 5;
const UPGRADE_INDEX: usize = 4;

fn hop_by_hop_name(i: usize) -> &'static HeaderName {
    match i {
        0 => &KEEP_ALIVE,
        1 => &PROXY_CONNECTION,
        2 => &header::TE,
        3 => &header::TRANSFER_ENCODING,
        _ => &header::UPGRADE,
    }
}

fn fixed_hop_by_hop(name: &HeaderName) -> Option<usize> {
    (0..FIXED_HOP_BY_HOP).find(|&i| name == hop_by_hop_name(i))
}

/// Takes the Connection field out and removes the fields its tokens name (no allocation
/// for the usual single value).
fn strip_connection_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) else {
        return;
    };
    let (_, mut values) = entry.remove_entry_mult();
    let first = values.next();
    let rest: Vec<HeaderValue> = values.collect();
    for value in first.iter().chain(&rest) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            // `close` and `keep-alive` name no field we would forward (Keep-Alive goes anyway).
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
                || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade"))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                headers.remove(&name);
            }
        }
    }
}

/// True when the request asks for an HTTP/1.1 protocol switch (RFC 9110 §7.8).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Appends the client address to X-Forwarded-For (de-facto standard, RFC 7239 §5.2 for
/// the semantics) and sets X-Forwarded-Proto.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => client_ip.clone(),
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// The constitutional-hash verdict on a header block.
pub fn check_hash(
    headers: &HeaderMap,
    name: &HeaderName,
    expected: &HeaderValue,
) -> Result<(), HashReason> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(HashReason::Missing),
        (Some(v), None) if v == expected => Ok(()),
        _ => Err(HashReason::Mismatch),
    }
}

/// Value of cookie `name` in the request's Cookie headers (RFC 6265 §5.4).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

#[cfg(test)]
mod tests;
