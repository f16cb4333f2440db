//! The HTTP read API on the metrics listener: `/live`, `/ready` (200, and 503 when no pool
//! can take requests or while draining), `/status` (the admin `status` reply), `HEAD` on
//! each, 405 for anything that would write; and the metrics operators look for first.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};

use common::*;

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("request hung")
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn json(addr: SocketAddr, path: &str) -> (StatusCode, serde_json::Value) {
    let (s, _, b) = call(addr, Method::GET, path).await;
    (s, serde_json::from_slice(&b).unwrap())
}

async fn wait_ready(addr: SocketAddr, want: StatusCode) {
    wait_for("/ready status", Duration::from_secs(10), || async {
        call(addr, Method::GET, "/ready").await.0 == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ready_and_status_answer_get_and_head() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let m = p.metrics_addr;
    wait_ready(m, StatusCode::OK).await;

    let (s, live) = json(m, "/live").await;
    assert_eq!(
        (s, &live["live"]),
        (StatusCode::OK, &serde_json::json!(true))
    );
    let (s, ready) = json(m, "/ready").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ready["phase"], "serving");
    assert_eq!(ready["reason"], serde_json::Value::Null);

    let (s, status) = json(m, "/status").await;
    assert_eq!(s, StatusCode::OK);
    let admin = p.admin("status").await;
    assert_eq!(status["ok"], true);
    assert_eq!(status["generation"], admin["generation"]);
    assert_eq!(status["pools"], admin["pools"]);
    assert_eq!(status["green_percent"], admin["green_percent"]);

    for path in ["/live", "/ready", "/status", "/metrics"] {
        let (s, h, body) = call(m, Method::HEAD, path).await;
        assert_eq!(s, StatusCode::OK, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path} has a body");
        let (_, get_h, get_body) = call(m, Method::GET, path).await;
        assert_eq!(h["content-type"], get_h["content-type"], "{path}");
        if path != "/metrics" && path != "/status" {
            // The same document: the same length.
            assert_eq!(
                h["content-length"].to_str().unwrap(),
                get_body.len().to_string(),
                "{path}"
            );
        }
    }
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let (s, h, _) = call(m, method.clone(), "/status").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(h["allow"], "GET, HEAD");
    }
    assert_eq!(call(m, Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_when_no_pool_can_take_requests() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let m = p.metrics_addr;
    wait_ready(m, StatusCode::OK).await;
    // Blue takes everything (green 0%); with blue's only backend disabled nothing can serve.
    let r = p
        .admin(&format!("backend blue {} disable", blue.addr))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    wait_ready(m, StatusCode::SERVICE_UNAVAILABLE).await;
    let (_, body) = json(m, "/ready").await;
    assert_eq!(body["reason"], "no_backend_in_rotation", "{body}");
    // Green at 100% has a backend: ready again.
    let r = p.admin("weight 100").await;
    assert_eq!(r["ok"], true, "{r}");
    wait_ready(m, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_draining_and_live_stays_200() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nshutdown_grace = \"20s\"\n",
    )
    .await;
    let m = p.metrics_addr;
    wait_ready(m, StatusCode::OK).await;
    // A request in flight keeps the drain going until the upstream answers.
    blue.behavior
        .delay_ms
        .store(3_000, std::sync::atomic::Ordering::Relaxed);
    let url = p.url("/slow");
    let slow = tokio::spawn(async move { send(&client(), get(&url)).await.0 });
    wait_for(
        "the request to reach blue",
        Duration::from_secs(10),
        || async { blue.hits.load(std::sync::atomic::Ordering::Relaxed) > 0 },
    )
    .await;
    p.shutdown.cancel();
    wait_ready(m, StatusCode::SERVICE_UNAVAILABLE).await;
    let (_, body) = json(m, "/ready").await;
    assert_eq!(
        (body["phase"].as_str(), body["reason"].as_str()),
        (Some("draining"), Some("draining"))
    );
    assert_eq!(call(m, Method::GET, "/live").await.0, StatusCode::OK);
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_process_backend_and_reload_metrics_are_exported() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(send(&c, get(&p.url("/"))).await.0, 200);
    }
    let text = p.metrics().await;
    let info = format!(
        "switchyard_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&info), "{text}");
    let backend = format!(
        "switchyard_backend_requests_total{{pool=\"blue\",backend=\"{}\",code_class=\"2xx\"}}",
        blue.addr
    );
    assert_eq!(metric(&text, &backend), 3.0, "{text}");
    let green_series = format!(
        "switchyard_backend_requests_total{{pool=\"green\",backend=\"{}\",code_class=\"2xx\"}}",
        green.addr
    );
    assert!(
        text.contains(&green_series),
        "registered before any request: {text}"
    );
    assert_eq!(metric(&text, "switchyard_config_last_reload_success"), 1.0);
    assert!(
        metric(
            &text,
            "switchyard_config_last_reload_success_timestamp_seconds"
        ) > 1.7e9
    );
    assert!(
        metric(&text, "process_resident_memory_bytes") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds") > 0.0, "{text}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");

    // A reload without a config file fails: success drops to 0, the time stays.
    let before = metric(
        &text,
        "switchyard_config_last_reload_success_timestamp_seconds",
    );
    let r = p.admin("reload").await;
    assert_eq!(r["ok"], false, "{r}");
    let text = p.metrics().await;
    assert_eq!(metric(&text, "switchyard_config_last_reload_success"), 0.0);
    assert_eq!(
        metric(
            &text,
            "switchyard_config_last_reload_success_timestamp_seconds"
        ),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_exported_per_listener_and_name() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let certs = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["site.test".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let d = certs.path();
    std::fs::write(d.join("site.crt"), cert.pem()).unwrap();
    std::fs::write(d.join("site.key"), key.serialize_pem()).unwrap();
    let sections = format!(
        "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{0}/site.crt\", key = \"{0}/site.key\" }}]\n",
        d.display()
    );
    let p = proxy(&blue, &green, &sections).await;
    let text = p.metrics().await;
    let status = p.admin("status").await;
    let listen = status["tls"][0]["listen"].as_str().unwrap();
    let series = format!(
        "switchyard_tls_certificate_expiry_timestamp_seconds{{listener=\"{listen}\",name=\"site.test\"}}"
    );
    // 2031-05-01T00:00:00Z
    assert_eq!(metric(&text, &series), 1_935_360_000.0, "{text}");
}
