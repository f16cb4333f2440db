//! CONTROL PLANE: `wait-drained POOL [timeout D]` — returns when the pool has nothing in
//! flight (requests, streaming bodies and upgraded connections all count), or fails with
//! `timeout` (`ctl` exits 5). Usually run after `pool POOL drain`, which stops new requests,
//! closes the pool's idle upstream connections and spreads the closing of downstream
//! connections over `proxy.drain_window` (see [`super::Control`]'s update path).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::command::{state_str, AdminError};
use super::{percent, Control};
use crate::config::PoolId;
use crate::proxy::route::PoolState;

/// `wait-drained` without `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often the in-flight count is read.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `pool` has had nothing in flight on two reads in a row (a request that
/// loaded the route table just before a drain is counted within microseconds, well
/// inside one poll).
pub async fn wait_drained(
    control: &Control,
    pool: PoolId,
    timeout: Duration,
) -> Result<Value, AdminError> {
    let start = Instant::now();
    let mut idle_reads = 0;
    loop {
        let t = control.routes.load();
        let inflight = t.pool(pool).inflight();
        idle_reads = if inflight == 0 { idle_reads + 1 } else { 0 };
        if idle_reads >= 2 {
            let state = t.states[pool.index()];
            let share = t.share_bp(pool);
            let mut v = json!({
                "pool": pool.as_str(),
                "drained": true,
                "inflight": 0,
                "state": state_str(state),
                "share_percent": percent(share),
                "waited_ms": start.elapsed().as_millis() as u64,
                "generation": t.generation,
            });
            if state == PoolState::Ready && share > 0 {
                v["warning"] = json!(format!(
                    "pool {pool} still takes {}% of new requests; run `pool {pool} drain` first to keep it empty",
                    percent(share)
                ));
            }
            return Ok(v);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(AdminError::new(
                "timeout",
                format!("pool {pool} still has {inflight} request(s) in flight after {timeout:?}"),
            ));
        }
        tokio::time::sleep(POLL.min(timeout - waited)).await;
    }
}
