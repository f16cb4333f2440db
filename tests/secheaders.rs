//! Security response headers: on proxied responses and on the proxy's own (403, 429, 502),
//! "set if absent" keeps a backend's value and "override" replaces it, and
//! Strict-Transport-Security goes out on TLS listeners only.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName};
use switchyard::config::Config;
use switchyard::Switchyard;
use tokio_util::sync::CancellationToken;

fn assert_defaults(h: &HeaderMap, what: &str) {
    assert_eq!(
        h.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "{what}"
    );
    assert_eq!(
        h.get("x-frame-options").map(|v| v.as_bytes()),
        Some(&b"DENY"[..]),
        "{what}"
    );
    let referrer = h.get("referrer-policy").map(|v| v.as_bytes());
    assert_eq!(
        referrer,
        Some(&b"strict-origin-when-cross-origin"[..]),
        "{what}"
    );
}

fn no_hash(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_on_proxied_and_proxy_generated_responses_without_hsts_on_plain() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    // A port with nothing listening: blue's requests fail to connect (502).
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy_multi(
        &[dead],
        &[green.addr],
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.rate_limit]\nrequests = 2\nperiod = \"1m\"\n\
         [proxy.retries]\nattempts = 1\n",
    )
    .await;
    let c = client();
    let (status, h, _) = send(&c, no_hash(&p.url("/"))).await;
    assert_eq!(status, 403);
    assert_defaults(&h, "403");
    let (status, h, _) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 502);
    assert_defaults(&h, "502");
    assert!(
        !h.contains_key("strict-transport-security"),
        "no HSTS over plain HTTP"
    );
    let (status, h, _) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 429);
    assert_defaults(&h, "429");

    let p = proxy(&blue, &green, "").await;
    let (status, h, _) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_defaults(&h, "proxied 200");
    assert!(!h.contains_key("strict-transport-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_if_absent_keeps_the_backends_value_and_override_replaces_it() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(
        &blue,
        &green,
        "[security_headers]\nheaders = [\n\
         { name = \"X-Upstream\", value = \"edge\", mode = \"set_if_absent\" },\n\
         { name = \"Cache-Control\", value = \"no-store\", mode = \"override\" },\n]\n",
    )
    .await;
    let c = client();
    let (_, h, _) = send(&c, get(&p.url("/"))).await;
    assert_eq!(h["x-upstream"], "blue", "the backend's value is kept");
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        !h.contains_key("x-frame-options"),
        "a configured list replaces the defaults"
    );
    let (status, h, _) = send(&c, no_hash(&p.url("/"))).await;
    assert_eq!(status, 403);
    assert_eq!(
        h["x-upstream"], "edge",
        "absent on the proxy's own answer, so set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_goes_out_on_tls_listeners_only() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("site.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), ck.signing_key.serialize_pem()).unwrap();
    let d = dir.path().display();
    let sections = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\
         [[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{d}/site.crt\", key = \"{d}/site.key\" }}]\n"
    );
    let cfg = Config::from_toml_str(&config_text(
        dir.path(),
        &[blue.addr],
        &[green.addr],
        &sections,
    ))
    .unwrap();
    let server = Switchyard::bind(cfg).await.unwrap();
    let (plain, tls) = (server.http_addrs()[0], server.tls_addrs()[0]);
    let token = CancellationToken::new();
    let _stop = DropCancel(token.clone());
    tokio::spawn(async move { server.run(token).await.unwrap() });

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ck.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (with_hash, expect) in [(true, 200), (false, 403)] {
        let mut req = http::Request::get("/").header("host", "localhost");
        if with_hash {
            req = req.header(HASH_HEADER, HASH);
        }
        tx.ready().await.unwrap();
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            tx.send_request(req.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), expect);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000",
            "{expect} over TLS"
        );
        assert_defaults(resp.headers(), "TLS");
        resp.into_body().collect().await.unwrap();
    }
    let (status, h, _) = send(&client(), get(&format!("http://{plain}/"))).await;
    assert_eq!(status, 200);
    assert!(
        !h.contains_key("strict-transport-security"),
        "the plain listener of the same proxy"
    );
}
