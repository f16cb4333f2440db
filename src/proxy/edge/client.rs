//! DATA PLANE: who the client is. With `proxy.trusted_hops = N`, the last N entries of
//! X-Forwarded-For were added by proxies the operator runs, so the client is the N-th entry
//! counted from the right (the leftmost if there are fewer); with 0, or without a usable
//! entry, it is the peer of the connection. Entries that are not addresses are ignored.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderMap;

use crate::proxy::headers::X_FORWARDED_FOR;

/// The client address of a request (see the module doc).
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted_hops: u32) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let mut picked = None;
    let mut seen = 0u32;
    'outer: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let Some(ip) = parse(entry) else { continue };
            picked = Some(ip);
            seen += 1;
            if seen == trusted_hops {
                break 'outer;
            }
        }
    }
    picked.unwrap_or(peer)
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `1.2.3.4:5678`, `[2001:db8::1]:80`.
fn parse(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hops_count_from_the_right() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let h = xff(&["1.1.1.1, 2.2.2.2", "3.3.3.3:4444"]);
        assert_eq!(client_addr(&h, peer, 0), peer);
        for (hops, want) in [
            (1, "3.3.3.3"),
            (2, "2.2.2.2"),
            (3, "1.1.1.1"),
            (9, "1.1.1.1"),
        ] {
            let want: IpAddr = want.parse().unwrap();
            assert_eq!(client_addr(&h, peer, hops), want, "{hops} hops");
        }
    }

    #[test]
    fn junk_and_missing_headers_fall_back_to_the_peer() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_addr(&HeaderMap::new(), peer, 1), peer);
        assert_eq!(client_addr(&xff(&["unknown"]), peer, 1), peer);
        let h = xff(&["[2001:db8::1]:80, junk"]);
        assert_eq!(
            client_addr(&h, peer, 1),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}
