//! CONTROL PLANE: how fast a change reaches the whole fleet. Three instances in this
//! process on one etcd (one member, then three members) started on loopback ports; 200
//! `weight` changes on instance 1, one after the other; for each, the time from the admin
//! reply to the last of the other two instances publishing that generation (their route
//! event). Prints P50, P99 and max per etcd setup. Goal: P99 under 100 ms.
//!
//! `cargo bench --bench fleet_propagation` (needs `etcd`: `bash scripts/install-test-deps.sh`)

#[path = "../tests/common/etcd.rs"]
#[allow(dead_code)]
mod etcd;

use std::time::{Duration, Instant};

use switchyard::config::Config;
use switchyard::Switchyard;
use tokio_util::sync::CancellationToken;

const CHANGES: usize = 200;

async fn instance(
    etcd: &etcd::Etcd,
    prefix: &str,
    name: &str,
    dir: &std::path::Path,
) -> (Switchyard, std::path::PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[pools.blue]\nbackends = [\"127.0.0.1:9\"]\n[pools.green]\nbackends = [\"127.0.0.1:10\"]\n[admin]\nsocket = \"{}\"\n[metrics]\nlisten = \"\"\n{}",
        socket.display(),
        etcd.fleet_toml(prefix, name)
    );
    let cfg = Config::from_toml_str(&text).expect("bench config is valid");
    let s = Switchyard::bind(cfg).await.expect("instance binds");
    (s, socket)
}

async fn run(etcd: etcd::Etcd, label: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let mut sockets = Vec::new();
    let mut followers = Vec::new();
    for (i, name) in ["edge-1", "edge-2", "edge-3"].into_iter().enumerate() {
        let (s, socket) = instance(&etcd, "/bench/", name, dir.path()).await;
        if i > 0 {
            followers.push(s.control().subscribe());
        }
        sockets.push(socket);
        tokio::spawn(s.run(shutdown.clone()));
    }
    let mut samples = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        let line = format!("weight {}", (k % 99) + 1);
        let reply = switchyard::control::admin::request(&sockets[0], &line)
            .await
            .expect("admin reply");
        let replied = Instant::now();
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
        let g = v["generation"].as_u64().expect("a generation in the reply");
        for rx in &mut followers {
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("the follower applies within 10 s")
                    .expect("event stream open");
                if event["generation"].as_u64() >= Some(g) {
                    break;
                }
            }
        }
        samples.push(replied.elapsed());
    }
    shutdown.cancel();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "fleet propagation ({label}, {CHANGES} changes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run(etcd::Etcd::single(), "1 etcd member").await;
        run(etcd::Etcd::cluster(3), "3 etcd members").await;
    });
}
