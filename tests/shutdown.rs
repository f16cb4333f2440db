//! SIGTERM: stop accepting, finish what is in flight, exit 0. And the proxy's memory
//! stays flat while 100 MB bodies stream through it in both directions.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::*;

fn write_config(dir: &std::path::Path, blue: &Upstream, green: &Upstream) -> std::path::PathBuf {
    let text = config_text(dir, &[blue.addr], &[green.addr], "");
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_refuses_new_and_exits_zero() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    let mut d =
        tokio::task::block_in_place(|| daemon::start(&config, &dir.path().join("admin.sock")));
    let url = format!("http://{}/slow?sleep_ms=1500", d.addr);
    let slow = tokio::spawn(async move { send(&client(), get(&url)).await });
    wait_for(
        "the slow request to reach blue",
        Duration::from_secs(10),
        || async { blue.hits.load(SeqCst) == 1 },
    )
    .await;

    d.signal("TERM");
    let addr = d.addr;
    wait_for(
        "new connections to be refused",
        Duration::from_secs(10),
        || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request was cut");
    assert_eq!(&body[..], b"blue");
    let code = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(20)));
    assert_eq!(code, Some(0));
}

/// A body of `n` bytes produced lazily in 64 KiB chunks.
fn lazy_body(n: u64) -> Repeat {
    Repeat::new(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_stream_with_flat_memory() {
    use http_body_util::BodyExt;
    const SIZE: u64 = 100 * 1000 * 1000;
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    let d = tokio::task::block_in_place(|| daemon::start(&config, &dir.path().join("admin.sock")));
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    // Warm up, then take the baseline.
    let warm = http::Request::post(format!("http://{}/upload", d.addr))
        .header(HASH_HEADER, HASH)
        .body(lazy_body(1 << 20))
        .unwrap();
    assert_eq!(c.request(warm).await.unwrap().status(), 200);
    let baseline = d.status_kib("VmRSS");

    let up = http::Request::post(format!("http://{}/upload", d.addr))
        .header(HASH_HEADER, HASH)
        .body(lazy_body(SIZE))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), c.request(up))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, SIZE.to_string());

    let down = http::Request::get(format!("http://{}/download?bytes={SIZE}", d.addr))
        .header(HASH_HEADER, HASH)
        .body(lazy_body(0))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), c.request(down))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, SIZE);

    let peak = d.status_kib("VmHWM");
    assert!(
        peak.saturating_sub(baseline) < 32 * 1024,
        "proxy peak RSS grew by {} KiB",
        peak.saturating_sub(baseline)
    );
}

/// Transparent huge pages are off for the daemon: khugepaged would otherwise fill every
/// 2 MiB range of the allocator's arenas that has one page in use, and the memory that
/// parked idle connections gave back would come back as resident (src/main.rs
/// `tune_allocator`). `MIMALLOC_ALLOW_THP=1` keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_are_off_unless_the_environment_allows_them() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &blue, &green);
    let socket = dir.path().join("admin.sock");
    let d = tokio::task::block_in_place(|| daemon::start(&config, &socket));
    assert_eq!(d.status("THP_enabled"), "0");
    drop(d);
    let d = tokio::task::block_in_place(|| {
        daemon::start_with_env(&config, &socket, &[("MIMALLOC_ALLOW_THP", "1")])
    });
    assert_eq!(d.status("THP_enabled"), "1");
}
