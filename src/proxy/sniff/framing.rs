//! DATA PLANE: the framing policy. A request head that frames its body ambiguously
//! (`Content-Length` with `Transfer-Encoding`, or `Content-Length` twice) is refused.
//!
//! hyper reads `Content-Length` together with `Transfer-Encoding` as chunked (dropping
//! the length), and folds repeated identical `Content-Length` fields into one, so neither
//! shape is visible to the service afterwards. RFC 9112 §6.1 lets a server reject them,
//! and a front door must: the backend or another hop may frame the same bytes differently.
//! The [`Scanner`] follows the raw request stream — heads field by field, bodies skipped
//! by their framing — and names the first request whose head had such a shape; the
//! service answers that request (and so the connection) with 400
//! ([`FramingVerdict::is_bad`]).
//!
//! The scan looks at field names (found with `memchr`) and the two framing values byte by
//! byte; the rest of a request line or of another field's value is skipped with `memchr`
//! to its newline, and body bytes are skipped by count.

use std::sync::atomic::Ordering;

use super::FramingVerdict;

impl FramingVerdict {
    /// Whether request number `index` (0-based, on this connection) or an earlier one was
    /// refused by the scan.
    pub fn is_bad(&self, index: u64) -> bool {
        index >= self.first_bad.load(Ordering::Acquire)
    }

    /// Records a refused request from the scan.
    pub(super) fn refuse(&self, index: u64) {
        self.first_bad.fetch_min(index, Ordering::AcqRel);
    }
}

const NAME_MAX: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head.
    Head,
    /// Skipping `n` bytes of a fixed-length body.
    Fixed(u64),
    ChunkSize,
    ChunkExt,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// HTTP/2 or a refused head: nothing more to learn.
    Off,
}

/// Incremental scanner of an HTTP/1.1 request stream.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    request: u64,
    /// The current name so far (lowercased, capped at NAME_MAX) and its length.
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Bytes of the current line so far, carriage returns aside (only zero or not matters:
    /// an empty line ends a head).
    line_len: usize,
    first_line: bool,
    in_value: Option<Field>,
    cl_count: u32,
    cl_value: Option<u64>,
    te: bool,
    te_last_chunked: bool,
    chunk_size: u64,
    chunk_digits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Other,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head,
            request: 0,
            name: [0; NAME_MAX],
            name_len: 0,
            line_len: 0,
            first_line: true,
            in_value: None,
            cl_count: 0,
            cl_value: None,
            te: false,
            te_last_chunked: false,
            chunk_size: 0,
            chunk_digits: false,
        }
    }
}

