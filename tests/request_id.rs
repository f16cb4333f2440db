//! Request ids: a valid id from the client reaches the backend and comes back; a missing,
//! invalid or repeated one is replaced by a generated id, the same upstream and downstream;
//! the proxy's own answers carry one too; and the access-log line carries it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn with_id(url: &str, ids: &[&str]) -> http::Request<Full<Bytes>> {
    let mut req = get(url);
    for id in ids {
        req.headers_mut()
            .append("x-request-id", id.parse().unwrap());
    }
    req
}

fn upstream_id(u: &Upstream) -> Vec<String> {
    let seen = u.last_headers.lock().unwrap().clone().unwrap();
    seen.get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// A proxy-made id: a UUIDv7 (RFC 9562) in lowercase hyphenated form.
fn is_generated(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| {
        u.get_version_num() == 7
            && u.get_variant() == uuid::Variant::RFC4122
            && u.hyphenated().to_string() == id
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_id_travels_and_a_missing_or_invalid_one_is_replaced() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = client();

    let (_, h, _) = send(&c, with_id(&p.url("/"), &["req-42.a_b:c"])).await;
    assert_eq!(h["x-request-id"], "req-42.a_b:c");
    assert_eq!(upstream_id(&blue), ["req-42.a_b:c"]);

    let long = "a".repeat(129);
    for ids in [
        vec![],
        vec!["has space"],
        vec![long.as_str()],
        vec!["one", "two"],
    ] {
        let (_, h, _) = send(&c, with_id(&p.url("/"), &ids)).await;
        let returned = h["x-request-id"].to_str().unwrap().to_string();
        assert!(is_generated(&returned), "{ids:?} -> {returned}");
        assert_eq!(
            upstream_id(&blue),
            [returned],
            "the backend saw the same single id"
        );
    }

    // Two generated ids differ; the proxy's own answers have one too.
    let (_, a, _) = send(&c, get(&p.url("/"))).await;
    let (_, b, _) = send(&c, get(&p.url("/"))).await;
    assert_ne!(a["x-request-id"], b["x-request-id"]);
    let no_hash = http::Request::get(p.url("/"))
        .header("x-request-id", "mine-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, h, _) = send(&c, no_hash).await;
    assert_eq!(status, 403);
    assert_eq!(h["x-request-id"], "mine-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_line_carries_the_id() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = proxy(
        &blue,
        &green,
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    )
    .await;
    let c = client();
    send(&c, with_id(&p.url("/kept"), &["trace-7"])).await;
    let (_, h, _) = send(&c, get(&p.url("/made"))).await;
    let made = h["x-request-id"].to_str().unwrap().to_string();
    let mut lines = Vec::new();
    wait_for("two access-log lines", Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        let n = lines.len();
        async move { n >= 2 }
    })
    .await;
    let ids: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                v["request_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        ids.contains(&("/kept".to_string(), "trace-7".to_string())),
        "{ids:?}"
    );
    assert!(ids.contains(&("/made".to_string(), made)), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_id_does_not_count_against_the_header_limit() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.limits]\nmax_headers = 4\n",
    )
    .await;
    // host, the hash and two more: exactly at the limit.
    let mut req = get(&p.url("/"));
    req.headers_mut().insert("a", "1".parse().unwrap());
    req.headers_mut().insert("b", "2".parse().unwrap());
    let (status, h, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    assert!(is_generated(h["x-request-id"].to_str().unwrap()));
    assert_eq!(upstream_id(&blue).len(), 1);
}
