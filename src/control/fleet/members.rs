//! CONTROL PLANE: this instance's membership in the fleet.
//!
//! Under a lease of `lease_ttl` (kept alive every third of it) the instance writes
//! `instances/NAME` (applied generation, config digest, version) whenever its table
//! changes, and tries to take `leader` (a transaction that creates the key only if it does
//! not exist, under the same lease: a dead leader's key goes with its lease). Every
//! `publish_interval` it reads the fleet — instances, leader, the table's generation —
//! for `status`, `fleet` and the `switchyard_fleet_*` gauges. A lease that expired (etcd
//! unreachable longer than `lease_ttl`) is replaced by a new one when etcd answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::Gauge;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::etcd::{b64, int, EtcdError, Kv};
use super::stats::{self, Merged, Pools, Running};
use super::store::EtcdStore;
use crate::config::FleetConfig;
use crate::control::{state, Control};
use crate::metrics::names;
use crate::metrics::window::LiveStats;

pub struct Members {
    control: Arc<Control>,
    store: Arc<EtcdStore>,
    name: String,
    ttl: Duration,
    interval: Duration,
    view: Mutex<Value>,
    leader: Arc<AtomicBool>,
    gauges: Gauges,
    /// This instance's pool totals (`stats/NAME`), the last ones written, and the others'.
    live: Arc<LiveStats>,
    running: Mutex<Running>,
    own: Mutex<Pools>,
    merged: Arc<Merged>,
    started_unix_ms: u64,
}

