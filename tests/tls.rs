//! TLS termination: SNI picks the certificate (default for unknown names), ALPN h2 reaches
//! the upstream over HTTP/2, TLS 1.1 is refused, and certificates reload without touching
//! open connections — a corrupt file keeps the old certificate and names the file.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Accepts any certificate: the tests look at which one was presented.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Writes a self-signed certificate for `names` to `dir/stem.{crt,key}`; returns its DER.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().to_vec()
}

struct TlsProxy {
    addr: std::net::SocketAddr,
    terminators: Vec<Arc<switchyard::proxy::tls::TlsTerminator>>,
    _shutdown: common::DropCancel,
}

async fn tls_proxy(dir: &Path, blue: &Upstream, green: &Upstream) -> TlsProxy {
    let d = dir.display();
    let sections = format!(
        "[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{d}/default.crt\", key = \"{d}/default.key\" }}, \
         {{ cert = \"{d}/a.crt\", key = \"{d}/a.key\" }}, {{ cert = \"{d}/b.crt\", key = \"{d}/b.key\" }}]\n"
    );
    let text = config_text(dir, &[blue.addr], &[green.addr], &sections);
    let cfg = switchyard::config::Config::from_toml_str(&text).unwrap();
    let server = switchyard::Switchyard::bind(cfg).await.unwrap();
    let addr = server.tls_addrs()[0];
    let terminators = server.tls_terminators();
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { server.run(t).await.unwrap() });
    TlsProxy {
        addr,
        terminators,
        _shutdown: common::DropCancel(token),
    }
}

async fn handshake(
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector(alpn).connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

fn presented(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn h1_get(
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    http::StatusCode,
) {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let status = h1_send(&mut tx).await;
    (tx, status)
}

async fn h1_send(
    tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> http::StatusCode {
    let req = http::Request::get("/")
        .header("host", "a.test")
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_and_alpn_h2_reaches_the_upstream() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let default = write_cert(dir.path(), "default", &["default.test"]);
    let a = write_cert(dir.path(), "a", &["a.test"]);
    let b = write_cert(dir.path(), "b", &["b.test", "*.b.test"]);
    let p = tls_proxy(dir.path(), &blue, &green).await;

    assert_eq!(presented(&handshake(p.addr, "a.test", &[]).await), a);
    assert_eq!(presented(&handshake(p.addr, "b.test", &[]).await), b);
    assert_eq!(
        presented(&handshake(p.addr, "x.b.test", &[]).await),
        b,
        "wildcard SAN"
    );
    assert_eq!(
        presented(&handshake(p.addr, "unknown.test", &[]).await),
        default
    );

    let s = handshake(p.addr, "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/")
        .header(HASH_HEADER, HASH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"blue"
    );
    let seen = blue.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["host"], "a.test");

    let s = handshake(p.addr, "a.test", &[b"http/1.1"]).await;
    assert_eq!(h1_get(s).await.1, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_1_client_hello_is_refused() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    for stem in ["default", "a", "b"] {
        write_cert(dir.path(), stem, &[&format!("{stem}.test")]);
    }
    let p = tls_proxy(dir.path(), &blue, &green).await;
    // The same ClientHello offered as TLS 1.2 gets a ServerHello; offered as TLS 1.1
    // (RFC 4346 §7.4.1.2, no supported_versions extension) it gets a fatal alert.
    let tls12 = client_hello_reply(p.addr, [0x03, 0x03]).await;
    assert_eq!(
        tls12[0], 0x16,
        "TLS 1.2 control hello was not answered with a handshake: {tls12:?}"
    );
    let tls11 = client_hello_reply(p.addr, [0x03, 0x02]).await;
    assert_eq!(
        tls11[0], 0x15,
        "TLS 1.1 hello was not refused with an alert: {tls11:?}"
    );
    assert_eq!(tls11[5], 2, "alert is not fatal: {tls11:?}");
}

/// Sends a hand-built ClientHello with `version`; returns the first bytes of the reply.
async fn client_hello_reply(addr: std::net::SocketAddr, version: [u8; 2]) -> Vec<u8> {
    fn ext(id: u16, body: &[u8]) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
    let mut exts = Vec::new();
    exts.extend(ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])); // groups: x25519, secp256r1
    exts.extend(ext(0x000b, &[0x01, 0x00])); // point formats: uncompressed
    exts.extend(ext(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04])); // ecdsa_p256_sha256, rsa_pss_sha256
    let mut hello = version.to_vec();
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x09]); // ECDHE-ECDSA AES128-GCM, AES128-CBC-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    hello.extend_from_slice(&exts);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&record).await.unwrap();
    let mut reply = vec![0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections_and_bad_files_keep_the_old() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "default", &["default.test"]);
    let a1 = write_cert(dir.path(), "a", &["a.test"]);
    write_cert(dir.path(), "b", &["b.test"]);
    let p = tls_proxy(dir.path(), &blue, &green).await;

    let before = handshake(p.addr, "a.test", &[b"http/1.1"]).await;
    assert_eq!(presented(&before), a1);
    let (mut open, status) = h1_get(before).await;
    assert_eq!(status, 200);

    // Replace the files: the watcher picks them up; new handshakes see the new certificate.
    std::thread::sleep(Duration::from_millis(1100)); // mtime granularity on some filesystems
    let a2 = write_cert(dir.path(), "a", &["a.test"]);
    let addr = p.addr;
    wait_for(
        "new handshakes to see the new certificate",
        Duration::from_secs(15),
        || {
            let a2 = a2.clone();
            async move { presented(&handshake(addr, "a.test", &[]).await) == a2 }
        },
    )
    .await;
    assert_eq!(
        h1_send(&mut open).await,
        200,
        "a connection opened before the reload stopped working"
    );

    // A corrupt file: the reload fails naming it, and the current certificate stays.
    std::fs::write(
        dir.path().join("a.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = p.terminators[0].reload(None).unwrap_err().to_string();
    assert!(err.contains("a.crt"), "{err}");
    assert_eq!(presented(&handshake(p.addr, "a.test", &[]).await), a2);
    assert_eq!(h1_send(&mut open).await, 200);
}
