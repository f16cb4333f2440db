//! DATA PLANE: pure front-door checks on a request head — its Host (RFC 9112 §3.2,
//! RFC 9113 §8.3.1), field names that a backend may read as the hash or request-id
//! header, and trailers. No I/O, no state.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

/// Why a request's Host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    /// HTTP/1.1 without Host, or HTTP/2 with neither `:authority` nor `host`.
    Missing,
    /// More than one Host field.
    Duplicate,
    /// A Host (or a target authority) that is not a valid `uri-host [ ":" port ]`.
    Invalid,
}

impl HostProblem {
    /// The code of the JSON body and the access log's `error`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_host",
            Self::Duplicate => "duplicate_host",
            Self::Invalid => "invalid_host",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "request has no host",
            Self::Duplicate => "request has more than one host field",
            Self::Invalid => "host is not a valid authority",
        }
    }
}

/// What the forwarded request's Host becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum HostPlan {
    /// The request's own Host is right.
    Keep,
    /// Replaced by the target's authority (absolute form, or HTTP/2 `:authority`).
    Set(HeaderValue),
    /// HTTP/1.0 with no Host and no authority: the backend's address is sent as Host.
    Backend,
}

/// Decides the Host of a request, or refuses it.
///
/// A request with more than one Host, or an invalid one, is refused whatever its version
/// (RFC 9112 §3.2). When the target carries an authority (absolute form in HTTP/1.1,
/// `:authority` in HTTP/2) it wins over Host (RFC 9112 §3.2.2; RFC 9113 §8.3.1 lets a
/// server refuse a disagreeing `host` instead: the proxy forwards the authority). HTTP/1.1
/// and HTTP/2 without any host are refused; HTTP/1.0 without one is sent on with the
/// backend's address as Host.
pub fn check_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<HostPlan, HostProblem> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostProblem::Duplicate);
    }
    if host.is_some_and(|h| !valid_authority(h.as_bytes())) {
        return Err(HostProblem::Invalid);
    }
    if let Some(authority) = uri.authority() {
        let a = authority.as_str();
        if !valid_authority(a.as_bytes()) {
            return Err(HostProblem::Invalid);
        }
        if host.is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(a.as_bytes())) {
            return Ok(HostPlan::Keep);
        }
        return HeaderValue::from_str(a)
            .map(HostPlan::Set)
            .map_err(|_| HostProblem::Invalid);
    }
    match host {
        Some(_) => Ok(HostPlan::Keep),
        None if version < Version::HTTP_11 => Ok(HostPlan::Backend),
        None => Err(HostProblem::Missing),
    }
}

/// `uri-host [ ":" port ]` by its characters (RFC 3986 §3.2.2): reg-name, IP literal or
/// IPv4 characters; no userinfo, no path, no space. Empty is invalid.
pub fn valid_authority(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                        | b'%'
                )
        })
}

/// Whether `name` reads as `target` once every `_` is read as `-` (names are lowercase),
/// without being `target` itself: what CGI/WSGI-style backends take for the same field.
/// A name without `_` is never a twin, and most names are told apart by length alone.
fn underscore_twin(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len()
        && memchr::memchr(b'_', name).is_some()
        && name
            .iter()
            .zip(target)
            .all(|(&n, &t)| n == t || (n == b'_' && t == b'-'))
}

/// Whether `name` is a twin of the hash header or of the request-id header.
fn is_twin(name: &[u8], hash: &[u8], id: &[u8]) -> bool {
    underscore_twin(name, hash) || underscore_twin(name, id)
}

/// The first field whose name is a twin of the hash header or of the request-id header
/// (see `underscore_twin`).
pub fn ambiguous_field<'a>(
    headers: &'a HeaderMap,
    hash: &HeaderName,
    request_id: Option<&HeaderName>,
) -> Option<&'a HeaderName> {
    let hash = hash.as_str().as_bytes();
    let id = request_id.map_or(&b""[..], |n| n.as_str().as_bytes());
    headers
        .keys()
        .find(|name| is_twin(name.as_str().as_bytes(), hash, id))
}

/// One pass over a request's fields: their approximate wire size (as
/// [`super::header_bytes`]) and the first twin of the hash or request-id header (as
/// [`ambiguous_field`]). The request path reads each name once for both.
pub fn size_and_twin<'a>(
    headers: &'a HeaderMap,
    hash: &HeaderName,
    request_id: Option<&HeaderName>,
) -> (usize, Option<&'a HeaderName>) {
    let hash = hash.as_str().as_bytes();
    let id = request_id.map_or(&b""[..], |n| n.as_str().as_bytes());
    let mut size = 0;
    let mut twin = None;
    for (name, value) in headers {
        let n = name.as_str().as_bytes();
        size += n.len() + value.len() + 4;
        if twin.is_none() && is_twin(n, hash, id) {
            twin = Some(name);
        }
    }
    (size, twin)
}

