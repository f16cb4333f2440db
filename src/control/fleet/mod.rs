//! CONTROL PLANE: the fleet — several instances sharing one route table on etcd
//! (`[fleet]`; `docs/fleet.md`).
//!
//! [`store::EtcdStore`] is the [`StateStore`](super::state::StateStore) every mutation goes
//! through (a compare-and-swap transaction, see there); [`run`] keeps this instance on the
//! fleet's table: it reads `table` and `rollout`, applies them through
//! [`Control::apply_shared`] (the same route-table swap as a local change), then watches
//! `table` and does the same on every change, reconnecting with a backoff when etcd goes
//! away. Meanwhile the last table keeps serving: the data plane never waits on etcd.
//!
//! [`etcd`] is the client: etcd's JSON gateway over hyper, no `protoc` at build time.
//! [`members`] keeps this instance's membership under a lease and competes for `leader`;
//! [`stats`] merges the gate evidence every instance publishes.

pub mod etcd;
pub mod members;
pub mod stats;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Control;
use crate::config::FleetConfig;
use etcd::{b64, Etcd, EtcdError};
use store::{EtcdStore, Snapshot};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a quiet watch looks for a locally kept change to write (see [`follow`]).
const PENDING_CHECK: Duration = Duration::from_millis(100);

/// The store of a `[fleet]` config: the etcd client is built now (TLS files and the
/// password file are read here, so a bad path fails at start).
pub fn store(cfg: &FleetConfig) -> Result<Arc<EtcdStore>, String> {
    let etcd = Arc::new(Etcd::new(cfg)?);
    EtcdStore::new(etcd, &cfg.prefix)
        .map(Arc::new)
        .map_err(|e| format!("cannot start the fleet store's thread: {e}"))
}

/// Follows the fleet's table until `shutdown` (see the module doc).
pub async fn run(control: Arc<Control>, store: Arc<EtcdStore>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut was_up = true;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = follow(&control, &store, &mut backoff) => r,
        };
        let Err(e) = outcome;
        if was_up {
            warn!(error = %e, "fleet: lost the watch on etcd; serving the last table and retrying");
        }
        was_up = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if store.is_up() {
            was_up = true;
        }
    }
}

/// Reads the table, applies it, and watches for changes; returns only on an error.
async fn follow(
    control: &Arc<Control>,
    store: &Arc<EtcdStore>,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, EtcdError> {
    store.flush_pending().await?;
    let snapshot = store.read().await?;
    let start = snapshot.revision + 1;
    adopt(control, store, snapshot).await;
    let request = json!({ "create_request": {
        "key": b64(store.key("table").as_bytes()),
        "start_revision": start.to_string(),
    }});
    let mut body = store.etcd.stream("/v3/watch", &request).await?;
    info!(from_revision = start, "fleet: watching the table on etcd");
    *backoff = BACKOFF_MIN;
    let mut buf = BytesMut::new();
    loop {
        // A change kept while etcd was silent (a partition that never broke the watch)
        // must not wait for the next table event: look for one between frames too.
        let next = tokio::select! {
            next = body.frame() => next,
            _ = tokio::time::sleep(PENDING_CHECK) => {
                if store.has_pending() {
                    return Err(EtcdError::Unreachable(
                        "a change made locally waits for etcd".into(),
                    ));
                }
                continue;
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|e| EtcdError::Unreachable(format!("watch: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        loop {
            let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let message = match values.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    return Err(EtcdError::Refused {
                        path: "/v3/watch".into(),
                        message: format!("not JSON ({e})"),
                    })
                }
                None => break,
            };
            let used = values.byte_offset();
            buf.advance(used);
            if let Some(err) = message.get("error") {
                return Err(EtcdError::Refused {
                    path: "/v3/watch".into(),
                    message: err.to_string(),
                });
            }
            let result = &message["result"];
            if result["canceled"].as_bool() == Some(true) {
                return Err(EtcdError::Refused {
                    path: "/v3/watch".into(),
                    message: format!(
                        "watch canceled: {}",
                        result["cancel_reason"]
                            .as_str()
                            .unwrap_or("no reason given")
                    ),
                });
            }
            if store.has_pending() {
                // An emergency change waits: write it before adopting anything from etcd.
                return Err(EtcdError::Unreachable(
                    "a change made locally waits for etcd".into(),
                ));
            }
            let changed = result["events"].as_array().is_some_and(|e| !e.is_empty());
            if changed {
                // The event is a trigger: the table and the rollout record are read
                // together, so both come from the same transaction.
                adopt(control, store, store.read().await?).await;
            }
        }
    }
    Err(EtcdError::Unreachable("the watch stream ended".into()))
}

/// Applies a snapshot if it is newer than what this instance has applied or written.
async fn adopt(control: &Arc<Control>, store: &Arc<EtcdStore>, snapshot: Snapshot) {
    let Some(state) = snapshot.state else {
        return;
    };
    if store.has_pending() {
        return;
    }
    let rev = snapshot.mod_revision;
    if rev <= store.applied_revision() {
        return;
    }
    let (control, store) = (control.clone(), store.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let s = store.clone();
        control.apply_shared(&state, move || s.advance(rev))
    })
    .await;
    match applied {
        Ok(Ok(_)) => {}
        Ok(Err(why)) => error!(
            revision = rev,
            "fleet: the table in etcd is unusable ({why}); keeping the current one"
        ),
        Err(e) => error!(error = %e, "fleet: applying the table failed"),
    }
}
