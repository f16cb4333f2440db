//! `switchyard check` for TLS: every certificate and key of every TLS listener is loaded
//! exactly as `run` loads them (PEM parses, the key signs, the key matches the
//! certificate), so the unit's `ExecStartPre=switchyard check` refuses what `run` would;
//! and each certificate's expiry is reported, with a warning under [`WARN_DAYS`].

use super::{CertStore, TlsError};
use crate::config::Config;

/// A certificate expiring sooner than this many days is a warning.
pub const WARN_DAYS: i64 = 14;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub text: String,
}

/// Loads every listener's certificates; the first that `run` would refuse is the error.
pub fn check_certificates(cfg: &Config, now_unix: i64) -> Result<Vec<Note>, TlsError> {
    let mut notes = Vec::new();
    for t in &cfg.proxy.tls {
        let store = CertStore::load(&t.certs)?;
        for c in &store.certs {
            let left = c.not_after - now_unix;
            let days = left.div_euclid(86_400);
            let file = c.cert_path.display();
            let note = if left <= 0 {
                Note {
                    warning: true,
                    text: format!("listener {}: certificate {file} EXPIRED {} days ago; clients will refuse it", t.listen, -days),
                }
            } else if days < WARN_DAYS {
                Note {
                    warning: true,
                    text: format!("listener {}: certificate {file} expires in {days} days (under {WARN_DAYS}); renew it", t.listen),
                }
            } else {
                Note {
                    warning: false,
                    text: format!(
                        "listener {}: certificate {file} valid, expires in {days} days",
                        t.listen
                    ),
                }
            };
            notes.push(note);
        }
    }
    Ok(notes)
}
