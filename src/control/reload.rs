//! CONTROL PLANE: reload — `ctl reload` and SIGHUP re-read the config file the daemon was
//! started with, validate it completely, and swap in new pools and request settings in one
//! route-table publish (weights, pool states and the rollout record stay; generation + 1).
//!
//! The TLS listeners' certificates are re-read too (the files the new config lists, or the
//! same files again), without touching open connections. An invalid file changes nothing,
//! a certificate or key that does not load included; the reply (`reload_failed`, with
//! `key`) and the log name the key, and the file. Keys that name the daemon's own sockets and files (listener addresses,
//! the admin socket and its mode, the state file, the audit log) cannot change without a
//! restart: such a reload is refused and says so. Keys baked into running tasks (worker
//! threads, connection limits, server timeouts, admin client slots) are accepted and listed
//! in `restart_required`. A pool whose settings did not change keeps its `Pool` (its
//! keep-alive connections and in-flight counters); a changed pool is rebuilt. Requests in
//! flight keep the table they started with, and with it the old pools, until they finish.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::command::AdminError;
use super::state::BackendRef;
use super::{Actor, Applied, Control};
use crate::config::{Config, PoolId};
use crate::proxy::settings::Settings;

impl Control {
    /// Re-reads the config (see the module doc). Returns the update and the keys that
    /// changed but take effect only at the next start.
    pub fn reload(
        &self,
        actor: &Actor,
        command: &str,
        expect_gen: Option<u64>,
    ) -> Result<(Applied, Vec<&'static str>), AdminError> {
        let _reloading = crate::notify::Reloading::begin();
        let mut restart = Vec::new();
        let result = self.update(actor, command, expect_gen, |d| {
            let path = self.config_path.as_ref().ok_or_else(|| {
                AdminError::new("reload_failed", "this daemon was started without a config file; nothing to re-read")
            })?;
            let new = Config::load(path).map_err(|e| {
                AdminError::new("reload_failed", format!("{e}; the running config is unchanged")).with_key(e.key())
            })?;
            let old = self.config();
            check_fixed(&old, &new)?;
            restart = restart_required(&old, &new);
            let fresh = crate::proxy::build_pools(&new).map_err(|e| {
                let key = e.split(':').next().map(str::to_string);
                AdminError::new("reload_failed", format!("{e}; the running config is unchanged")).with_key(key.as_deref())
            })?;
            for id in PoolId::ALL {
                if !pool_unchanged(&old, &new, id) {
                    d.pools[id.index()] = fresh[id.index()].clone();
                }
            }
            d.settings = Arc::new(Settings::from_config(&new));
            let present = |r: &BackendRef| {
                d.pools.iter().any(|p| p.id.as_str() == r.pool && p.backends.iter().any(|b| b.addr == r.addr))
            };
            let gone: Vec<BackendRef> = d.disabled.iter().filter(|r| !present(r)).cloned().collect();
            for r in gone {
                info!(pool = %r.pool, backend = %r.addr, "reload: a disabled backend left the config; forgotten");
                d.disabled.remove(&r);
            }
            // Certificates last: loaded and checked now, in use only if all else was valid.
            let mut certs = Vec::new();
            for t in self.tls_terminators() {
                let listed = new.proxy.tls.iter().find(|l| l.listen == t.listen).map(|l| l.certs.as_slice());
                let changed = listed.filter(|&p| p != t.pairs().as_slice());
                let store = t.prepare(changed).map_err(|e| {
                    AdminError::new(
                        "reload_failed",
                        format!("TLS listener {}: {e}; the old certificates and the running config stay", t.listen),
                    )
                    .with_key(Some("proxy.tls"))
                })?;
                certs.push((t.clone(), store));
            }
            for (t, store) in certs {
                t.install(store);
            }
            // Under the route writer, so the config and the table it built change together.
            self.config.store(Arc::new(new));
            Ok(())
        });
        self.metrics.config_reloaded(result.is_ok());
        match &result {
            Ok(applied) => {
                info!(
                    actor.kind = actor.kind,
                    generation = applied.generation,
                    "config reloaded"
                );
                if !restart.is_empty() {
                    warn!(keys = ?restart, "config reloaded; these keys take effect at the next restart");
                }
            }
            Err(e) => error!(
                key = e.key.as_deref().unwrap_or("-"),
                "reload failed, the old config stays: {}", e.message
            ),
        }
        result.map(|a| (a, restart))
    }
}

