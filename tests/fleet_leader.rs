//! The fleet's leader: a killed leader (SIGKILL, separate processes) is replaced within
//! `lease_ttl` + 1 s and the rollout goes on to its end; a writer that no longer holds the
//! leader key cannot overwrite the table (fencing).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use common::etcd::Etcd;
use common::load::{load, Counts};
use common::rollout::rollout_toml;
use common::{admin_at, config_text, upstream, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);
/// The longest a client loop runs.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
const LEASE_TTL: Duration = Duration::from_secs(2);

async fn leader_of(socket: &std::path::Path) -> Option<String> {
    let v = admin_at(socket, "fleet").await;
    v["leader"].as_str().map(str::to_string)
}

/// Acceptance 4: SIGKILL the leader mid-rollout; a survivor leads within lease_ttl + 1 s,
/// the rollout is promoted, and no client request through a survivor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_the_rollout_completes() {
    let etcd = Etcd::single();
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let names = ["edge-1", "edge-2", "edge-3"];
    let mut dirs = Vec::new();
    let mut daemons = Vec::new();
    let rollout = rollout_toml(&[
        ("steps", "[20, 50, 100]"),
        ("hold", "\"1s\""),
        ("max_hold", "\"20s\""),
        ("gates.min_requests", "10"),
        ("gates.min_latency_samples", "10"),
        ("gates.tripwire_min_requests", "10"),
    ]);
    for name in names {
        let dir = tempfile::tempdir().unwrap();
        let sections = format!("{}{}", etcd.fleet_toml("/lead/", name), rollout);
        let text = config_text(dir.path(), &[blue.addr], &[green.addr], &sections);
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        daemons.push(common::daemon::start(&path, &dir.path().join("admin.sock")));
        dirs.push(dir);
    }
    let sockets: Vec<PathBuf> = daemons.iter().map(|d| d.socket.clone()).collect();
    let started = Instant::now();
    let leader = loop {
        if let Some(l) = leader_of(&sockets[0]).await {
            break l;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no leader within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let li = names.iter().position(|n| *n == leader).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != li).collect();

    let stop = CancellationToken::new();
    let counts: Vec<Arc<Counts>> = (0..3).map(|_| Arc::new(Counts::default())).collect();
    let loads: Vec<_> = (0..3)
        .map(|i| load(daemons[i].addr, stop.clone(), counts[i].clone(), LOAD_LIMIT))
        .collect();

    // Started on a follower: the leader steps it.
    let r = admin_at(&sockets[survivors[0]], "rollout start to green").await;
    assert_eq!(r["ok"], true, "{r}");
    wait_for("the rollout at its second step", DEADLINE, || async {
        admin_at(&sockets[survivors[1]], "status").await["green_percent"].as_f64() >= Some(50.0)
    })
    .await;

    let before: Vec<usize> = counts
        .iter()
        .map(|c| c.failed.load(Ordering::Relaxed))
        .collect();
    let killed = Instant::now();
    daemons[li].child.kill().unwrap();
    let _ = daemons[li].child.wait();
    let new_leader = loop {
        if let Some(l) = leader_of(&sockets[survivors[0]])
            .await
            .filter(|l| *l != leader)
        {
            break l;
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "no new leader within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    println!("new leader {new_leader:?} after {took:?}");
    assert!(
        took <= LEASE_TTL + Duration::from_secs(1),
        "new leader after {took:?}"
    );

    wait_for("the rollout promoted", Duration::from_secs(60), || async {
        let s = admin_at(&sockets[survivors[0]], "rollout status").await;
        s["rollout"]["phase"] == "promoted"
    })
    .await;
    // The other survivor applies the promotion from its watch, a moment later.
    for &i in &survivors {
        wait_for("every survivor on green as stable", DEADLINE, || async {
            let s = admin_at(&sockets[i], "status").await;
            s["green_percent"] == 100.0 && s["stable"] == "green"
        })
        .await;
    }
    stop.cancel();
    for l in loads {
        l.await.unwrap();
    }
    for &i in &survivors {
        assert_eq!(
            counts[i].failed.load(Ordering::Relaxed),
            before[i],
            "failed requests through survivor {}",
            names[i]
        );
        assert_eq!(
            before[i], 0,
            "failed requests through survivor {} before the kill",
            names[i]
        );
        assert!(counts[i].ok.load(Ordering::Relaxed) > 0);
    }
    // The killed instance left the fleet with its lease; the two survivors stay.
    wait_for("two live instances", DEADLINE, || async {
        let fleet: Value = admin_at(&sockets[survivors[0]], "fleet").await;
        fleet["instances"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
}

fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
    let out = std::process::Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoints()[0],
            "--command-timeout",
            "2s",
        ])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Acceptance 6: the leader loses its lease (what etcd does when a partition outlasts
/// `lease_ttl`; here the test revokes it) and at once tries a leader's write: refused with
/// `conflict`, nothing changes in etcd or on any instance; the new leader's write applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_cannot_overwrite_the_table() {
    use switchyard::control::{Actor, Control};
    let etcd = Etcd::single();
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let mut fleet = Vec::new();
    for name in ["a", "b"] {
        fleet.push(
            common::proxy_with(
                &[blue.addr],
                &[green.addr],
                &etcd.fleet_toml("/fence/", name),
                "",
                false,
            )
            .await,
        );
    }
    wait_for("one leader, the one etcd names", DEADLINE, || async {
        let leaders: Vec<&str> = ["a", "b"]
            .into_iter()
            .zip(&fleet)
            .filter(|(_, (_, c))| c.leads())
            .map(|(n, _)| n)
            .collect();
        leaders.len() == 1
            && fleet
                .iter()
                .all(|(_, c)| c.fleet_view().is_some_and(|v| v["leader"] == leaders[0]))
    })
    .await;
    let li = fleet.iter().position(|(_, c)| c.leads()).unwrap();
    let (old, new) = (fleet[li].1.clone(), fleet[1 - li].1.clone());
    let before = etcdctl(&etcd, &["get", "/fence/table", "--print-value-only"]);

    // The leader key's lease, in the hex etcdctl takes.
    let key: Value =
        serde_json::from_str(&etcdctl(&etcd, &["get", "/fence/leader", "-w", "json"])).unwrap();
    let lease = key["kvs"][0]["lease"].as_i64().unwrap();
    etcdctl(&etcd, &["lease", "revoke", &format!("{lease:x}")]);
    let refused = tokio::task::spawn_blocking(move || {
        Control::as_leader(|| {
            old.update(
                &Actor::internal("controller"),
                "a stale leader's step",
                None,
                |d| {
                    d.green_bp = 4200;
                    Ok(())
                },
            )
        })
    })
    .await
    .unwrap();
    let e = refused.expect_err("the old leader's write must be refused");
    assert_eq!(e.code, "conflict", "{e:?}");
    println!("refused: {}", e.message);
    assert_eq!(
        etcdctl(&etcd, &["get", "/fence/table", "--print-value-only"]),
        before
    );
    for (p, _) in &fleet {
        assert_ne!(p.routes.load().green_bp, 4200);
    }

    wait_for("the other instance leads", DEADLINE, || async {
        new.leads()
    })
    .await;
    let applied = tokio::task::spawn_blocking(move || {
        Control::as_leader(|| {
            new.update(
                &Actor::internal("controller"),
                "the new leader's step",
                None,
                |d| {
                    d.green_bp = 3000;
                    Ok(())
                },
            )
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!(
            "the new leader writes: {e:?}; etcd: {}",
            etcdctl(&etcd, &["get", "--prefix", "/fence/", "-w", "json"])
        )
    });
    wait_for(
        "both instances apply the new leader's table",
        DEADLINE,
        || async {
            fleet.iter().all(|(p, _)| {
                p.routes.load().generation == applied.generation && p.routes.load().green_bp == 3000
            })
        },
    )
    .await;
}
