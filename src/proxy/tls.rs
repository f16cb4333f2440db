//! DATA PLANE: TLS termination. A listener's certificates are chosen by SNI from their
//! subject alternative names (exact, then wildcard, then the first certificate as the
//! default); ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3 only, with rustls' safe
//! defaults. Certificates reload in place: new handshakes see the new set, open
//! connections keep theirs, and a broken new file keeps the old set and names the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde_json::{json, Value};
use tokio_rustls::TlsAcceptor;

use crate::config::{CertPair, TlsListenerConfig};

pub mod check;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// One loaded certificate with what status shows about it.
#[derive(Debug)]
pub struct LoadedCert {
    pub cert_path: PathBuf,
    pub names: Vec<String>,
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
}

/// The certificate set of one listener, indexed by name.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<LoadedCert>,
    by_name: HashMap<String, usize>,
    /// The files this set was loaded from (a reload may name other files).
    pairs: Vec<CertPair>,
}

impl CertStore {
    pub fn load(pairs: &[CertPair]) -> Result<CertStore, TlsError> {
        let mut certs = Vec::with_capacity(pairs.len());
        let mut by_name = HashMap::new();
        for pair in pairs {
            let loaded = load_pair(pair)?;
            for name in &loaded.names {
                by_name.entry(name.clone()).or_insert(certs.len());
            }
            certs.push(loaded);
        }
        if certs.is_empty() {
            return Err(TlsError::Config(
                "a TLS listener needs at least one certificate".into(),
            ));
        }
        Ok(CertStore {
            certs,
            by_name,
            pairs: pairs.to_vec(),
        })
    }

    /// Exact name, then a wildcard one label up, then the default (first) certificate.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let found = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.by_name.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.by_name.get(&format!("*.{parent}")).copied()
            })
        });
        &self.certs[found.unwrap_or(0)].key
    }

    pub fn status(&self) -> Value {
        Value::Array(
            self.certs
                .iter()
                .map(|c| json!({ "file": c.cert_path, "names": c.names, "not_after_unix": c.not_after }))
                .collect(),
        )
    }

    fn changed_on_disk(&self) -> bool {
        self.pairs.iter().zip(&self.certs).any(|(p, c)| {
            let now = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            now(&p.cert) != c.modified || now(&p.key) > c.modified
        }) || self.pairs.len() != self.certs.len()
    }
}

fn load_pair(pair: &CertPair) -> Result<LoadedCert, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: pair.cert.clone(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: pair.key.clone(),
        message,
    };
    let modified = std::fs::metadata(&pair.cert)
        .and_then(|m| m.modified())
        .ok();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_err("no PEM certificate in the file".into()))?;
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| key_err(e.to_string()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let (names, not_after) = leaf_facts(leaf).map_err(cert_err)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        key_err(format!(
            "does not match certificate {}: {e}",
            pair.cert.display()
        ))
    })?;
    Ok(LoadedCert {
        cert_path: pair.cert.clone(),
        names,
        not_after,
        key: Arc::new(certified),
        modified,
    })
}

/// The leaf's DNS and IP subject alternative names (lowercase) and its expiry.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("not X.509: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names
                        .push(std::net::Ipv4Addr::from([ip[0], ip[1], ip[2], ip[3]]).to_string()),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The SNI resolver: a swappable certificate store.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().pick(hello.server_name()).clone())
    }
}

/// A TLS listener's acceptor and the certificates behind it.
pub struct TlsTerminator {
    pub listen: std::net::SocketAddr,
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
    resolver: Arc<SniResolver>,
}

impl TlsTerminator {
    pub fn new(
        cfg: &TlsListenerConfig,
        handshake_timeout: Duration,
    ) -> Result<TlsTerminator, TlsError> {
        let resolver = Arc::new(SniResolver {
            store: ArcSwap::from_pointee(CertStore::load(&cfg.certs)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsTerminator {
            listen: cfg.listen,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            handshake_timeout,
            resolver,
        })
    }

    /// Re-reads the certificate files (optionally a new list of them). On any error the
    /// current certificates stay in use and the error names the file.
    pub fn reload(&self, pairs: Option<&[CertPair]>) -> Result<(), TlsError> {
        let store = self.prepare(pairs)?;
        self.install(store);
        Ok(())
    }

    /// Loads and checks a new certificate set (the current files, or `pairs`) without
    /// using it yet: a config reload installs it only once everything else is valid too.
    pub fn prepare(&self, pairs: Option<&[CertPair]>) -> Result<CertStore, TlsError> {
        match pairs {
            Some(p) => CertStore::load(p),
            None => CertStore::load(&self.pairs()),
        }
    }

    /// New handshakes use `store` from now on; open connections keep theirs.
    pub fn install(&self, store: CertStore) {
        self.resolver.store.store(Arc::new(store));
    }

    /// The certificate and key files in use.
    pub fn pairs(&self) -> Vec<CertPair> {
        self.resolver.store.load().pairs.clone()
    }

    /// Reloads if a certificate or key file changed on disk since the last load.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        self.resolver
            .store
            .load()
            .changed_on_disk()
            .then(|| self.reload(None))
    }

    pub fn status(&self) -> Value {
        json!({ "listen": self.listen.to_string(), "certificates": self.resolver.store.load().status() })
    }
}

/// How often certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads certificates whose files changed on disk, until shutdown.
pub async fn watch_files(
    terminators: Vec<Arc<TlsTerminator>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for t in &terminators {
            match t.reload_if_changed() {
                Some(Ok(())) => {
                    tracing::info!(listen = %t.listen, "certificates reloaded after a file change")
                }
                Some(Err(e)) => {
                    tracing::warn!(listen = %t.listen, error = %e, "certificate reload failed; keeping the old certificates")
                }
                None => {}
            }
        }
    }
}
