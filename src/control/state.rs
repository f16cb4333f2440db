//! CONTROL PLANE: persisted state — weights, pool states, disabled backends, the stable
//! pool and the rollout's own record — so a restart (even after kill -9) resumes where the
//! daemon stood.
//!
//! [`StateStore`] is the seam for a fleet: [`FileStateStore`] now, an etcd store later
//! (compare-and-set on `generation`, a watch for followers). The trait is synchronous
//! because every save happens inside the route writer's critical section, where the order
//! of saves must be the order of generations; an async store would run its client on its
//! own thread behind this interface.
//!
//! The file is JSON, written atomically: a temp file in the same directory, fsync, rename
//! over the old one, fsync the directory. A reader sees the old or the new state, never a mix.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, PoolId};

/// Version of the state file layout; a file of another version is ignored (config wins).
pub const STATE_VERSION: u32 = 1;

/// Everything that survives a restart. Pool states are `"ready"|"drain"|"maint"` and pools
/// `"blue"|"green"`, as in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    pub generation: u64,
    pub green_bp: u16,
    pub states: PoolStates,
    #[serde(default)]
    pub disabled_backends: Vec<BackendRef>,
    pub stable: String,
    /// Owned by the rollout controller; opaque here.
    #[serde(default)]
    pub rollout: Value,
    /// [`pools_fingerprint`] of the pools this state was written for.
    pub pools_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStates {
    pub blue: String,
    pub green: String,
}

/// One backend, named by its pool and its address as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendRef {
    pub pool: String,
    pub addr: String,
}

