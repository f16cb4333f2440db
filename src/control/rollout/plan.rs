//! CONTROL PLANE: what a rollout was asked to do — its steps, timings and gate limits.
//!
//! Persisted inside the rollout's JSON: durations as integer milliseconds, pools by name.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{PoolId, RolloutConfig};

/// The candidate's share at 100% (as `proxy::route::FULL_BP`).
pub(super) const FULL_BP: u16 = 10_000;

/// Steps and timings of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(with = "pool_name")]
    pub candidate: PoolId,
    /// Candidate shares in basis points: strictly increasing, ending at 10000.
    pub steps_bp: Vec<u16>,
    #[serde(with = "millis")]
    pub hold: Duration,
    #[serde(with = "millis")]
    pub bake: Duration,
    #[serde(with = "millis")]
    pub window: Duration,
    /// A step (or the bake) still short of samples after this long pauses the rollout.
    #[serde(with = "millis")]
    pub max_hold: Duration,
    /// Samples from this long after each weight change are not judged.
    #[serde(with = "millis")]
    pub settle: Duration,
    pub gates: GateLimits,
}

impl Plan {
    /// The configured plan for moving traffic onto `candidate`.
    pub fn from_config(candidate: PoolId, cfg: &RolloutConfig) -> Plan {
        Plan {
            candidate,
            steps_bp: cfg.steps_bp.clone(),
            hold: cfg.hold,
            bake: cfg.bake,
            window: cfg.window,
            max_hold: cfg.max_hold,
            settle: cfg.settle,
            gates: cfg.gates.clone(),
        }
    }

    /// The same checks as the config's, for plans built from admin arguments.
    pub fn validate(&self) -> Result<(), String> {
        let Some(&last) = self.steps_bp.last() else {
            return Err("steps are empty; give e.g. 10,50,100".into());
        };
        if self.steps_bp.windows(2).any(|w| w[0] >= w[1]) || self.steps_bp[0] == 0 {
            return Err("steps must be above 0 and strictly increasing, e.g. 10,50,100".into());
        }
        if last != FULL_BP {
            return Err(format!(
                "the last step is {}%, it must be 100",
                f64::from(last) / 100.0
            ));
        }
        if self.window.is_zero() {
            return Err("the judgment window must be longer than 0".into());
        }
        Ok(())
    }
}

/// Limits of the judgment gates and tripwires: `[rollout.gates]` of the config (read in
/// `src/config/rollout.rs`) and the plan's copy, persisted with the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateLimits {
    #[serde(with = "millis")]
    pub p99_max: Duration,
    pub p99_ratio_max: f64,
    #[serde(with = "millis")]
    pub p99_min_delta: Duration,
    /// How much slower the candidate's median may be than stable's (sequential method).
    /// Older records lack the sequential keys: they get the defaults.
    #[serde(with = "millis", default = "default_p50_max_delta")]
    pub p50_max_delta: Duration,
    /// `sequential` (anytime-valid tests, the default) or `window` (point estimates).
    #[serde(default)]
    pub method: Method,
    /// The false-rollback budget of one rollout, split over its sequential tests.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    pub error_rate_max: f64,
    pub error_rate_margin: f64,
    pub min_requests: u64,
    pub min_latency_samples: u64,
    pub fail_windows: u32,
    pub consecutive_errors: u32,
    pub hash_violations_max: u32,
    pub tripwire_error_rate: f64,
    pub tripwire_min_requests: u64,
}

/// How the judgment gates decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Anytime-valid tests over everything since the step's settle (see `sequential`).
    #[default]
    Sequential,
    /// Point estimates over the sliding window, `fail_windows` failures in a row.
    Window,
}

fn default_p50_max_delta() -> Duration {
    Duration::from_millis(1)
}

fn default_alpha() -> f64 {
    0.01
}

/// `Duration` as whole milliseconds.
pub(super) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `PoolId` by name (the config type only serializes).
pub(super) mod pool_name {
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    use crate::config::PoolId;

    pub fn serialize<S: Serializer>(p: &PoolId, s: S) -> Result<S::Ok, S::Error> {
        p.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PoolId, D::Error> {
        let name = String::deserialize(d)?;
        PoolId::parse(&name).ok_or_else(|| de::Error::custom(format!("unknown pool {name:?}")))
    }
}
