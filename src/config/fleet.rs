//! `[fleet]`: several instances sharing one route table and one rollout on etcd.

use std::path::PathBuf;
use std::time::Duration;

use super::fields::{duration_between, fmt_duration, invalid, SECOND};
use super::raw::RawFleet;
use super::ConfigError;

/// `[fleet]`, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The etcd members' client URLs, tried in order.
    pub etcd: Vec<EtcdEndpoint>,
    /// Every key of this fleet starts with it; it ends with `/`.
    pub prefix: String,
    /// This instance's name, unique in the fleet.
    pub instance: String,
    pub lease_ttl: Duration,
    pub publish_interval: Duration,
    /// PEM bundle trusted for `https://` endpoints (default: the system bundle).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd's own authentication: user name, and the file holding the password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// One etcd client URL: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoint {
    pub tls: bool,
    /// `host:port`, as written.
    pub authority: String,
    /// The host alone (for SNI and certificate checks).
    pub host: String,
}

impl std::fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

pub(super) fn fleet(raw: RawFleet) -> Result<FleetConfig, ConfigError> {
    let urls = raw.etcd.unwrap_or_default();
    if urls.is_empty() {
        return Err(invalid(
            "fleet.etcd",
            "lists no endpoint; give the etcd members' client URLs, e.g. [\"http://127.0.0.1:2379\"]",
        ));
    }
    let etcd = urls
        .iter()
        .enumerate()
        .map(|(i, u)| endpoint(&format!("fleet.etcd[{i}]"), u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut prefix = raw.prefix.unwrap_or_else(|| "/switchyard/".into());
    if prefix.is_empty() || !prefix.starts_with('/') {
        return Err(invalid(
            "fleet.prefix",
            format!("{prefix:?} does not start with '/'; use a key prefix such as \"/switchyard/prod/\""),
        ));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let instance = match raw.instance {
        Some(name) => name,
        None => hostname().ok_or_else(|| {
            invalid(
                "fleet.instance",
                "is not set and the host name cannot be read; name this instance, e.g. \"edge-1\"",
            )
        })?,
    };
    if instance.is_empty()
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "fleet.instance",
            format!(
                "{instance:?} is not a name of letters, digits, '-', '_' and '.'; e.g. \"edge-1\""
            ),
        ));
    }
    let lease_ttl = duration_between(
        "fleet.lease_ttl",
        raw.lease_ttl,
        3 * SECOND,
        SECOND,
        Some(60 * SECOND),
    )?;
    if lease_ttl.subsec_nanos() != 0 {
        return Err(invalid(
            "fleet.lease_ttl",
            format!(
                "{} is not a whole number of seconds (etcd leases count seconds); e.g. \"3s\"",
                fmt_duration(lease_ttl)
            ),
        ));
    }
    let publish_interval = duration_between(
        "fleet.publish_interval",
        raw.publish_interval,
        Duration::from_millis(250),
        Duration::from_millis(10),
        Some(lease_ttl),
    )?;
    let file = |key: &str, v: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        match v {
            Some(p) if p.is_empty() => Err(invalid(
                key,
                "is empty; give a file path or leave the key out",
            )),
            other => Ok(other.map(PathBuf::from)),
        }
    };
    let (ca, cert, key) = (
        file("fleet.ca", raw.ca)?,
        file("fleet.cert", raw.cert)?,
        file("fleet.key", raw.key)?,
    );
    if cert.is_some() != key.is_some() {
        return Err(invalid(
            if cert.is_some() { "fleet.key" } else { "fleet.cert" },
            "fleet.cert and fleet.key go together; set both (client certificate and its key) or neither",
        ));
    }
    if (ca.is_some() || cert.is_some()) && !etcd.iter().any(|e| e.tls) {
        return Err(invalid(
            "fleet.etcd",
            "fleet.ca/fleet.cert are set but no endpoint is https://; write the endpoints as \"https://host:2379\"",
        ));
    }
    let password_file = file("fleet.password_file", raw.password_file)?;
    if raw.username.is_some() != password_file.is_some() {
        return Err(invalid(
            if raw.username.is_some() {
                "fleet.password_file"
            } else {
                "fleet.username"
            },
            "fleet.username and fleet.password_file go together; set both or neither",
        ));
    }
    Ok(FleetConfig {
        etcd,
        prefix,
        instance,
        lease_ttl,
        publish_interval,
        ca,
        cert,
        key,
        username: raw.username,
        password_file,
    })
}

fn endpoint(key: &str, url: &str) -> Result<EtcdEndpoint, ConfigError> {
    let bad = |why: &str| {
        invalid(
            key,
            format!("{url:?} {why}; expected an etcd client URL such as \"http://127.0.0.1:2379\" or \"https://etcd-1:2379\""),
        )
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad("does not start with http:// or https://"));
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad("has a path"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad("has no valid host and port"));
    }
    Ok(EtcdEndpoint {
        tls,
        authority: authority.to_string(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    })
}

/// The kernel's host name, else `/etc/hostname` (the unit's `ProcSubset=pid` hides
/// `/proc/sys`).
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|n| n.trim().to_string())
        .find(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(fleet: &str) -> Result<Config, String> {
        let text = format!(
            "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9002\"]\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n[fleet]\n{fleet}"
        );
        Config::from_toml_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_normalised_prefix() {
        let c = with("etcd = [\"http://127.0.0.1:2379\"]\ninstance = \"a\"\nprefix = \"/sy\"")
            .expect("valid");
        let f = c.fleet.expect("fleet set");
        assert_eq!(f.prefix, "/sy/");
        assert_eq!(f.lease_ttl.as_secs(), 3);
        assert_eq!(f.publish_interval.as_millis(), 250);
        assert_eq!(f.etcd[0].authority, "127.0.0.1:2379");
        assert!(!f.etcd[0].tls);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("etcd = []", "fleet.etcd"),
            ("etcd = [\"127.0.0.1:2379\"]", "fleet.etcd[0]"),
            (
                "etcd = [\"http://h:1\"]\ninstance = \"a b\"",
                "fleet.instance",
            ),
            (
                "etcd = [\"http://h:1\"]\nlease_ttl = \"1500ms\"",
                "fleet.lease_ttl",
            ),
            ("etcd = [\"http://h:1\"]\ncert = \"c.pem\"", "fleet.key"),
            (
                "etcd = [\"http://h:1\"]\nusername = \"u\"",
                "fleet.password_file",
            ),
            ("etcd = [\"http://h:1\"]\nprefix = \"x\"", "fleet.prefix"),
        ] {
            let e = with(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(with("etcd = [\"http://h:1\"]\nbogus = 1").is_err());
    }
}
