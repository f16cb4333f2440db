//! CONTROL PLANE: the fleet's state store on etcd.
//!
//! Keys under `[fleet] prefix`: `table` (the route table: weights, pool states, disabled
//! backends, stable pool, generation, pools fingerprint) and `rollout` (the rollout
//! controller's record). Both are written by one transaction that compares the
//! `mod_revision` of `table` with the revision this instance last applied: another
//! instance's write in between makes it fail (`conflict`), so exactly one change wins
//! per generation. A write that cannot reach etcd is `store_unavailable`.
//!
//! [`StateStore`] is synchronous (saves happen inside the route writer's critical
//! section); the calls run on the store's own thread and runtime, so a save blocks only
//! its caller, never a runtime worker's other tasks, and works from any context.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::etcd::{b64, int, Etcd, EtcdError, Kv};
use crate::control::state::{PersistedState, StateError, StateStore, STATE_VERSION};
use crate::control::Control;

/// The table and rollout record as read from etcd, with the table's revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: Option<PersistedState>,
    /// `mod_revision` of `table` (0: no table yet).
    pub mod_revision: i64,
    /// The store's revision when read (a watch starts after it).
    pub revision: i64,
    /// When the table was written (`written_unix_ms`; 0 if unknown).
    pub written_unix_ms: u64,
}

pub struct EtcdStore {
    pub(super) etcd: Arc<Etcd>,
    prefix: String,
    /// `mod_revision` of the table this instance has applied or written.
    applied: AtomicI64,
    up: AtomicBool,
    /// An emergency change applied here while etcd was unreachable, to write when it returns.
    pending: Mutex<Option<(PersistedState, u64)>>,
    /// While this instance leads: its name and lease, which the leader's writes compare.
    fence: Mutex<Option<(String, i64)>>,
    bridge: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a local-first change (`rollback`) waits for etcd before it applies on this
/// instance alone and is kept to be written when etcd answers again.
const LOCAL_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

impl EtcdStore {
    pub fn new(etcd: Arc<Etcd>, prefix: &str) -> std::io::Result<EtcdStore> {
        let stop = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bridge = rt.handle().clone();
        let token = stop.clone();
        std::thread::Builder::new()
            .name("fleet-store".into())
            .spawn(move || rt.block_on(token.cancelled()))?;
        Ok(EtcdStore {
            etcd,
            prefix: prefix.to_string(),
            applied: AtomicI64::new(0),
            up: AtomicBool::new(true),
            pending: Mutex::new(None),
            fence: Mutex::new(None),
            bridge,
            stop,
        })
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the last call reached etcd.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn applied_revision(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Records that the table of revision `rev` is applied, unless a newer one already is;
    /// returns whether `rev` was news. Called under the route writer.
    pub fn advance(&self, rev: i64) -> bool {
        self.applied.fetch_max(rev, Ordering::AcqRel) < rev
    }

    fn note<T>(&self, r: &Result<T, EtcdError>) {
        let up = !matches!(r, Err(EtcdError::Unreachable(_)));
        self.up.store(up, Ordering::Relaxed);
    }

    /// Set by the membership loop: `Some((name, lease))` while this instance leads.
    pub fn set_fence(&self, fence: Option<(String, i64)>) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence;
    }

    /// The kept change and when it was made (Unix ms).
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<(PersistedState, u64)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an emergency change waits to be written to etcd.
    pub fn has_pending(&self) -> bool {
        self.lock_pending().is_some()
    }

    /// Writes the change kept while etcd was unreachable, with a generation above the one
    /// in etcd, unless etcd already holds the same values (another instance's rollback got
    /// there first) or a change written after this one was made (a later decision wins).
    /// Either way the watch then brings this instance to etcd's table.
    pub async fn flush_pending(&self) -> Result<(), EtcdError> {
        let Some((kept, made_ms)) = self.lock_pending().clone() else {
            return Ok(());
        };
        let done = |why: &str, generation: u64| {
            let mut pending = self.lock_pending();
            if pending.as_ref().map(|(s, _)| s) == Some(&kept) {
                *pending = None;
            }
            tracing::info!(
                generation,
                "fleet: the change made while etcd was unreachable: {why}"
            );
        };
        for _ in 0..10 {
            let snap = self.read().await?;
            if let Some(current) = &snap.state {
                if same_values(current, &kept) {
                    done("etcd already holds it", current.generation);
                    return Ok(());
                }
                if snap.written_unix_ms > made_ms {
                    done("etcd holds a later change, which wins", current.generation);
                    return Ok(());
                }
            }
            let mut state = kept.clone();
            let in_store = snap.state.as_ref().map_or(0, |s| s.generation);
            state.generation = kept.generation.max(in_store + 1);
            let keys = (self.key("table"), self.key("rollout"));
            let r = Self::write(
                self.etcd.clone(),
                keys,
                snap.mod_revision,
                state.clone(),
                None,
            )
            .await;
            self.note(&r);
            if let Ok(rev) = r? {
                // This instance already serves exactly what was written.
                if state.generation == kept.generation {
                    self.advance(rev);
                }
                done("written to etcd", state.generation);
                return Ok(());
            }
        }
        Err(EtcdError::Refused {
            path: self.key("table"),
            message: "the table kept changing while the kept change was written; retrying".into(),
        })
    }

    /// Runs `f` on the store's thread and waits for it (any calling context).
    /// [`StateStore::save`], giving etcd at most `limit` (else each call's own timeout).
    fn save_within(
        &self,
        state: &PersistedState,
        limit: Option<std::time::Duration>,
    ) -> Result<(), StateError> {
        let expected = self.applied_revision();
        let keys = (self.key("table"), self.key("rollout"));
        // The leader's own decisions are fenced: they apply only while it holds the key.
        let fence = if Control::acting_as_leader() {
            let held = self.fence.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match held {
                Some((name, lease)) => Some((self.key("leader"), name, lease)),
                None => return Err(StateError::Conflict(
                    "this instance no longer holds the fleet's leader key; the new leader decides"
                        .into(),
                )),
            }
        } else {
            None
        };
        let fut = Self::write(self.etcd.clone(), keys, expected, state.clone(), fence);
        let r = match limit {
            None => self.block(fut),
            Some(limit) => self.block(async move {
                tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                    Err(EtcdError::Unreachable(format!(
                        "no answer within {limit:?}"
                    )))
                })
            }),
        };
        self.note(&r);
        match r {
            Ok(Ok(rev)) => {
                self.advance(rev);
                Ok(())
            }
            Ok(Err(generation)) => Err(StateError::Conflict(format!(
                "another instance changed the fleet's table first, or this one no longer leads (generation {generation} in etcd, {} here); nothing changed; re-read status and retry",
                state.generation.saturating_sub(1)
            ))),
            Err(e) => Err(StateError::Unavailable(e.to_string())),
        }
    }

