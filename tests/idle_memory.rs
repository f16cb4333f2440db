//! What an idle keep-alive connection costs in heap. A front door holds many idle client
//! connections; once parked (tests/parking.rs), each should keep only its task and the
//! socket's bookkeeping. This test counts the bytes allocated and not freed (by this
//! process's allocator, deterministic, no timing) while 500 connections, each after one
//! request, sit parked, and bounds the cost per connection.
//!
//! The bound catches the task growing back: a wrapper around the connection's future, or a
//! long-lived waiter node inside it, each doubled or grew the task once (2.9 KiB then,
//! 1.2 KiB now, in a release build; debug builds lay futures out larger).

// The counting allocator is the one piece of unsafe code here: it forwards to the system
// allocator and only adds to a counter.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;

/// Bytes allocated and not yet freed, over the whole process.
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

// SAFETY: every call forwards to `System` with the caller's own arguments; the counter is a
// side effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: usize = 500;
const PARKED: &str = "switchyard_connections_parked";

/// Heap per parked connection, debug build (the test profile). Measured 1.7 KiB; it was
/// 3.6 KiB before the connection task was flattened.
const MAX_BYTES_PER_CONNECTION: i64 = 2_600;

/// One request on a new blocking connection (no async runtime state on the client side),
/// its response read in full; the connection is returned open.
fn one_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{HASH_HEADER}: {HASH}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a Content-Length");
        if got.len() >= end + 4 + length {
            return s;
        }
    }
}

#[tokio::test]
async fn a_parked_connection_keeps_little_heap() {
    let blue = upstream("blue").await;
    let green = upstream("green").await;
    // Checks every 100 ms, so connections park soon after their response.
    let p = proxy(
        &blue,
        &green,
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[proxy.timeouts]\nheader_read = \"400ms\"\n",
    )
    .await;
    let addr = p.addr;
    // Warm up: upstream connection, metrics handles, first-use allocations.
    let warm = tokio::task::spawn_blocking(move || one_request(addr))
        .await
        .unwrap();
    wait_for(
        "the warm-up connection parked",
        Duration::from_secs(10),
        || async { p.gauge(PARKED).await >= 1.0 },
    )
    .await;

    let before = LIVE.load(Ordering::Relaxed);
    let held = tokio::task::spawn_blocking(move || {
        (0..CONNECTIONS)
            .map(|_| one_request(addr))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    wait_for(
        "every connection parked",
        Duration::from_secs(20),
        || async { p.gauge(PARKED).await >= (CONNECTIONS + 1) as f64 },
    )
    .await;
    let per_connection = (LIVE.load(Ordering::Relaxed) - before) / CONNECTIONS as i64;
    eprintln!("heap per parked connection: {per_connection} bytes");
    assert!(
        per_connection <= MAX_BYTES_PER_CONNECTION,
        "a parked connection keeps {per_connection} bytes of heap (at most {MAX_BYTES_PER_CONNECTION})"
    );
    drop(held);
    drop(warm);
}
