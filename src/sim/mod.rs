//! SIMULATOR: `switchyard simulate` — many rollouts of the real, pure rollout state machine
//! ([`crate::control::rollout::Rollout`]) on synthetic traffic with injected time, to measure
//! the two rates the gates are judged by: how often a healthy candidate is rolled back (A/A)
//! and how often and how fast a regressed one is.
//!
//! Each tick draws both pools' requests for the tick (Poisson counts over a latency
//! distribution's histogram bins, errors at a rate, the candidate's runs of consecutive errors
//! in request order), keeps the sliding windows and per-step summaries exactly as the daemon's
//! controller does, and calls `Rollout::step` with the tick's time. Nothing sleeps.

pub mod dist;
mod record;
mod run;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{Config, PoolId};
use crate::control::rollout::{Method, Plan};
pub use dist::{Change, Latency};
pub use run::{simulate, simulate_on, Setup, Tally};

/// `switchyard simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Take `[rollout]` and `[rollout.gates]` from this config (default: the shipped defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rollouts per row.
    #[arg(long, default_value_t = 2000)]
    pub rollouts: usize,
    /// Total request rates (requests/s) for the A/A rows.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub rates: Vec<f64>,
    /// Total request rates for the regression rows.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub regression_rates: Vec<f64>,
    /// Latency distribution: heavy-tail (lognormal with a slow mode), bimodal, upstream
    /// (5,000 requests timed against an in-process upstream on loopback first), or a file of
    /// microseconds (one a line).
    #[arg(long, default_value = "heavy-tail")]
    pub latency: String,
    /// Both pools' base error rate (a fraction).
    #[arg(long, default_value_t = 0.001)]
    pub base_error: f64,
    /// Also run the window method (the gates of earlier releases) side by side.
    #[arg(long)]
    pub compare: bool,
    /// Seed of the random draws: the same seed gives the same table.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The shipped `[rollout]` defaults, as a plan moving traffic to green.
pub fn default_plan() -> Plan {
    let text = "[pools.blue]\nbackends = [\"127.0.0.1:9001\"]\n[pools.green]\nbackends = [\"127.0.0.1:9011\"]\n[proxy]\nlisten = [\"127.0.0.1:8080\"]\n";
    let config = Config::from_toml_str(text).expect("the built-in minimal config is valid");
    Plan::from_config(PoolId::Green, &config.rollout)
}

/// The window method with the defaults it shipped with (1000 latency samples per window).
pub fn window_method(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    p.gates.method = Method::Window;
    p.gates.min_latency_samples = 1000;
    p
}

/// The regressions of the table.
pub fn regressions() -> Vec<Change> {
    vec![
        Change::Shift(Duration::from_millis(1)),
        Change::Shift(Duration::from_millis(3)),
        Change::Scale(1.5),
        Change::Errors(0.005),
        Change::Errors(0.02),
    ]
}

/// Runs the table and prints it as Markdown; an error message for bad options.
pub fn main(args: &Args) -> Result<(), String> {
    let (plan, tick) = match &args.config {
        Some(path) => {
            let c = Config::load(path).map_err(|e| e.to_string())?;
            (Plan::from_config(PoolId::Green, &c.rollout), c.rollout.tick)
        }
        None => (default_plan(), Duration::from_secs(1)),
    };
    let latency = match args.latency.as_str() {
        "heavy-tail" => Latency::HeavyTail,
        "bimodal" => Latency::Bimodal,
        "upstream" => Latency::Recorded(record::upstream_latencies(5000)?),
        path => Latency::read(std::path::Path::new(path))?,
    };
    let mut methods = vec![("sequential", plan.clone())];
    if args.compare {
        methods.push(("window", window_method(&plan)));
    }
    println!(
        "{} rollouts per row, steps {:?} %, hold {}s, bake {}s, tick {} ms, latency {}, base error rate {}%, seed {}",
        args.rollouts,
        plan.steps_bp.iter().map(|b| b / 100).collect::<Vec<_>>(),
        plan.hold.as_secs(),
        plan.bake.as_secs(),
        tick.as_millis(),
        latency.name(),
        args.base_error * 100.0,
        args.seed
    );
    println!();
    println!("{}", Tally::header());
    println!("{}", Tally::rule());
    let mut rows = Vec::new();
    for &rate in &args.rates {
        rows.push((rate, Change::None));
    }
    for &rate in &args.regression_rates {
        for change in regressions() {
            rows.push((rate, change));
        }
    }
    for (rate, change) in rows {
        for (name, plan) in &methods {
            let setup = Setup {
                plan: plan.clone(),
                tick,
                latency: latency.clone(),
                base_error: args.base_error,
                rollouts: args.rollouts,
                seed: args.seed,
            };
            let started = Instant::now();
            let tally = simulate(&setup, rate, change);
            println!("{}", tally.row(name, rate, change, started.elapsed()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rollout draws from its own seed: the table is the same on one thread or several.
    #[test]
    fn the_table_does_not_depend_on_the_threads() {
        let setup = Setup {
            plan: default_plan(),
            tick: Duration::from_secs(1),
            latency: Latency::HeavyTail,
            base_error: 0.001,
            rollouts: 12,
            seed: 7,
        };
        let change = Change::Errors(0.05);
        let one = simulate_on(&setup, 100.0, change, 1);
        assert_eq!(one.rolled_back, 12, "{one:?}");
        assert_eq!(one, simulate_on(&setup, 100.0, change, 3));
    }
}