    fn block<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.bridge.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .expect("the store thread runs until the store is dropped")
    }

    /// Reads `table` and `rollout` in one transaction (a consistent pair).
    pub async fn read(&self) -> Result<Snapshot, EtcdError> {
        let r = read_snapshot(&self.etcd, &self.prefix).await;
        self.note(&r);
        r
    }

    /// The compare-and-swap write: succeeds only if `table` is still at `expected`.
    async fn write(
        etcd: Arc<Etcd>,
        keys: (String, String),
        expected: i64,
        state: PersistedState,
        fence: Option<(String, String, i64)>,
    ) -> Result<Result<i64, u64>, EtcdError> {
        let mut table = serde_json::to_value(&state).unwrap_or(Value::Null);
        if let Some(m) = table.as_object_mut() {
            m.remove("rollout");
            // For the fleet's lag: how long ago this generation was written.
            m.insert("written_unix_ms".into(), json!(super::members::now_ms()));
        }
        let (tkey, rkey) = (b64(keys.0.as_bytes()), b64(keys.1.as_bytes()));
        let mut compare = vec![
            json!({ "target": "MOD", "key": tkey, "mod_revision": expected.to_string(), "result": "EQUAL" }),
        ];
        if let Some((leader_key, name, lease)) = &fence {
            let lkey = b64(leader_key.as_bytes());
            compare.push(json!({ "target": "VALUE", "key": lkey, "value": b64(name.as_bytes()), "result": "EQUAL" }));
            compare.push(json!({ "target": "LEASE", "key": lkey, "lease": lease.to_string(), "result": "EQUAL" }));
        }
        let body = json!({
            "compare": compare,
            "success": [
                { "request_put": { "key": tkey, "value": b64(table.to_string().as_bytes()) } },
                { "request_put": { "key": rkey, "value": b64(state.rollout.to_string().as_bytes()) } },
            ],
            "failure": [ { "request_range": { "key": tkey } } ],
        });
        let v = etcd.call("/v3/kv/txn", &body).await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(Ok(int(&v["header"]["revision"])));
        }
        let generation = v["responses"][0]["response_range"]["kvs"]
            .get(0)
            .and_then(Kv::from_json)
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .and_then(|t| t["generation"].as_u64())
            .unwrap_or(0);
        Ok(Err(generation))
    }
}

