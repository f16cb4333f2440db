//! DATA PLANE: request ids. A client's id is kept when it is valid (1 to 128 bytes of
//! `[A-Za-z0-9._:-]`, and only one of them); otherwise the proxy makes one. The id goes to
//! the backend, back to the client and into the access log.
//!
//! A generated id is 24 lowercase hex digits: a 48-bit prefix drawn at random once per
//! process, then a 48-bit sequence number. Threads take sequence numbers in blocks of
//! 1024 from one shared counter, so making an id touches shared memory once per block.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest client id kept.
pub const MAX_LEN: usize = 128;

const BLOCK: u64 = 1024;

/// True for an id worth keeping: bounded, and only characters safe in logs and URLs.
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The request's id: the client's if valid (`false`), else a new one (`true`: it must
/// replace whatever the client sent in the forwarded request).
pub fn resolve(headers: &HeaderMap, name: &HeaderName) -> (HeaderValue, bool) {
    let mut sent = headers.get_all(name).iter();
    if let (Some(id), None) = (sent.next(), sent.next()) {
        if is_valid(id.as_bytes()) {
            return (id.clone(), false);
        }
    }
    (generate(), true)
}

/// [`resolve`], writing a new id into `headers`.
pub fn ensure(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    let (id, fresh) = resolve(headers, name);
    if fresh {
        headers.insert(name, id.clone());
    }
    id
}

/// A new id, unique within the process.
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANGE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let seq = RANGE.with(|r| {
        let (mut next, mut end) = r.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) * BLOCK;
            end = next + BLOCK;
        }
        r.set((next + 1, end));
        next
    });
    let mut buf = [0u8; 24];
    hex(&mut buf[..12], prefix);
    hex(&mut buf[12..], seq);
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// Writes the low `4 * out.len()` bits of `v` as lowercase hex.
fn hex(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    #[test]
    fn validity() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(is_valid(&[b'a'; MAX_LEN]));
        assert!(!is_valid(&[b'a'; MAX_LEN + 1]));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a b"));
        assert!(!is_valid(b"a\"b"));
        assert!(!is_valid("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_unique_hex_across_threads() {
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..3000)
                            .map(|_| generate().to_str().unwrap().to_string())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids
            .iter()
            .all(|id| id.len() == 24 && is_valid(id.as_bytes())));
    }

    #[test]
    fn a_valid_id_is_kept_and_a_bad_or_repeated_one_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("client-1"));
        assert_eq!(ensure(&mut h, &X_REQUEST_ID), "client-1");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id"));
        let made = ensure(&mut h, &X_REQUEST_ID);
        assert_eq!(made.len(), 24);
        assert_eq!(h[&X_REQUEST_ID], made);
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        let again = ensure(&mut h, &X_REQUEST_ID);
        assert_ne!(again, made);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        let mut empty = HeaderMap::new();
        assert_eq!(ensure(&mut empty, &X_REQUEST_ID).len(), 24);
    }
}
