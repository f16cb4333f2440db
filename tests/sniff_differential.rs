//! Differential test of the framing scan (`switchyard::proxy::sniff::Scanner`) against
//! httparse, the parser hyper's HTTP/1.1 codec uses: on generated streams of pipelined,
//! well-formed requests, both must put the end of every request head at the same byte,
//! however the stream is split into reads. Two parsers that disagreed on where a head ends
//! would disagree on framing, which is what request smuggling lives on.
//!
//! Bounded: `SWITCHYARD_DIFF_CASES` streams (default 1500) from seed `SWITCHYARD_DIFF_SEED`
//! (default fixed). A longer run is in bench/README.md ("Framing scan differential run").

#![allow(clippy::unwrap_used)]

use switchyard::proxy::sniff::Scanner;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "OPTIONS"];
const NAMES: [&str; 12] = [
    "Host",
    "Accept",
    "User-Agent",
    "X-Constitutional-Hash",
    "Content-Type",
    "X-Content-Length",
    "Content-Lengthy",
    "Transfer-Encodings",
    "Upgrade",
    "Connection",
    "X_Under_Score",
    "Cookie",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random case for each letter: names are case-insensitive.
fn mixed_case(rng: &mut fastrand::Rng, s: &str) -> String {
    s.chars()
        .map(|c| {
            if rng.bool() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A field value: visible characters, spaces and tabs inside, colons and look-alikes of
/// framing fields included.
fn value(rng: &mut fastrand::Rng) -> String {
    const PIECES: [&str; 8] = [
        "a",
        "Content-Length: 9",
        ":",
        " ",
        "\t",
        "chunked",
        "0\r",
        "x",
    ];
    let mut v = String::from("v");
    for _ in 0..rng.usize(0..6) {
        let p = PIECES[rng.usize(..PIECES.len())];
        // A bare CR is not allowed in a value; keep only whole pieces without one.
        if !p.contains('\r') {
            v.push_str(p);
        }
    }
    v.trim_end().to_string()
}

/// One well-formed request: its bytes and the length of its head.
fn request(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    let eol = if rng.u8(..8) == 0 { "\n" } else { "\r\n" };
    let mut head = String::new();
    if rng.u8(..10) == 0 {
        head.push_str(eol); // an empty line before the request line is tolerated
    }
    let method = METHODS[rng.usize(..METHODS.len())];
    let path: String = (0..rng.usize(1..30))
        .map(|_| char::from(b"/abc?=&%-_.~"[rng.usize(..12)]))
        .collect();
    head.push_str(&format!("{method} /{path} HTTP/1.{}{eol}", rng.u8(0..2)));
    for _ in 0..rng.usize(0..8) {
        let pick = NAMES[rng.usize(..NAMES.len())];
        let name = mixed_case(rng, pick);
        let ows = [" ", "", "  ", "\t"][rng.usize(..4)];
        head.push_str(&format!("{name}:{ows}{}{eol}", value(rng)));
    }
    let body: Vec<u8> = match rng.u8(..3) {
        0 => Vec::new(),
        1 => {
            let n = rng.usize(0..200);
            let name = mixed_case(rng, "Content-Length");
            head.push_str(&format!("{name}: {n}{eol}"));
            // A body that looks like more heads must be skipped, not parsed.
            let filler = b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
            (0..n).map(|i| filler[i % filler.len()]).collect()
        }
        _ => {
            let name = mixed_case(rng, "Transfer-Encoding");
            let coding = mixed_case(rng, "chunked");
            head.push_str(&format!("{name}: {coding}{eol}"));
            let mut b = Vec::new();
            for _ in 0..rng.usize(0..4) {
                let n = rng.usize(1..40);
                let ext = if rng.bool() { ";x=1" } else { "" };
                b.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                b.extend((0..n).map(|_| b"\r\nab"[rng.usize(..4)]));
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n");
            if rng.bool() {
                b.extend_from_slice(b"X-Trailer: 1\r\n");
            }
            b.extend_from_slice(b"\r\n");
            b
        }
    };
    head.push_str(eol);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
}

/// Where httparse ends each head in `stream`, following bodies by the generator's framing
/// (read back from the parsed fields, as hyper does).
fn httparse_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut fields);
        let n = match req.parse(&stream[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "generated request not accepted by httparse ({other:?}): {:?}",
                String::from_utf8_lossy(&stream[at..])
            ),
        };
        at += n;
        ends.push(at);
        let mut cl = None;
        let mut chunked = false;
        for f in req.headers.iter() {
            if f.name.eq_ignore_ascii_case("content-length") {
                cl = std::str::from_utf8(f.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        if chunked {
            at = skip_chunked(stream, at);
        } else {
            at += cl.unwrap_or(0);
        }
    }
    ends
}

fn skip_chunked(stream: &[u8], mut at: usize) -> usize {
    loop {
        let (size, n) = match httparse::parse_chunk_size(&stream[at..]).unwrap() {
            httparse::Status::Complete(x) => x,
            httparse::Status::Partial => panic!("partial chunk size"),
        };
        at += size;
        if n == 0 {
            // Trailer lines up to an empty one.
            loop {
                let line_end = at + stream[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
                let empty = line_end - at <= 2;
                at = line_end;
                if empty {
                    return at;
                }
            }
        }
        at += n as usize + 2;
    }
}

/// Where the scanner ends each head, fed one byte at a time.
fn scanner_ends(stream: &[u8]) -> Vec<usize> {
    let mut s = Scanner::default();
    let mut ends = Vec::new();
    for (i, b) in stream.iter().enumerate() {
        let before = s.heads();
        assert_eq!(
            s.feed(std::slice::from_ref(b)),
            None,
            "refused a well-formed stream"
        );
        if s.heads() > before {
            ends.push(i + 1);
        }
    }
    assert!(s.at_boundary(), "stream ends between requests");
    ends
}

#[test]
fn scanner_and_httparse_agree_on_where_every_head_ends() {
    let cases = env_u64("SWITCHYARD_DIFF_CASES", 1500);
    let seed = env_u64("SWITCHYARD_DIFF_SEED", 0x5eed_f00d);
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..cases {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..5) {
            request(&mut rng, &mut stream);
        }
        let expected = httparse_ends(&stream);
        let got = scanner_ends(&stream);
        assert_eq!(
            got,
            expected,
            "seed {seed} case {case}: {:?}",
            String::from_utf8_lossy(&stream)
        );
        // Any split into reads gives the same count of heads and the same verdict.
        let mut s = Scanner::default();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let take = rng.usize(1..=rest.len().min(64));
            assert_eq!(s.feed(&rest[..take]), None, "seed {seed} case {case}");
            rest = &rest[take..];
        }
        assert_eq!(
            s.heads() as usize,
            expected.len(),
            "seed {seed} case {case}"
        );
    }
}
