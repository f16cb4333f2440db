//! The TLS client every outbound connection uses (TLS backends, etcd, rollout hooks, query
//! gates' Prometheus): rustls with the ring provider and its safe protocol versions, trusting
//! one PEM bundle, the system's unless a setting names another.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

/// The CA bundle trusted when a setting names none (Debian's `ca-certificates`).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client configuration trusting the CAs of `ca` (or [`SYSTEM_CA_BUNDLE`]), still to be
/// given its client authentication. `what` names the setting in errors, e.g. `tls_ca`.
pub fn trusting(
    ca: Option<&Path>,
    what: &str,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, String> {
    let (bundle, what) = match ca {
        Some(path) => (path, what),
        None => (Path::new(SYSTEM_CA_BUNDLE), "the system CA bundle"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(bundle)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{what} {}: {e}", bundle.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{what} {}: no usable CA certificate in the file",
            bundle.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots))
}

/// Offers HTTP/1.1 only: every outbound connection speaks it.
pub fn http1(mut client: ClientConfig) -> tokio_rustls::TlsConnector {
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_bundle_is_named_with_its_setting() {
        let err = trusting(Some(Path::new("/nonexistent/ca.pem")), "tls_ca")
            .err()
            .expect("a missing file is refused");
        assert!(err.starts_with("tls_ca /nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().expect("a temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("written");
        let err = trusting(Some(&empty), "fleet.ca")
            .err()
            .expect("an empty bundle is refused");
        assert!(err.contains("no usable CA certificate"), "{err}");
        assert!(err.starts_with("fleet.ca "), "{err}");
    }
}
