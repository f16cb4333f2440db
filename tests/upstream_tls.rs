//! TLS to backends (`[pools.X] tls = true`, `tls_ca`, `tls_sni`): requests flow to an
//! in-test TLS upstream whose certificate is signed by a test CA; with the wrong CA the
//! client gets 502 and an error that says the certificate was not trusted. And the
//! downstream TLS listeners in `status` (names, expiry) and in `reload` (certificates are
//! re-read with the config; a broken file keeps the old certificate and is named).

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use tokio_util::sync::CancellationToken;

/// A CA named `ca_name` and a server certificate for `names` signed by it:
/// (CA PEM, cert PEM, key PEM).
fn ca_and_leaf(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// An HTTPS upstream on 127.0.0.1:0 answering `name` with the constitutional hash.
async fn tls_upstream(
    name: &'static str,
    cert_pem: &str,
    key_pem: &str,
) -> (SocketAddr, CancellationToken) {
    use rustls::pki_types::pem::PemObject;
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = s.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let mut resp = http::Response::new(Full::new(Bytes::from(name)));
                        resp.headers_mut()
                            .insert(HASH_HEADER, HASH.parse().unwrap());
                        resp.headers_mut()
                            .insert("x-path", req.uri().path().parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, stop)
}

fn pool_tls(dir: &Path, ca_pem: &str, sni: &str) -> String {
    let ca = dir.join("upstream-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    format!(
        "tls = true\ntls_ca = \"{}\"\ntls_sni = \"{sni}\"\n",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_tls_backend_checked_against_the_pool_ca() {
    let (ca, cert, key) = ca_and_leaf("test CA", &["api.internal"]);
    let (blue_addr, _stop) = tls_upstream("blue-tls", &cert, &key).await;
    let green = upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[pools.blue]\nbackends = [\"{blue_addr}\"]\n{}",
        pool_tls(dir.path(), &ca, "api.internal")
    );
    let p = tls_pool_proxy(dir.path(), &sections, green.addr).await;
    let c = client();
    for _ in 0..20 {
        let (status, headers, body) = send(&c, get(&p.url("/hello"))).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(&body[..], b"blue-tls");
        assert_eq!(headers["x-path"], "/hello");
    }
    // Keep-alive works over TLS too: the requests reused pooled connections.
    let backend = p
        .routes
        .load()
        .pool(switchyard::config::PoolId::Blue)
        .backends[0]
        .clone();
    assert!(backend.conns.idle() >= 1);
    // The health checks go over TLS as well and find the backend healthy.
    assert!(backend.is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_certificate_from_another_ca_gets_502_naming_the_tls_failure() {
    let (_right_ca, cert, key) = ca_and_leaf("test CA", &["api.internal"]);
    let (wrong_ca, _, _) = ca_and_leaf("another CA", &["other.internal"]);
    let (blue_addr, _stop) = tls_upstream("blue-tls", &cert, &key).await;
    let green = upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[pools.blue]\nbackends = [\"{blue_addr}\"]\n{}",
        pool_tls(dir.path(), &wrong_ca, "api.internal")
    );
    let p = tls_pool_proxy(dir.path(), &sections, green.addr).await;
    let (status, _, body) = send(&client(), get(&p.url("/"))).await;
    assert_eq!(status, 502, "{body:?}");
    // The client learns only that the upstream was unavailable; the operator sees why
    // (in `status`, and in the log at warn level).
    assert!(
        String::from_utf8_lossy(&body).contains("upstream_unavailable"),
        "{body:?}"
    );
    let status = p.admin("status").await;
    let why = status["pools"]["blue"]["backends"][0]["last_connect_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("TLS handshake failed (server name api.internal)"),
        "{status}"
    );
    assert!(
        why.contains("invalid peer certificate: UnknownIssuer"),
        "{why}"
    );
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            r#"switchyard_upstream_errors_total{pool="blue",kind="connect"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_bundle_refuses_the_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let text = config_text(
        dir.path(),
        &["127.0.0.1:9".parse().unwrap()],
        &["127.0.0.1:10".parse().unwrap()],
        "",
    )
    .replacen(
        "[pools.green]",
        &format!(
            "tls = true\ntls_ca = \"{}\"\n[pools.green]",
            missing.display()
        ),
        1,
    );
    let cfg = switchyard::config::Config::from_toml_str(&text).unwrap();
    let err = switchyard::Switchyard::bind(cfg)
        .await
        .err()
        .expect("bind must fail")
        .to_string();
    assert!(
        err.contains("pools.blue.tls") && err.contains("nope.pem"),
        "{err}"
    );
}

/// A proxy whose `[pools.blue]` is given in full by `sections` (with TLS keys).
async fn tls_pool_proxy(dir: &Path, sections: &str, green: SocketAddr) -> TestProxy {
    let text = format!(
        "{sections}[pools.green]\nbackends = [\"{green}\"]\n[admin]\nsocket = \"{d}/admin.sock\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"{d}/state.json\"\n",
        d = dir.display()
    );
    let cfg =
        switchyard::config::Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = switchyard::Switchyard::bind(cfg).await.unwrap();
    let addr = server.http_addrs()[0];
    let metrics_addr = server.metrics_addr().unwrap();
    let routes = server.routes();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { server.run(token).await.unwrap() });
    let tmp = tempfile::tempdir().unwrap();
    TestProxy {
        addr,
        tls_addr: None,
        metrics_addr,
        socket: dir.join("admin.sock"),
        dir: tmp,
        routes,
        shutdown,
        task,
    }
}

/// Writes a self-signed certificate for `name` to `dir/stem.{crt,key}`.
fn write_self_signed(dir: &Path, stem: &str, name: &str) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
}

/// The listener's certificate names, as `status` shows them.
fn cert_names(status: &serde_json::Value) -> Vec<String> {
    status["tls"][0]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
        })
        .collect()
}

