//! CONTROL PLANE: what operators drive — the admin socket and the operations behind it.
//! Nothing here runs per request; changes reach the data plane only as a new route table.

pub mod admin;
pub mod command;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::PoolId;
use crate::metrics::Metrics;
use crate::proxy::route::{RouteHandle, RouteTable, FULL_BP};
use command::AdminError;

/// The operations behind admin commands, over the shared route handle.
pub struct Control {
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
}

impl Control {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>) -> Self {
        let c = Control { routes, metrics };
        c.publish_gauges(&c.routes.load());
        c
    }

    /// Sets green's weight in one route-table swap.
    pub fn set_weight(&self, green_bp: u16, expect_gen: Option<u64>) -> Result<Arc<RouteTable>, AdminError> {
        let writer = self.routes.writer();
        let current = writer.current();
        check_gen(&current, expect_gen)?;
        let next = writer.publish(|t| RouteTable { green_bp: green_bp.min(FULL_BP), ..t.derive() });
        self.publish_gauges(&next);
        Ok(next)
    }

    fn publish_gauges(&self, t: &RouteTable) {
        self.metrics.green_weight.set(f64::from(t.green_bp) / f64::from(FULL_BP));
        self.metrics.generation.set(t.generation as f64);
    }

    pub fn status(&self) -> Value {
        let t = self.routes.load();
        let pools: serde_json::Map<String, Value> = PoolId::ALL
            .iter()
            .map(|&id| {
                let p = t.pool(id);
                let backends: Vec<Value> = p
                    .backends
                    .iter()
                    .map(|b| json!({ "addr": b.addr, "enabled": b.is_enabled(), "inflight": b.inflight() }))
                    .collect();
                (id.as_str().to_string(), json!({ "state": t.states[id.index()], "backends": backends }))
            })
            .collect();
        json!({
            "generation": t.generation,
            "green_percent": percent(t.green_bp),
            "blue_percent": percent(FULL_BP - t.green_bp),
            "pools": pools,
        })
    }
}

/// Basis points as a percent with up to two decimals.
pub fn percent(bp: u16) -> f64 {
    f64::from(bp) / 100.0
}

fn check_gen(t: &RouteTable, expect: Option<u64>) -> Result<(), AdminError> {
    match expect {
        Some(g) if g != t.generation => Err(AdminError::new(
            "conflict",
            format!("generation is {}, not {g}; re-read status and retry", t.generation),
        )),
        _ => Ok(()),
    }
}
