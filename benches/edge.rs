//! DATA PLANE: cost of the edge stages a request meets — the rate-limit check (a known
//! client, a new client in a full table, and two threads on one table), the key hash, a
//! request id, the security headers and the client address.
//!
//! `cargo bench --bench edge -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard::config::Config;
use switchyard::proxy::edge::client::client_addr;
use switchyard::proxy::edge::ratelimit::{Limit, RateTable};
use switchyard::proxy::edge::request_id;
use switchyard::proxy::edge::secheaders::SecurityHeaders;

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn ratelimit(c: &mut Criterion) {
    let limit = Limit::new(1_000_000, Duration::from_secs(1), 1_000_000);
    // 10,000 known clients in a 100,000-key table: the steady state of a busy proxy.
    let table = RateTable::new(100_000);
    let keys: Vec<u64> = (0..10_000).map(|i| table.client_key(0, ip(i))).collect();
    for &k in &keys {
        table.check(k, limit, 0);
    }
    let mut i = 0usize;
    c.bench_function("ratelimit/check_known_client", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(table.check(black_box(keys[i]), limit, 1))
        })
    });
    c.bench_function("ratelimit/key_and_check", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let k = table.client_key(0, black_box(ip(i as u32)));
            black_box(table.check(k, limit, 1))
        })
    });
    c.bench_function("ratelimit/client_key", |b| {
        b.iter(|| black_box(table.client_key(0, black_box(ip(7)))))
    });
    // A flood of new clients: every check inserts and evicts.
    let full = RateTable::new(10_000);
    let mut n = 0u32;
    c.bench_function("ratelimit/check_new_client_full_table", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(full.check(full.client_key(0, ip(n)), limit, 1))
        })
    });
    // Another thread checks other clients of the same table meanwhile.
    let shared = Arc::new(RateTable::new(100_000));
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (t, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut j = 0u32;
            while !stop.load(Ordering::Relaxed) {
                j = (j + 1) % 10_000;
                black_box(t.check(t.client_key(0, ip(20_000 + j)), limit, 1));
            }
        })
    };
    c.bench_function("ratelimit/key_and_check_contended", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(shared.check(shared.client_key(0, ip(i as u32)), limit, 1))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
}

fn stages(c: &mut Criterion) {
    c.bench_function("request_id/generate", |b| {
        b.iter(|| black_box(request_id::generate()))
    });
    let name = http::HeaderName::from_static("x-request-id");
    let mut kept = HeaderMap::new();
    kept.insert(
        &name,
        HeaderValue::from_static("0123456789abcdef-client-id"),
    );
    c.bench_function("request_id/keep_valid", |b| {
        b.iter(|| black_box(request_id::ensure(black_box(&mut kept), &name)))
    });

    let text =
        "[pools.blue]\nbackends = [\"127.0.0.1:1\"]\n[pools.green]\nbackends = [\"127.0.0.1:2\"]\n\
                [proxy]\nlisten = [\"127.0.0.1:0\"]\n";
    let cfg = Config::from_toml_str(text).expect("bench config");
    let set = SecurityHeaders::from_config(&cfg.security_headers);
    let mut base = HeaderMap::new();
    base.insert("content-type", HeaderValue::from_static("text/plain"));
    base.insert(
        "x-constitutional-hash",
        HeaderValue::from_static("cdd01ef066bc6cf2"),
    );
    c.bench_function("secheaders/apply_defaults_tls", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| set.apply(h, true),
            criterion::BatchSize::SmallInput,
        )
    });

    let peer = ip(1);
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.9, 10.0.0.2"),
    );
    c.bench_function("client/trusted_hops_2", |b| {
        b.iter(|| black_box(client_addr(black_box(&xff), peer, 2)))
    });
    c.bench_function("client/trusted_hops_0", |b| {
        b.iter(|| black_box(client_addr(black_box(&xff), peer, 0)))
    });

    // The clock read the limiter shares with the request (for scale).
    c.bench_function("clock/instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
}

criterion_group!(benches, ratelimit, stages);
criterion_main!(benches);
