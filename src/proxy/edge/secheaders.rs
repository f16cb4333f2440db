//! DATA PLANE: security response headers, added to every response the proxy sends (proxied
//! or its own). Names and values are built once from the config; a response only clones
//! them (reference counts, no allocation).
//!
//! `Strict-Transport-Security` goes out on TLS listeners only: RFC 6797 §7.2 forbids it
//! over plain HTTP, where an attacker could strip or forge it anyway.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderMode, SecurityHeadersConfig};

#[derive(Debug, Clone)]
struct Item {
    name: HeaderName,
    value: HeaderValue,
    overwrite: bool,
}

/// The configured set, split by listener kind.
#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    plain: Box<[Item]>,
    tls: Box<[Item]>,
}

impl SecurityHeaders {
    pub fn from_config(c: &SecurityHeadersConfig) -> SecurityHeaders {
        let item = |h: &crate::config::SecurityHeader| Item {
            name: h.name.clone(),
            value: h.value.clone(),
            overwrite: h.mode == HeaderMode::Override,
        };
        SecurityHeaders {
            plain: c
                .headers
                .iter()
                .filter(|h| h.name != header::STRICT_TRANSPORT_SECURITY)
                .map(item)
                .collect(),
            tls: c.headers.iter().map(item).collect(),
        }
    }

    /// Adds the set to a response's headers: "set if absent" entries keep a value the
    /// backend sent, "override" entries replace it.
    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        let items = if tls { &self.tls } else { &self.plain };
        // One growth at most, not one per header.
        headers.reserve(items.len());
        for item in items.iter() {
            match headers.entry(&item.name) {
                Entry::Occupied(mut o) => {
                    if item.overwrite {
                        o.insert(item.value.clone());
                    }
                }
                Entry::Vacant(v) => {
                    v.insert(item.value.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecurityHeader;

    fn set() -> SecurityHeaders {
        let h = |name: &'static str, value: &'static str, mode| SecurityHeader {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            mode,
        };
        SecurityHeaders::from_config(&SecurityHeadersConfig {
            headers: vec![
                h("x-frame-options", "DENY", HeaderMode::SetIfAbsent),
                h("x-content-type-options", "nosniff", HeaderMode::Override),
                h(
                    "strict-transport-security",
                    "max-age=60",
                    HeaderMode::Override,
                ),
            ],
        })
    }

    #[test]
    fn set_if_absent_keeps_the_backends_value_and_override_replaces_it() {
        let mut headers = HeaderMap::new();
        headers.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        headers.append("x-content-type-options", HeaderValue::from_static("a"));
        headers.append("x-content-type-options", HeaderValue::from_static("b"));
        set().apply(&mut headers, true);
        assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
        let nosniff: Vec<_> = headers.get_all("x-content-type-options").iter().collect();
        assert_eq!(nosniff, ["nosniff"]);
        assert_eq!(headers["strict-transport-security"], "max-age=60");
    }

    #[test]
    fn hsts_only_on_tls() {
        let mut headers = HeaderMap::new();
        set().apply(&mut headers, false);
        assert_eq!(headers["x-frame-options"], "DENY");
        assert!(!headers.contains_key("strict-transport-security"));
    }
}
