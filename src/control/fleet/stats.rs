//! CONTROL PLANE: the fleet's merged gate evidence.
//!
//! Every instance publishes, under its lease at `stats/NAME`, the running totals of both pools
//! since it started: requests, errors, violations and the latency bins as an HdrHistogram in
//! its own V2 format (base64 in the gateway's JSON). A total is the buckets this instance has
//! completed plus the current one as far as it goes, so it only grows and it is at most one
//! `publish_interval` old when written.
//!
//! The leader reads every live instance's record on each membership round (a dead instance's
//! key goes with its lease) and keeps, per instance, the last total it read and the part of it
//! the controller has already taken. Each controller tick takes what every other instance
//! added since ([`Merged::take`]) and adds it to the step's evidence, which the leader's own
//! ring fills as before: the gates judge the fleet's samples, each at most one publish
//! interval plus one membership round old. A total that went down (the instance restarted)
//! counts from zero again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde_json::{json, Value};

use super::etcd::{b64, unb64};
use crate::config::PoolId;
use crate::metrics::window::{LiveStats, Summary};

/// Both pools' summaries, indexed by [`PoolId::index`].
pub type Pools = [Summary; 2];

/// This instance's running totals (see the module doc).
#[derive(Debug, Default)]
pub struct Running {
    completed: Pools,
    /// The first bucket not in `completed` yet.
    next_epoch: u64,
}

impl Running {
    /// The totals up to now: completed buckets are merged once, the current one is added as
    /// it stands.
    pub fn totals(&mut self, stats: &LiveStats) -> Pools {
        let current = stats.epoch_of(stats.now_ms());
        let mut out: Pools = Default::default();
        for pool in PoolId::ALL {
            let i = pool.index();
            if current > self.next_epoch {
                self.completed[i].merge(&stats.summary(pool, self.next_epoch, current - 1));
            }
            out[i] = self.completed[i].clone();
            out[i].merge(&stats.summary(pool, current, current));
        }
        self.next_epoch = self.next_epoch.max(current);
        out
    }
}

/// The record written at `stats/NAME`.
pub fn encode(name: &str, started_unix_ms: u64, pools: &Pools) -> Value {
    let mut out = serde_json::Map::new();
    for pool in PoolId::ALL {
        let s = &pools[pool.index()];
        let mut bytes = Vec::new();
        let latency = match V2Serializer::new().serialize(&s.to_histogram(), &mut bytes) {
            Ok(_) => b64(&bytes),
            Err(_) => String::new(),
        };
        out.insert(
            pool.as_str().to_string(),
            json!({
                "requests": s.requests,
                "errors": s.errors,
                "violations": s.violations,
                "latency_hdr_v2": latency,
            }),
        );
    }
    json!({
        "name": name,
        "started_unix_ms": started_unix_ms,
        "written_unix_ms": super::members::now_ms(),
        "pools": out,
    })
}

/// One instance's record, read back; `None` if it is not one this version writes.
pub struct Record {
    pub name: String,
    pub started_unix_ms: u64,
    pub pools: Pools,
}

pub fn decode(v: &Value) -> Option<Record> {
    let mut pools: Pools = Default::default();
    for pool in PoolId::ALL {
        let p = &v["pools"][pool.as_str()];
        let bytes = unb64(p["latency_hdr_v2"].as_str()?)?;
        let h: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .ok()?;
        pools[pool.index()] = Summary::from_histogram(
            &h,
            p["errors"].as_u64().unwrap_or(0),
            p["violations"].as_u64().unwrap_or(0),
        );
    }
    Some(Record {
        name: v["name"].as_str()?.to_string(),
        started_unix_ms: v["started_unix_ms"].as_u64().unwrap_or(0),
        pools,
    })
}

struct Peer {
    started_unix_ms: u64,
    latest: Pools,
    taken: Pools,
}

/// The other instances' totals as last read, and what the controller took of them.
#[derive(Default)]
pub struct Merged {
    peers: Mutex<BTreeMap<String, Peer>>,
}

impl Merged {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live instances' records (this one's excluded); the others are forgotten.
    pub fn update(&self, records: Vec<Record>) {
        let mut peers = self.lock();
        peers.retain(|name, _| records.iter().any(|r| &r.name == name));
        for r in records {
            match peers.get_mut(&r.name) {
                Some(p) if p.started_unix_ms == r.started_unix_ms => p.latest = r.pools,
                _ => {
                    peers.insert(
                        r.name,
                        Peer {
                            started_unix_ms: r.started_unix_ms,
                            latest: r.pools,
                            taken: Default::default(),
                        },
                    );
                }
            }
        }
    }

    /// What the other instances added since the last call, summed.
    pub fn take(&self) -> Pools {
        let mut out: Pools = Default::default();
        for p in self.lock().values_mut() {
            for ((sum, latest), taken) in out.iter_mut().zip(&p.latest).zip(&mut p.taken) {
                sum.merge(&latest.since(taken));
                taken.clone_from(latest);
            }
        }
        out
    }

    /// For `fleet`/`status`: the fleet's totals per pool (`own` plus every other live
    /// instance's last record) and the instances they come from.
    pub fn view(&self, own_name: &str, own: &Pools) -> Value {
        let peers = self.lock();
        let mut from = vec![own_name.to_string()];
        from.extend(peers.keys().cloned());
        let mut pools = serde_json::Map::new();
        for pool in PoolId::ALL {
            let i = pool.index();
            let mut s = own[i].clone();
            for p in peers.values() {
                s.merge(&p.latest[i]);
            }
            pools.insert(
                pool.as_str().to_string(),
                json!({ "requests": s.requests, "errors": s.errors, "violations": s.violations }),
            );
        }
        json!({ "from": from, "pools": pools })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_record_round_trips_through_the_v2_format() {
        let mut pools: Pools = Default::default();
        for ms in [1u64, 3, 17, 250, 4_000] {
            pools[0].add(Duration::from_millis(ms), ms > 100);
        }
        pools[1].add(Duration::from_micros(90), false);
        let back = decode(&encode("edge-1", 7, &pools)).expect("a record this version wrote");
        assert_eq!(back.name, "edge-1");
        assert_eq!(back.started_unix_ms, 7);
        assert_eq!(back.pools, pools);
    }

    #[test]
    fn take_hands_out_each_sample_once_and_a_restart_counts_from_zero() {
        let merged = Merged::default();
        let rec = |started, n: u64| {
            let mut pools: Pools = Default::default();
            for _ in 0..n {
                pools[1].add(Duration::from_millis(2), false);
            }
            Record {
                name: "edge-2".into(),
                started_unix_ms: started,
                pools,
            }
        };
        merged.update(vec![rec(1, 5)]);
        assert_eq!(merged.take()[1].requests, 5);
        assert_eq!(merged.take()[1].requests, 0);
        merged.update(vec![rec(1, 8)]);
        assert_eq!(merged.take()[1].requests, 3);
        merged.update(vec![rec(2, 2)]);
        assert_eq!(merged.take()[1].requests, 2);
        merged.update(Vec::new());
        assert_eq!(merged.take()[1].requests, 0);
    }
}