impl Scanner {
    /// The bytes fed so far end between two requests: no partial head, no body left.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head && self.first_line && self.line_len == 0 && self.name_len == 0
    }

    /// The bytes fed so far end inside a request head.
    pub fn in_head(&self) -> bool {
        self.state == State::Head && !self.at_boundary()
    }

    /// Complete request heads fed so far.
    pub fn heads(&self) -> u64 {
        self.request
    }

    /// Feeds bytes read from the client; returns the index of a refused request, if the
    /// chunk completed one.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        while !data.is_empty() {
            match self.state {
                State::Off => return None,
                State::Fixed(n) => {
                    self.state = skip(&mut data, n).map_or(State::Head, State::Fixed);
                }
                State::ChunkData(n) => {
                    self.state = skip(&mut data, n).map_or(State::ChunkDataEnd, State::ChunkData);
                }
                State::Head if !self.first_line && self.in_value.is_none() => {
                    // A field name: its bytes up to the colon (or a line end, or a carriage
                    // return, which the byte loop handles) in one go.
                    let end = memchr::memchr3(b':', b'\n', b'\r', data).unwrap_or(data.len());
                    for &b in &data[..end] {
                        self.line_len += 1;
                        self.push_name_byte(b);
                    }
                    data = &data[end..];
                    if let Some((&b, rest)) = data.split_first() {
                        data = rest;
                        if let Some(bad) = self.byte(b) {
                            return Some(bad);
                        }
                    }
                }
                State::Head if self.skips_to_line_end() => {
                    // The rest of this line cannot change a verdict: jump to its end (the
                    // byte loop below then takes the newline).
                    let Some(at) = memchr::memchr(b'\n', data) else {
                        self.line_len += data.len();
                        return None;
                    };
                    self.line_len += at;
                    data = &data[at..];
                    if let Some(bad) = self.byte(b'\n') {
                        return Some(bad);
                    }
                    data = &data[1..];
                }
                _ => {
                    let b = data[0];
                    data = &data[1..];
                    if let Some(bad) = self.byte(b) {
                        return Some(bad);
                    }
                }
            }
        }
        None
    }

    /// One more byte of a field name, lowercased; a name longer than any we look for is
    /// spoiled so that it matches none.
    fn push_name_byte(&mut self, b: u8) {
        if self.name_len < NAME_MAX {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            self.name_len = NAME_MAX;
            self.name[0] = 0;
        }
    }

    /// Inside a head line whose remaining bytes are not looked at: the request line once
    /// its first bytes are known (only `PRI` matters there), or the value of a field other
    /// than Content-Length and Transfer-Encoding. `line_len` is already non-zero then, and
    /// only whether it is zero is read.
    fn skips_to_line_end(&self) -> bool {
        if self.first_line {
            self.name_len >= 3
        } else {
            self.in_value == Some(Field::Other)
        }
    }

    fn byte(&mut self, b: u8) -> Option<u64> {
        match self.state {
            State::Head => return self.head_byte(b),
            State::ChunkSize => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.chunk_size = self.chunk_size.saturating_mul(16).saturating_add(d);
                    self.chunk_digits = true;
                }
                b';' => self.state = State::ChunkExt,
                b'\n' => self.end_chunk_size(),
                _ => {}
            },
            State::ChunkExt => {
                if b == b'\n' {
                    self.end_chunk_size();
                }
            }
            State::ChunkDataEnd => {
                if b == b'\n' {
                    self.state = State::ChunkSize;
                }
            }
            State::Trailers => {
                if b == b'\n' {
                    if self.line_len == 0 {
                        self.reset_head();
                    }
                    self.line_len = 0;
                } else if b != b'\r' {
                    self.line_len += 1;
                }
            }
            State::Fixed(_) | State::ChunkData(_) | State::Off => {}
        }
        None
    }

    fn end_chunk_size(&mut self) {
        if !self.chunk_digits {
            // Not chunked framing after all; the codec will refuse it. Stop guessing.
            self.state = State::Off;
        } else if self.chunk_size == 0 {
            self.line_len = 0;
            self.state = State::Trailers;
        } else {
            self.state = State::ChunkData(self.chunk_size);
        }
        self.chunk_size = 0;
        self.chunk_digits = false;
    }

    fn reset_head(&mut self) {
        self.state = State::Head;
        self.first_line = true;
        self.line_len = 0;
        self.name_len = 0;
        self.in_value = None;
        self.cl_count = 0;
        self.cl_value = None;
        self.te = false;
        self.te_last_chunked = false;
    }

    fn head_byte(&mut self, b: u8) -> Option<u64> {
        if b == b'\n' {
            let empty = self.line_len == 0;
            self.line_len = 0;
            self.name_len = 0;
            self.in_value = None;
            if self.first_line {
                if empty {
                    return None; // tolerated leading CRLF before a request line
                }
                if self.name[..3.min(NAME_MAX)] == *b"pri" {
                    self.state = State::Off; // HTTP/2 connection preface
                }
                self.first_line = false;
                return None;
            }
            if empty {
                return self.end_head();
            }
            return None;
        }
        if b == b'\r' {
            return None;
        }
        self.line_len += 1;
        if self.first_line {
            if self.name_len < NAME_MAX {
                self.name[self.name_len] = b.to_ascii_lowercase();
                self.name_len += 1;
            }
            return None;
        }
        match self.in_value {
            None if b == b':' => {
                let name = &self.name[..self.name_len];
                let field = match name {
                    b"content-length" => Field::ContentLength,
                    b"transfer-encoding" => Field::TransferEncoding,
                    _ => Field::Other,
                };
                match field {
                    Field::ContentLength => {
                        self.cl_count += 1;
                        self.cl_value = Some(0);
                    }
                    Field::TransferEncoding => {
                        self.te = true;
                        self.te_last_chunked = false;
                    }
                    Field::Other => {}
                }
                self.name_len = 0;
                self.in_value = Some(field);
            }
            None => self.push_name_byte(b),
            Some(Field::ContentLength) => {
                if b.is_ascii_digit() {
                    self.cl_value = self
                        .cl_value
                        .map(|v| v.saturating_mul(10).saturating_add(u64::from(b - b'0')));
                }
            }
            Some(Field::TransferEncoding) => {
                // Track the last word: "chunked" must end the list.
                if b == b',' {
                    self.name_len = 0;
                } else if !b.is_ascii_whitespace() && self.name_len < NAME_MAX {
                    self.name[self.name_len] = b.to_ascii_lowercase();
                    self.name_len += 1;
                }
                self.te_last_chunked = &self.name[..self.name_len] == b"chunked";
            }
            Some(Field::Other) => {}
        }
        None
    }

    fn end_head(&mut self) -> Option<u64> {
        let index = self.request;
        self.request += 1;
        if self.cl_count > 1 || (self.te && self.cl_count > 0) {
            self.state = State::Off;
            return Some(index);
        }
        let next = if self.te && self.te_last_chunked {
            State::ChunkSize
        } else if self.te {
            State::Off // refused by the codec
        } else {
            match self.cl_value {
                Some(n) if n > 0 => State::Fixed(n),
                _ => State::Head,
            }
        };
        self.reset_head();
        self.state = next;
        None
    }
}

