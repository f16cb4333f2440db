//! TLS for tests: a self-signed certificate for a `[[proxy.tls]]` listener, and a client
//! that trusts exactly that certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The name the test certificate is made for.
pub const TLS_NAME: &str = "localhost";

/// A TLS listener on loopback with a new self-signed certificate for [`TLS_NAME`] written
/// to `dir`: the `[[proxy.tls]]` section, and the certificate for the client to trust.
pub fn tls_listener(dir: &Path) -> (String, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec![TLS_NAME.to_string()]).unwrap();
    std::fs::write(dir.join("site.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("site.key"), ck.signing_key.serialize_pem()).unwrap();
    let d = dir.display();
    let section = format!(
        "\n[[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{d}/site.crt\", key = \"{d}/site.key\" }}]\n"
    );
    (section, ck.cert.der().clone())
}

/// Connects to `addr` and completes a handshake that trusts `cert` alone, offering `alpn`
/// (none if empty).
pub async fn connect_tls(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(TLS_NAME).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("a TLS handshake within 5 s")
        .unwrap()
}