/// A pool keeps its `Pool` when neither its own settings nor the client timeouts changed.
/// Compared by their `Debug` form, so settings added later are covered without edits here.
fn pool_unchanged(old: &Config, new: &Config, id: PoolId) -> bool {
    format!("{:?}", old.pool(id)) == format!("{:?}", new.pool(id))
        && format!("{:?}", old.proxy.timeouts) == format!("{:?}", new.proxy.timeouts)
}

/// Refuses changes to what the daemon bound or opened at start.
fn check_fixed(old: &Config, new: &Config) -> Result<(), AdminError> {
    let tls = |c: &Config| c.proxy.tls.iter().map(|t| t.listen).collect::<Vec<_>>();
    let fixed: [(&str, bool); 7] = [
        ("proxy.listen", old.proxy.listen != new.proxy.listen),
        ("proxy.tls", tls(old) != tls(new)),
        ("metrics.listen", old.metrics.listen != new.metrics.listen),
        ("admin.socket", old.admin.socket != new.admin.socket),
        ("admin.mode", old.admin.mode != new.admin.mode),
        (
            "admin.audit_log",
            old.admin.audit_log != new.admin.audit_log,
        ),
        ("state.path", old.state.path != new.state.path),
    ];
    match fixed.iter().find(|(_, changed)| *changed) {
        Some((key, _)) => Err(AdminError::new(
            "reload_failed",
            format!("config key `{key}` changed; it names a socket or file the daemon opened at start, so it needs a restart; nothing was reloaded"),
        )
        .with_key(Some(key))),
        None => Ok(()),
    }
}

/// Changed keys that running tasks read once at start.
fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.proxy, &new.proxy);
    let checks: [(&'static str, bool); 9] = [
        ("proxy.workers", a.workers != b.workers),
        (
            "proxy.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "proxy.timeouts.header_read",
            a.timeouts.header_read != b.timeouts.header_read,
        ),
        ("proxy.timeouts.idle", a.timeouts.idle != b.timeouts.idle),
        (
            "proxy.timeouts.tls_handshake",
            a.timeouts.tls_handshake != b.timeouts.tls_handshake,
        ),
        ("proxy.reuse_port", a.reuse_port != b.reuse_port),
        (
            "proxy.rate_limit.max_keys",
            a.rate_limit_max_keys != b.rate_limit_max_keys,
        ),
        (
            "access_log.path",
            old.access_log.target != new.access_log.target,
        ),
        (
            "access_log.queue",
            old.access_log.queue != new.access_log.queue,
        ),
    ];
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| *k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9011\"]\n"
        );
        Config::from_toml_str(&text).unwrap()
    }

    #[test]
    fn start_only_keys_are_named_when_they_change() {
        let base = cfg("");
        assert!(restart_required(&base, &cfg("")).is_empty());
        assert_eq!(
            restart_required(&base, &cfg("workers = 3")),
            ["proxy.workers"]
        );
        assert_eq!(
            restart_required(&base, &cfg("reuse_port = true")),
            ["proxy.reuse_port"]
        );
        assert_eq!(
            restart_required(
                &base,
                &cfg("[proxy.rate_limit]\nrequests = 10\nperiod = \"1s\"\nmax_keys = 1000")
            ),
            ["proxy.rate_limit.max_keys"]
        );
        let logged = cfg("[access_log]\npath = \"-\"");
        assert_eq!(restart_required(&base, &logged), ["access_log.path"]);
    }
}