/// The downstream side: `status` shows each TLS listener's certificates (names, expiry)
/// and each backend's health; `reload` re-reads the certificates with the config, all or
/// nothing — a broken new file keeps the old certificate, and the error names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_certificates_and_health_and_reload_swaps_certificates_all_or_nothing() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let certs = tempfile::tempdir().unwrap();
    write_self_signed(certs.path(), "a", "a.test");
    let listener = |stem: &str| {
        let d = certs.path().display();
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n\
             certs = [{{ cert = \"{d}/{stem}.crt\", key = \"{d}/{stem}.key\" }}]\n"
        )
    };
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], &listener("a"), "", false).await;
    let config = p.dir.path().join("switchyard.toml");
    let status = p.admin("status").await;
    assert_eq!(cert_names(&status), ["a.test"], "{status}");
    let expiry = status["tls"][0]["certificates"][0]["not_after_unix"]
        .as_i64()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expiry > now, "{status}");
    let b = &status["pools"]["blue"]["backends"][0];
    assert_eq!(
        (
            b["healthy"].clone(),
            b["ejected"].clone(),
            b["in_rotation"].clone()
        ),
        (true.into(), false.into(), true.into())
    );

    // A config naming a broken certificate: nothing changes, and the reply names the file.
    std::fs::write(
        certs.path().join("bad.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(certs.path().join("bad.key"), "").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("/a.crt", "/bad.crt")
            .replace("/a.key", "/bad.key"),
    )
    .unwrap();
    let generation = status["generation"].as_u64().unwrap();
    let reply = p.admin("reload").await;
    assert_eq!(reply["error"]["code"], "reload_failed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad.crt"),
        "{reply}"
    );
    let status = p.admin("status").await;
    assert_eq!(cert_names(&status), ["a.test"]);
    assert_eq!(status["generation"].as_u64().unwrap(), generation);

    // A good new certificate file: swapped in by the reload, and the file watcher keeps it.
    write_self_signed(certs.path(), "c", "c.test");
    std::fs::write(
        &config,
        text.replace("/a.crt", "/c.crt").replace("/a.key", "/c.key"),
    )
    .unwrap();
    let reply = p.admin("reload").await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(cert_names(&reply.clone()), ["c.test"], "{reply}");
    tokio::time::sleep(
        switchyard::proxy::tls::WATCH_INTERVAL + std::time::Duration::from_millis(500),
    )
    .await;
    assert_eq!(cert_names(&p.admin("status").await), ["c.test"]);
}
