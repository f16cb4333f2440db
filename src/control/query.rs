//! CONTROL PLANE: query gates' I/O — each `[[rollout.gates.query]]` of a live rollout asked
//! of its Prometheus server every `interval` by a task of its own (`GET /api/v1/query`), the
//! latest answer kept as a [`QueryReading`] that the controller hands to the pure machine
//! (`rollout::query` judges it). The tick never waits on Prometheus.
//!
//! An answer is a number when the server says `"status": "success"` with one sample: a
//! scalar, or an instant vector of exactly one series. An error, an empty vector, several
//! series, a non-number or no answer within `timeout` is a reading without a value
//! (inconclusive). Reference: the Prometheus HTTP API, "Expression queries" and "Expression
//! query result formats".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::rollout::{QueryBound, QueryReading};
use crate::config::{PoolId, QueryGateConfig};
use crate::metrics::window::LiveStats;

/// The bounds the machine judges, from the config.
pub fn bounds(gates: &[Arc<QueryGateConfig>]) -> Vec<QueryBound> {
    gates
        .iter()
        .map(|g| QueryBound {
            name: g.name.clone(),
            max: g.max,
            min: g.min,
            fail_windows: g.fail_windows,
        })
        .collect()
}

/// The running evaluations of one rollout's query gates; stopped when dropped.
pub struct QueryRunner {
    readings: Arc<Mutex<Vec<Option<QueryReading>>>>,
    stop: CancellationToken,
}

impl Drop for QueryRunner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl QueryRunner {
    /// One task per gate of `bounds` (found by name in `gates`; one that is not stays
    /// without readings, so inconclusive), asking about `candidate`.
    pub fn start(
        bounds: &[QueryBound],
        gates: &[Arc<QueryGateConfig>],
        candidate: PoolId,
        clock: Arc<LiveStats>,
    ) -> QueryRunner {
        let readings = Arc::new(Mutex::new(vec![None; bounds.len()]));
        let stop = CancellationToken::new();
        let rt = tokio::runtime::Handle::try_current();
        for (i, b) in bounds.iter().enumerate() {
            let (Some(gate), Ok(rt)) = (gates.iter().find(|g| g.name == b.name), rt.as_ref())
            else {
                continue;
            };
            let (gate, readings, stop, clock) =
                (gate.clone(), readings.clone(), stop.clone(), clock.clone());
            rt.spawn(async move {
                let promql = substitute(&gate.query, candidate);
                let mut every = tokio::time::interval(gate.interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for n in 1u64.. {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let value = tokio::select! {
                        v = ask(&gate, &promql) => v,
                        _ = stop.cancelled() => return,
                    };
                    debug!(gate = %gate.name, ?value, "query gate evaluated");
                    let at = Duration::from_millis(clock.now_ms());
                    let mut r = readings.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(slot) = r.get_mut(i) {
                        *slot = Some(QueryReading { n, at, value });
                    }
                }
            });
        }
        QueryRunner { readings, stop }
    }

    /// Each gate's latest reading, in the order of the bounds.
    pub fn readings(&self) -> Vec<Option<QueryReading>> {
        self.readings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `$candidate` and `$pool` become the candidate's name, `$stable` the stable pool's.
pub fn substitute(query: &str, candidate: PoolId) -> String {
    query
        .replace("$candidate", candidate.as_str())
        .replace("$stable", candidate.other().as_str())
        .replace("$pool", candidate.as_str())
}

/// One evaluation: the value, or why there is none.
async fn ask(gate: &QueryGateConfig, promql: &str) -> Result<f64, String> {
    let url = &gate.prometheus;
    let path = format!(
        "{}/api/v1/query?query={}",
        url.path_and_query.trim_end_matches('/'),
        encode(promql)
    );
    let req = Request::get(path)
        .header(http::header::HOST, url.authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "switchyard")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let answer = tokio::time::timeout(
        gate.timeout,
        super::hooks::fetch(url, gate.tls_ca.as_deref(), req),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", gate.timeout))??;
    let (status, body) = answer;
    parse(&body).map_err(|why| format!("{why} (HTTP {})", status.as_u16()))
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Scalar(Sample),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Series {
    value: Sample,
}

/// `[<unix time>, "<value>"]`.
#[derive(Deserialize)]
struct Sample(serde::de::IgnoredAny, String);

/// The number in a `/api/v1/query` answer.
pub fn parse(body: &[u8]) -> Result<f64, String> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus query answer: {e}"))?;
    if a.status != "success" {
        return Err(format!(
            "Prometheus answered {}: {} {}",
            a.status,
            a.error_type.unwrap_or_default(),
            a.error.unwrap_or_default()
        ));
    }
    let sample = match a.data {
        Some(Data::Scalar(s)) => s,
        Some(Data::Vector(mut v)) if v.len() == 1 => v.remove(0).value,
        Some(Data::Vector(v)) if v.is_empty() => return Err("empty result".into()),
        Some(Data::Vector(v)) => {
            return Err(format!(
                "{} series; aggregate the query to one, e.g. with sum() or max()",
                v.len()
            ))
        }
        Some(Data::Matrix(_) | Data::String(_)) | None => {
            return Err("not a number; the query must return a scalar or one series".into())
        }
    };
    let Sample(_, text) = sample;
    text.parse::<f64>()
        .map_err(|_| format!("the value {text:?} is not a number"))
}

/// Percent-encodes a query parameter's value (RFC 3986 §2.3: unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_to_one_number_or_say_why_not() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pool":"green"},"value":[1700000000.5,"0.25"]}]}}"#;
        assert_eq!(parse(vector), Ok(0.25));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"3"]}}"#;
        assert_eq!(parse(scalar), Ok(3.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(empty), Err("empty result".into()));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},{"metric":{},"value":[1,"2"]}]}}"#;
        assert!(parse(two).unwrap_err().contains("2 series"));
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(parse(error).unwrap_err().contains("bad_data parse error"));
        assert!(parse(b"<html>").is_err());
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(parse(nan).is_ok_and(f64::is_nan));
    }

    #[test]
    fn placeholders_and_encoding() {
        let q = substitute("x{pool=\"$pool\"} / y{pool=\"$stable\"}", PoolId::Green);
        assert_eq!(q, "x{pool=\"green\"} / y{pool=\"blue\"}");
        assert_eq!(
            encode("sum(x{a=\"b c\"})"),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }
}
