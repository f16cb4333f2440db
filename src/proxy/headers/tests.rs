use super::*;

/// A header map of `(name, value)` pairs, in order (for the tests of `headers::front` too).
pub(super) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn framing_refuses_every_smuggling_shape() {
    use Smuggling::*;
    type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), Smuggling>);
    let cases: &[Case] = &[
        (
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            Err(ContentLengthWithTransferEncoding),
        ),
        (
            &[("content-length", "5"), ("content-length", "5")],
            Err(DuplicateContentLength),
        ),
        (&[("content-length", "5, 5")], Err(InvalidContentLength)),
        (&[("content-length", "+5")], Err(InvalidContentLength)),
        (
            &[("transfer-encoding", "chunked, gzip")],
            Err(TransferEncodingNotChunked),
        ),
        (&[("transfer-encoding", "gzip, chunked")], Ok(())),
        (&[("content-length", "12")], Ok(())),
    ];
    for (fields, want) in cases {
        assert_eq!(&check_framing(&map(fields)), want, "{fields:?}");
    }
}

#[test]
fn strips_hop_by_hop_and_what_connection_names() {
    let mut h = map(&[
        ("connection", "keep-alive, X-Foo"),
        ("x-foo", "secret"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-connection", "keep-alive"),
        ("x-bar", "kept"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h["x-bar"], "kept");
}

#[test]
fn strips_each_hop_by_hop_field_alone_and_repeated() {
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "connection",
    ] {
        let mut h = map(&[(name, "a"), ("x-bar", "kept"), (name, "b")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{name}: {h:?}");
        assert_eq!(h["x-bar"], "kept");
    }
    let mut h = map(&[("x-bar", "kept"), ("host", "a.example")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 2, "{h:?}");
}

#[test]
fn keeps_upgrade_for_a_protocol_switch() {
    let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    assert!(wants_upgrade(&h));
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
}

#[test]
fn appends_to_x_forwarded_for() {
    let ip = HeaderValue::from_static("10.0.0.9");
    let mut h = map(&[("x-forwarded-for", "203.0.113.1")]);
    add_forwarded(&mut h, &ip, "https");
    assert_eq!(h["x-forwarded-for"], "203.0.113.1, 10.0.0.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    let mut h = HeaderMap::new();
    add_forwarded(&mut h, &ip, "http");
    assert_eq!(h["x-forwarded-for"], "10.0.0.9");
}

#[test]
fn hash_verdicts() {
    let name = HeaderName::from_static("x-constitutional-hash");
    let want = HeaderValue::from_static("cdd01ef066bc6cf2");
    assert_eq!(
        check_hash(
            &map(&[("x-constitutional-hash", "cdd01ef066bc6cf2")]),
            &name,
            &want
        ),
        Ok(())
    );
    assert_eq!(
        check_hash(&HeaderMap::new(), &name, &want),
        Err(HashReason::Missing)
    );
    assert_eq!(
        check_hash(&map(&[("x-constitutional-hash", "nope")]), &name, &want),
        Err(HashReason::Mismatch)
    );
    let twice = map(&[
        ("x-constitutional-hash", "cdd01ef066bc6cf2"),
        ("x-constitutional-hash", "cdd01ef066bc6cf2"),
    ]);
    assert_eq!(check_hash(&twice, &name, &want), Err(HashReason::Mismatch));
}

#[test]
fn finds_cookie_values() {
    let h = map(&[("cookie", "a=1; uid=alice ; b=2")]);
    assert_eq!(cookie(&h, "uid"), Some(&b"alice"[..]));
    assert_eq!(cookie(&h, "missing"), None);
}
