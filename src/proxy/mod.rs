//! DATA PLANE: everything a request touches, in the order it touches it. Nothing here
//! awaits the control plane: a request loads the route table once and never waits on a
//! lock.
//!
//! ```text
//! conn        a connection's life: accept (connection limit), TLS handshake (tls),
//!             sniff and park idle HTTP/1.1 connections, serve with hyper, close gently
//!             on shutdown or a pool drain
//! sniff       the raw request stream: framing policy, idle tracking, header deadline
//! service     the request function: admit (headers) → route → forward → answer
//! edge        at the door and on the way out: client address, request id, rate limit,
//!             pool caps, security headers, access log
//! route       the route table: one ArcSwap snapshot, the pool by weight or affinity
//! backend     live backend state: in-flight counts, health, ejection, P2C, retry budget
//! upstream    keep-alive connections to backends (plain or TLS)
//! body        request and response bodies, streaming under limits
//! headers     pure header logic: validation, hop-by-hop, X-Forwarded-*, the hash check
//! error       ProxyError: who is to blame, and the one error → status mapping
//! settings    the per-request settings a route table carries
//! health      (background) active health checks
//! tls         TLS termination: certificates by SNI, reloaded in place
//! ```

pub mod backend;
pub mod body;
pub mod conn;
pub mod edge;
pub mod error;
pub mod headers;
pub mod health;
pub mod route;
pub mod service;
pub mod settings;
pub mod sniff;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

use crate::config::{Config, PoolId};
use backend::{Backend, PassiveHealth, Pool, RetryBudget};
use route::{PoolState, RouteTable};
use settings::Settings;
use upstream::UpstreamOptions;

/// Builds the pools (backends and their connection pools) a config names.
pub fn build_pools(cfg: &Config) -> Result<[Arc<Pool>; 2], String> {
    let build = |id: PoolId| -> Result<Arc<Pool>, String> {
        let pc = cfg.pool(id);
        let tls = match &pc.tls {
            Some(t) => Some(Arc::new(
                upstream::UpstreamTlsClient::new(t).map_err(|e| format!("pools.{id}.tls: {e}"))?,
            )),
            None => None,
        };
        let opts = UpstreamOptions {
            connect_timeout: cfg.proxy.timeouts.connect,
            idle_timeout: cfg.proxy.timeouts.upstream_idle,
            max_idle_per_backend: pc.max_idle_per_backend,
            tls,
        };
        let backends = pc
            .backends
            .iter()
            .map(|a| {
                Backend::new(a, opts.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("pools.{id}.backends: {a}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let r = &cfg.proxy.retries;
        Ok(Arc::new(Pool {
            id,
            backends: backends.into(),
            retries: RetryBudget::new(u64::from(r.budget_percent), u64::from(r.min_retries)),
            passive: PassiveHealth {
                consecutive_failures: pc.passive.consecutive_failures,
                ejection: pc.passive.ejection,
                max_ejected_percent: pc.passive.max_ejected_percent,
            },
            health: pc.health.clone(),
        }))
    };
    Ok([build(PoolId::Blue)?, build(PoolId::Green)?])
}

/// The first route table of a config.
pub fn initial_table(cfg: &Config) -> Result<RouteTable, String> {
    Ok(RouteTable {
        generation: 1,
        green_bp: cfg.split.green_bp,
        salt: 0,
        pools: build_pools(cfg)?,
        states: [PoolState::Ready; 2],
        settings: Arc::new(Settings::from_config(cfg)),
        failover: None,
    })
}
