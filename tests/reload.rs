//! Reload (`reload` and SIGHUP): an invalid config changes nothing and the error names the
//! key; a valid one that adds a backend sends it traffic while requests in flight finish
//! on the old pool; listener changes are refused and say so.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Rewrites the proxy's config file with `edit` applied to its text.
fn edit_config(p: &TestProxy, edit: impl FnOnce(String) -> String) {
    let path = p.dir.path().join("switchyard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

fn backends_line(addrs: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("backends = [{}]", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_names_the_key_and_the_old_one_keeps_serving() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    assert_eq!(p.admin("weight 20").await["ok"], true);
    let before = p.admin("status").await;
    let good = std::fs::read_to_string(p.dir.path().join("switchyard.toml")).unwrap();

    for (edit, key) in [
        (
            good.replace(
                &backends_line(&[green.addr]),
                "backends = [\"no port here\"]",
            ),
            "pools.green.backends[0]",
        ),
        (
            good.replace("[pools.blue]", "[pools.blue]\nweight = 3"),
            "pools.blue.weight",
        ),
        (
            good.replace(&backends_line(&[blue.addr]), "backends = []"),
            "pools.blue.backends",
        ),
    ] {
        edit_config(&p, |_| edit);
        let r = p.admin("reload").await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "reload_failed");
        assert_eq!(r["error"]["key"], key, "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(key), "{r}");
    }
    let after = p.admin("status").await;
    assert_eq!(after, before, "nothing changed");
    let c = client();
    let (status, _, _) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 200, "the old config keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_gets_traffic_and_requests_in_flight_finish() {
    let (blue, blue2, green) = (
        upstream("blue").await,
        upstream("blue2").await,
        upstream("green").await,
    );
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    let g0 = p.admin("status").await["generation"].as_u64().unwrap();
    let c = client();
    // A request that is still waiting for its answer while the reload happens.
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), p.url("/?sleep_ms=700"));
        async move { send(&c, get(&url)).await }
    });
    wait_for(
        "the slow request to reach blue",
        Duration::from_secs(3),
        || async { blue.hits.load(SeqCst) >= 1 },
    )
    .await;

    edit_config(&p, |t| {
        t.replace(
            &backends_line(&[blue.addr]),
            &backends_line(&[blue.addr, blue2.addr]),
        )
    });
    let r = p.admin("reload").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["generation"], g0 + 1);
    assert_eq!(r["restart_required"], serde_json::json!([]));
    let s = p.admin("status").await;
    assert_eq!(s["pools"]["blue"]["backends"].as_array().unwrap().len(), 2);

    let new_hits = blue2.hits.clone();
    wait_for(
        "the new backend to get requests",
        Duration::from_secs(4),
        || {
            let (c, url, new_hits) = (c.clone(), p.url("/"), new_hits.clone());
            async move {
                let (status, _, _) = send(&c, get(&url)).await;
                assert_eq!(status, 200);
                new_hits.load(SeqCst) > 0
            }
        },
    )
    .await;
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(
        (status.as_u16(), &body[..]),
        (200, &b"blue"[..]),
        "the in-flight request finished normally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_change_is_refused_and_says_it_needs_a_restart() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let (p, _control) = proxy_with(&[blue.addr], &[green.addr], "", "", false).await;
    edit_config(&p, |t| {
        t.replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
        )
    });
    let r = p.admin("reload").await;
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["key"].as_str()),
        (Some("reload_failed"), Some("proxy.listen"))
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("restart"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_without_a_config_file_is_refused() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let r = p.admin("reload").await;
    assert_eq!(r["error"]["code"], "reload_failed", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_daemon() {
    let (blue, green, green2) = (
        upstream("blue").await,
        upstream("green").await,
        upstream("green2").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &[blue.addr], &[green.addr], ""),
    )
    .unwrap();
    let socket = dir.path().join("admin.sock");
    let daemon = Daemon::start(BIN, &config).await;
    let g0 = admin_at(&socket, "status").await["generation"]
        .as_u64()
        .unwrap();

    std::fs::write(&config, "this is not toml").unwrap();
    daemon.signal("HUP");
    wait_for(
        "the failed reload in the log",
        Duration::from_secs(4),
        || async { daemon.log().contains("reload failed") },
    )
    .await;
    assert_eq!(admin_at(&socket, "status").await["generation"], g0);

    std::fs::write(
        &config,
        config_text(dir.path(), &[blue.addr], &[green.addr, green2.addr], ""),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_for("the SIGHUP reload", Duration::from_secs(4), || async {
        admin_at(&socket, "status").await["pools"]["green"]["backends"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;
    assert_eq!(admin_at(&socket, "status").await["generation"], g0 + 1);
}