impl StateStore for EtcdStore {
    fn load(&self) -> Result<Option<PersistedState>, StateError> {
        let etcd = self.etcd.clone();
        let prefix = self.prefix.clone();
        let r = self.block(async move { read_snapshot(&etcd, &prefix).await });
        self.note(&r);
        match r {
            Ok(s) => {
                self.advance(s.mod_revision);
                Ok(s.state.filter(|s| s.version == STATE_VERSION))
            }
            Err(e) => Err(StateError::Unavailable(e.to_string())),
        }
    }

    fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        self.save_within(state, None)
    }

    fn save_local_first(&self, state: &PersistedState) -> Result<Option<String>, StateError> {
        // Known down, or a change already waits: do not wait for another timeout. Otherwise
        // etcd gets a short moment only: a silent partition must not hold an emergency
        // rollback for a whole call timeout.
        let r = if self.is_up() && !self.has_pending() {
            self.save_within(state, Some(LOCAL_FIRST_WAIT))
        } else {
            Err(StateError::Unavailable("etcd unreachable".into()))
        };
        match r {
            Ok(()) => Ok(None),
            Err(StateError::Unavailable(why)) => {
                *self.lock_pending() = Some((state.clone(), super::members::now_ms()));
                tracing::warn!(generation = state.generation, reason = %why,
                    "fleet: etcd unreachable; applied on this instance only, to be written to etcd when it returns");
                Ok(Some(format!(
                    "applied on this instance; the fleet's etcd is unreachable ({why}): the change is written there when it returns"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.prefix)
    }

    fn shared(&self) -> bool {
        true
    }
}

/// See [`EtcdStore::read`].
pub async fn read_snapshot(etcd: &Etcd, prefix: &str) -> Result<Snapshot, EtcdError> {
    let key = |name: &str| format!("{prefix}{name}");
    let body = json!({
        "success": [
            { "request_range": { "key": b64(key("table").as_bytes()) } },
            { "request_range": { "key": b64(key("rollout").as_bytes()) } },
        ]
    });
    let v = etcd.call("/v3/kv/txn", &body).await?;
    let kv = |i: usize| {
        v["responses"][i]["response_range"]["kvs"]
            .get(0)
            .and_then(Kv::from_json)
    };
    let revision = int(&v["header"]["revision"]);
    let Some(table) = kv(0) else {
        return Ok(Snapshot {
            state: None,
            mod_revision: 0,
            revision,
            written_unix_ms: 0,
        });
    };
    let bad = |e: serde_json::Error| EtcdError::Refused {
        path: key("table"),
        message: format!("not a route table ({e})"),
    };
    let mut record: Value = serde_json::from_slice(&table.value).map_err(bad)?;
    let written_unix_ms = record["written_unix_ms"].as_u64().unwrap_or(0);
    record["rollout"] = kv(1)
        .and_then(|r| serde_json::from_slice(&r.value).ok())
        .unwrap_or(Value::Null);
    let state: PersistedState = serde_json::from_value(record).map_err(bad)?;
    Ok(Snapshot {
        state: Some(state),
        mod_revision: table.mod_revision,
        revision,
        written_unix_ms,
    })
}

/// The same route-table values, whatever the generation.
fn same_values(a: &PersistedState, b: &PersistedState) -> bool {
    PersistedState {
        generation: b.generation,
        ..a.clone()
    } == *b
}