struct Gauges {
    instances: Gauge,
    leader: Gauge,
    lag: Gauge,
    store_up: Gauge,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Members {
    pub fn new(
        control: Arc<Control>,
        store: Arc<EtcdStore>,
        cfg: &FleetConfig,
        live: Arc<LiveStats>,
    ) -> Arc<Members> {
        let m = &control.metrics;
        let gauges = Gauges {
            instances: m.gauge(names::FLEET_INSTANCES, Vec::new()),
            leader: m.gauge(names::FLEET_LEADER, Vec::new()),
            lag: m.gauge(names::FLEET_LAG_SECONDS, Vec::new()),
            store_up: m.gauge(names::STORE_UP, Vec::new()),
        };
        gauges.store_up.set(1.0);
        let members = Arc::new(Members {
            view: Mutex::new(
                json!({ "instance": cfg.instance, "store_up": false, "instances": [], "leader": null }),
            ),
            control: control.clone(),
            store,
            name: cfg.instance.clone(),
            ttl: cfg.lease_ttl,
            interval: cfg.publish_interval,
            leader: control.leader_flag(),
            gauges,
            live,
            running: Mutex::new(Running::default()),
            own: Mutex::new(Pools::default()),
            merged: Arc::new(Merged::default()),
            started_unix_ms: now_ms(),
        });
        control.attach_fleet_stats(members.merged.clone());
        let view = members.clone();
        control.attach_fleet_view(Arc::new(move || view.view()));
        members
    }

    /// The last view of the fleet (see the module doc).
    pub fn view(&self) -> Value {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this instance holds the leader key.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        self.gauges.store_up.set(if up { 1.0 } else { 0.0 });
        if let Some(m) = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_object_mut()
        {
            m.insert("store_up".into(), json!(up));
        }
        if !up {
            self.set_leader(false);
        }
    }

    fn set_leader(&self, leads: bool) {
        if !leads {
            self.store.set_fence(None);
        }
        let was = self.leader.swap(leads, Ordering::AcqRel);
        self.gauges.leader.set(if leads { 1.0 } else { 0.0 });
        if leads && !was {
            info!(instance = %self.name, "fleet: this instance is the leader");
        } else if was && !leads {
            warn!(instance = %self.name, "fleet: this instance is no longer the leader");
        }
    }

    /// Keeps the membership up until `shutdown`; a new lease after each failure.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut quiet = false;
        loop {
            let outcome = self.session(&shutdown).await;
            let Err(e) = outcome else {
                return;
            };
            self.set_up(false);
            if !quiet {
                warn!(error = %e, "fleet: membership lost; retrying (the route table keeps serving)");
                quiet = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval.max(Duration::from_millis(100))) => {}
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), EtcdError> {
        let etcd = &self.store.etcd;
        let granted = etcd
            .call(
                "/v3/lease/grant",
                &json!({ "TTL": self.ttl.as_secs().to_string() }),
            )
            .await?;
        let lease = int(&granted["ID"]);
        if lease == 0 {
            return Err(EtcdError::Refused {
                path: "/v3/lease/grant".into(),
                message: granted.to_string(),
            });
        }
        self.set_up(true);
        let mut events = self.control.subscribe();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut registered = None;
        let mut kept = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Leaving: the instance key and a held leader key go with the lease.
                    let _ = etcd.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })).await;
                    self.set_leader(false);
                    return Ok(());
                }
                _ = tick.tick() => {}
                // A route change: register the new generation at once (for --wait-applied).
                _ = events.recv() => {}
            }
            if kept.elapsed() >= self.ttl / 3 {
                let v = etcd
                    .call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))
                    .await?;
                if int(&v["result"]["TTL"]) <= 0 {
                    return Err(EtcdError::Refused {
                        path: "/v3/lease/keepalive".into(),
                        message: "the lease expired".into(),
                    });
                }
                kept = Instant::now();
            }
            // One slow or failed call does not end the session: only the lease (kept
            // alive above) does. Meanwhile this instance does not count itself leader.
            let generation = self.control.routes.load().generation;
            let round = async {
                if registered != Some(generation) {
                    self.register(lease, generation).await?;
                    registered = Some(generation);
                }
                self.publish(lease).await?;
                self.campaign(lease).await?;
                self.refresh().await
            };
            match round.await {
                Ok(()) => self.set_up(true),
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: membership round failed; retrying");
                    self.set_up(false);
                }
            }
        }
    }

    async fn register(&self, lease: i64, generation: u64) -> Result<(), EtcdError> {
        let record = json!({
            "name": self.name,
            "generation": generation,
            "config_digest": state::config_fingerprint(&self.control.config()),
            "version": env!("CARGO_PKG_VERSION"),
            "applied_unix_ms": now_ms(),
        });
        let key = self.store.key(&format!("instances/{}", self.name));
        self.store
            .etcd
            .call(
                "/v3/kv/put",
                &json!({ "key": b64(key.as_bytes()), "value": b64(record.to_string().as_bytes()), "lease": lease.to_string() }),
            )
            .await
            .map(|_| ())
    }

    /// Writes this instance's pool totals at `stats/NAME` (see [`stats`]).
    async fn publish(&self, lease: i64) -> Result<(), EtcdError> {
        let totals = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .totals(&self.live);
        let record = stats::encode(&self.name, self.started_unix_ms, &totals);
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = totals;
        let key = self.store.key(&format!("stats/{}", self.name));
        self.store
            .etcd
            .call(
                "/v3/kv/put",
                &json!({ "key": b64(key.as_bytes()), "value": b64(record.to_string().as_bytes()), "lease": lease.to_string() }),
            )
            .await
            .map(|_| ())
    }

    /// Takes `leader` if nobody holds it; notes who does.
    async fn campaign(&self, lease: i64) -> Result<(), EtcdError> {
        let key = b64(self.store.key("leader").as_bytes());
        let body = json!({
            "compare": [{ "target": "CREATE", "key": key, "create_revision": "0", "result": "EQUAL" }],
            "success": [{ "request_put": { "key": key, "value": b64(self.name.as_bytes()), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        let v = self.store.etcd.call("/v3/kv/txn", &body).await?;
        let leads = v["succeeded"].as_bool() == Some(true)
            || v["responses"][0]["response_range"]["kvs"]
                .get(0)
                .and_then(Kv::from_json)
                .is_some_and(|kv| kv.lease == lease && kv.value == self.name.as_bytes());
        if leads {
            self.store.set_fence(Some((self.name.clone(), lease)));
        }
        self.set_leader(leads);
        Ok(())
    }

    /// Reads the instances, the leader and the table's generation into the view.
    async fn refresh(&self) -> Result<(), EtcdError> {
        let p = |k: &str| b64(self.store.key(k).as_bytes());
        let body = json!({
            "success": [
                { "request_range": { "key": p("instances/"), "range_end": p("instances0") } },
                { "request_range": { "key": p("leader") } },
                { "request_range": { "key": p("table") } },
                { "request_range": { "key": p("stats/"), "range_end": p("stats0") } },
            ]
        });
        let v = self.store.etcd.call("/v3/kv/txn", &body).await?;
        let kvs = |i: usize| -> Vec<Kv> {
            v["responses"][i]["response_range"]["kvs"]
                .as_array()
                .map(|a| a.iter().filter_map(Kv::from_json).collect())
                .unwrap_or_default()
        };
        let leader = kvs(1)
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let table: Value = kvs(2)
            .first()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or(Value::Null);
        let fleet_generation = table["generation"].as_u64().unwrap_or(0);
        let written = table["written_unix_ms"].as_u64().unwrap_or(0);
        let now = now_ms();
        let mut max_lag = 0.0f64;
        let instances: Vec<Value> = kvs(0)
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .map(|mut r| {
                let g = r["generation"].as_u64().unwrap_or(0);
                let lag = if g < fleet_generation {
                    now.saturating_sub(written) as f64 / 1000.0
                } else {
                    0.0
                };
                max_lag = max_lag.max(lag);
                let name = r["name"].as_str().unwrap_or("").to_string();
                r["lag_seconds"] = json!(lag);
                r["applied"] = json!(g >= fleet_generation);
                r["leader"] = json!(leader.as_deref() == Some(name.as_str()));
                r
            })
            .collect();
        self.gauges.instances.set(instances.len() as f64);
        self.gauges.lag.set(max_lag);
        let table_revision = kvs(2).first().map_or(0, |kv| kv.mod_revision);
        let peers = kvs(3)
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .filter_map(|v| stats::decode(&v))
            .filter(|r| r.name != self.name)
            .collect();
        self.merged.update(peers);
        let merged = self.merged.view(
            &self.name,
            &self.own.lock().unwrap_or_else(|e| e.into_inner()),
        );
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = json!({
            "instance": self.name,
            "store_up": true,
            "leader": leader,
            "generation": fleet_generation,
            // This instance is on etcd's table when the two revisions are equal.
            "table_revision": table_revision,
            "applied_revision": self.store.applied_revision(),
            // A rollback made while etcd was unreachable, not written there yet.
            "rollback_pending": self.store.has_pending(),
            "all_applied": instances.iter().all(|i| i["applied"] == true),
            "instances": instances,
            // The pools' totals over every live instance: what the leader's gates merge.
            "merged": merged,
        });
        Ok(())
    }
}