impl BackendRef {
    pub fn new(pool: PoolId, addr: &str) -> Self {
        BackendRef {
            pool: pool.as_str().to_string(),
            addr: addr.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A shared store holds a newer state than the one this change was made on.
    #[error("{0}")]
    Conflict(String),
    /// A shared store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

/// Where the state lives.
pub trait StateStore: Send + Sync {
    /// The saved state, `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<PersistedState>, StateError>;
    /// Replaces the saved state atomically.
    fn save(&self, state: &PersistedState) -> Result<(), StateError>;
    /// For logs: where the state lives.
    fn describe(&self) -> String;
    /// True when other instances share this state (the fleet's etcd store): a change is
    /// then saved before it is published, and a refused save ([`StateError::Conflict`],
    /// [`StateError::Unavailable`]) changes nothing.
    fn shared(&self) -> bool {
        false
    }
    /// An emergency change (`rollback`) that must not depend on the store: a shared store
    /// that cannot be reached keeps it to write when it returns and answers `Ok` with a
    /// warning for the reply. Other stores save as usual.
    fn save_local_first(&self, state: &PersistedState) -> Result<Option<String>, StateError> {
        self.save(state).map(|()| None)
    }
}

/// The state as one JSON file (`[state] path`).
pub struct FileStateStore {
    path: PathBuf,
}

impl FileStateStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStateStore { path: path.into() }
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl StateStore for FileStateStore {
    fn load(&self) -> Result<Option<PersistedState>, StateError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: self.path.clone(),
            message,
        };
        let value: Value = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let version = value.get("version").and_then(Value::as_u64);
        if version != Some(u64::from(STATE_VERSION)) {
            return Err(corrupt(format!(
                "version {version:?}, this daemon reads version {STATE_VERSION}"
            )));
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut body = serde_json::to_vec_pretty(state).map_err(|e| self.io(e.into()))?;
        body.push(b'\n');
        write_synced(&tmp, &body).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // The rename is durable only once the directory entry is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// A stable digest of the pools' membership (backend addresses per pool, order ignored).
/// FNV-1a: it detects change, it is not a security measure.
pub fn pools_fingerprint(pools: [&[&str]; 2]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, backends) in PoolId::ALL.iter().zip(pools) {
        let mut sorted: Vec<&str> = backends.to_vec();
        sorted.sort_unstable();
        for part in std::iter::once(id.as_str()).chain(sorted) {
            for b in part.bytes().chain([0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("fnv1a64:{h:016x}")
}

pub fn config_fingerprint(cfg: &Config) -> String {
    let list = |id: PoolId| {
        cfg.pool(id)
            .backends
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    };
    pools_fingerprint([&list(PoolId::Blue), &list(PoolId::Green)])
}

/// Which source the starting route table comes from, and why (for the log).
#[derive(Debug)]
pub enum Restore {
    /// The saved state applies.
    State(PersistedState),
    /// The config applies; `previous_generation` keeps generations increasing across restarts.
    Config {
        reason: String,
        previous_generation: Option<u64>,
    },
}

/// Decides between a loaded state and the config: the state wins unless it is missing,
/// unreadable, or was written for other pools.
pub fn choose(
    config_fingerprint: &str,
    loaded: Result<Option<PersistedState>, StateError>,
) -> Restore {
    match loaded {
        Ok(None) => Restore::Config { reason: "no saved state".into(), previous_generation: None },
        Err(e) => Restore::Config { reason: format!("saved state unusable ({e})"), previous_generation: None },
        Ok(Some(s)) if s.pools_fingerprint != config_fingerprint => Restore::Config {
            reason: format!(
                "the config's pools changed since the state was saved (fingerprint {} → {config_fingerprint})",
                s.pools_fingerprint
            ),
            previous_generation: Some(s.generation),
        },
        Ok(Some(s)) => Restore::State(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fp: &str) -> PersistedState {
        PersistedState {
            version: STATE_VERSION,
            generation: 12,
            green_bp: 3700,
            states: PoolStates {
                blue: "ready".into(),
                green: "drain".into(),
            },
            disabled_backends: vec![BackendRef::new(PoolId::Blue, "127.0.0.1:9001")],
            stable: "blue".into(),
            rollout: serde_json::json!({"phase": "idle"}),
            pools_fingerprint: fp.into(),
        }
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path().join("deep/state.json"));
        assert!(store.load().unwrap().is_none());
        store.save(&sample("a")).unwrap();
        store.save(&sample("b")).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample("b")));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("deep"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("state.json")],
            "no temp file left behind"
        );
    }

    #[test]
    fn corrupt_or_foreign_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = FileStateStore::new(&path);
        for text in [
            "",
            "{",
            "[]",
            "{\"version\":2}",
            "{\"version\":1}",
            "\u{0}\u{1}",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(
                matches!(store.load(), Err(StateError::Corrupt { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn fingerprint_ignores_order_but_not_membership_or_pool() {
        let fp = pools_fingerprint([&["a:1", "b:2"], &["c:3"]]);
        assert_eq!(fp, pools_fingerprint([&["b:2", "a:1"], &["c:3"]]));
        assert_ne!(fp, pools_fingerprint([&["a:1"], &["b:2", "c:3"]]));
        assert_ne!(fp, pools_fingerprint([&["a:1", "b:2"], &["c:4"]]));
        assert_ne!(
            pools_fingerprint([&["ab:1"], &[]]),
            pools_fingerprint([&["a", "b:1"], &[]])
        );
    }

    #[test]
    fn state_wins_unless_missing_unreadable_or_for_other_pools() {
        assert!(
            matches!(choose("x", Ok(Some(sample("x")))), Restore::State(s) if s.green_bp == 3700)
        );
        assert!(matches!(
            choose("x", Ok(None)),
            Restore::Config {
                previous_generation: None,
                ..
            }
        ));
        match choose("y", Ok(Some(sample("x")))) {
            Restore::Config {
                reason,
                previous_generation,
            } => {
                assert!(reason.contains("pools changed"), "{reason}");
                assert_eq!(previous_generation, Some(12));
            }
            other => panic!("{other:?}"),
        }
        let err = StateError::Corrupt {
            path: "s".into(),
            message: "bad".into(),
        };
        assert!(matches!(choose("x", Err(err)), Restore::Config { .. }));
    }
}