/// Skips up to `n` bytes of `data`; returns how many are still to skip, if any.
fn skip(data: &mut &[u8], n: u64) -> Option<u64> {
    let take = n.min(data.len() as u64);
    *data = &data[take as usize..];
    (take < n).then(|| n - take)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = Scanner::default();
        chunks.iter().find_map(|c| s.feed(c))
    }

    #[test]
    fn flags_content_length_with_transfer_encoding_either_order() {
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            Some(0)
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"]),
            Some(0)
        );
    }

    #[test]
    fn flags_duplicate_content_length() {
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"]),
            Some(0)
        );
    }

    #[test]
    fn follows_bodies_to_the_next_head_across_reads() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 40\r\n\r\n\
Content-Length: 1\r\nContent-Length: 2\r\n\r\nxxxx\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
GET /d HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Whole, and split at every position: the body of /a looks like a bad head but is skipped.
        assert_eq!(scan(&[stream]), Some(3));
        for cut in 1..stream.len() {
            assert_eq!(
                scan(&[&stream[..cut], &stream[cut..]]),
                Some(3),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn skipped_lines_leave_the_same_state_as_byte_by_byte() {
        let stream: &[u8] = b"\r\nGET /a-rather-long-path?with=query HTTP/1.1\r\nHost: example\r\n\
User-Agent: a value long enough to be skipped: with colons\r\n\
X-Empty:\r\nX-A-Field-Name-Longer-Than-Twenty-Bytes: 1\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 3\r\nAccept: */*\r\n\r\nabc\
GET /c HTTP/1.1\r\nX-A: 1\r\nContent-Length: 1\r\nX-B: 2\r\nContent-Length: 1\r\n\r\n";
        let mut bytewise = Scanner::default();
        let mut verdict = None;
        for end in 1..=stream.len() {
            verdict = verdict.or(bytewise.feed(&stream[end - 1..end]));
            let mut whole = Scanner::default();
            let whole_verdict = whole.feed(&stream[..end]);
            let state = |s: &Scanner| (s.heads(), s.at_boundary(), s.in_head());
            assert_eq!(state(&whole), state(&bytewise), "after {end} bytes");
            assert_eq!(whole_verdict, verdict, "after {end} bytes");
        }
        assert_eq!(verdict, Some(2));
        assert_eq!(bytewise.heads(), 3);
    }

    #[test]
    fn stops_at_http2_preface_but_not_at_an_upgrade_request() {
        assert_eq!(
            scan(&[
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            ]),
            None
        );
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            Some(1)
        );
    }
}