/// Cleans a trailer section in either direction: no hop-by-hop field, no hash header, no
/// request-id header, and none of their `_` twins, crosses the proxy in trailers.
pub fn strip_trailers(
    trailers: &mut HeaderMap,
    hash: &HeaderName,
    request_id: Option<&HeaderName>,
) {
    super::strip_hop_by_hop(trailers, false);
    trailers.remove(hash);
    if let Some(id) = request_id {
        trailers.remove(id);
    }
    while let Some(twin) = ambiguous_field(trailers, hash, request_id).cloned() {
        trailers.remove(&twin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proxy::headers::tests::map;

    fn plan(version: Version, uri: &str, fields: &[(&str, &str)]) -> Result<HostPlan, HostProblem> {
        check_host(version, &uri.parse().unwrap(), &map(fields))
    }

    #[test]
    fn host_rules_by_version_and_target_form() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        assert_eq!(
            plan(HTTP_11, "/", &[("host", "a.test")]),
            Ok(HostPlan::Keep)
        );
        assert_eq!(plan(HTTP_11, "/", &[]), Err(HostProblem::Missing));
        assert_eq!(
            plan(HTTP_11, "/", &[("host", "a.test"), ("host", "a.test")]),
            Err(HostProblem::Duplicate)
        );
        for bad in ["", "a b", "u@a.test", "a.test/x", "a\"b"] {
            assert_eq!(
                plan(HTTP_11, "/", &[("host", bad)]),
                Err(HostProblem::Invalid),
                "{bad:?}"
            );
        }
        assert_eq!(plan(HTTP_10, "/", &[]), Ok(HostPlan::Backend));
        assert_eq!(
            plan(HTTP_10, "/", &[("host", "a"), ("host", "b")]),
            Err(HostProblem::Duplicate)
        );
        assert_eq!(
            plan(HTTP_11, "http://a.test/x", &[("host", "b.test")]),
            Ok(HostPlan::Set(HeaderValue::from_static("a.test")))
        );
        assert_eq!(
            plan(HTTP_11, "http://A.test:80/x", &[("host", "a.TEST:80")]),
            Ok(HostPlan::Keep)
        );
        assert_eq!(
            plan(HTTP_2, "https://a.test/", &[]),
            Ok(HostPlan::Set(HeaderValue::from_static("a.test")))
        );
        assert_eq!(plan(HTTP_2, "/", &[]), Err(HostProblem::Missing));
        assert_eq!(plan(HTTP_2, "/", &[("host", "h.test")]), Ok(HostPlan::Keep));
        assert_eq!(
            plan(HTTP_11, "http://[::1]:8080/", &[("host", "x")]),
            Ok(HostPlan::Set(HeaderValue::from_static("[::1]:8080")))
        );
    }

    #[test]
    fn underscore_twins_of_the_hash_and_request_id_headers_are_found() {
        let hash = HeaderName::from_static("x-constitutional-hash");
        let id = HeaderName::from_static("x-request-id");
        let found = |fields: &[(&str, &str)]| {
            ambiguous_field(&map(fields), &hash, Some(&id)).map(|n| n.as_str().to_owned())
        };
        assert_eq!(found(&[("x-constitutional-hash", "1")]), None);
        assert_eq!(
            found(&[("X_Constitutional_Hash", "1")]).as_deref(),
            Some("x_constitutional_hash")
        );
        assert_eq!(
            found(&[("x-constitutional_hash", "1")]).as_deref(),
            Some("x-constitutional_hash")
        );
        assert_eq!(
            found(&[("x_request_id", "1")]).as_deref(),
            Some("x_request_id")
        );
        assert_eq!(
            found(&[("x_request_idd", "1"), ("y_request_id", "1")]),
            None
        );
        let h = map(&[("host", "a"), ("x_request_id", "1"), ("accept", "*/*")]);
        let (size, twin) = size_and_twin(&h, &hash, Some(&id));
        assert_eq!(size, crate::proxy::headers::header_bytes(&h));
        assert_eq!(twin.map(HeaderName::as_str), Some("x_request_id"));
    }

    #[test]
    fn trailers_lose_hash_request_id_hop_by_hop_and_twins() {
        let hash = HeaderName::from_static("x-constitutional-hash");
        let id = HeaderName::from_static("x-request-id");
        let mut t = map(&[
            ("x-constitutional-hash", "forged"),
            ("x_constitutional_hash", "forged"),
            ("x-request-id", "forged"),
            ("connection", "x-drop"),
            ("x-drop", "1"),
            ("te", "trailers"),
            ("grpc-status", "0"),
        ]);
        strip_trailers(&mut t, &hash, Some(&id));
        let left: Vec<_> = t.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["grpc-status"]);
    }
}
