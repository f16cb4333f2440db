//! DATA PLANE: cost of the per-request routing decisions — the pool by weight (with and
//! without an affinity key), the backend by power of two choices — and of the header
//! checks every request goes through.
//!
//! `cargo bench --bench route -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard::config::{Config, PoolId};
use switchyard::proxy::headers;
use switchyard::proxy::route::{RouteHandle, RouteTable};

fn table() -> RouteTable {
    let cfg = Config::from_toml_str(
        r#"
[proxy]
listen = ["127.0.0.1:0"]
[pools.blue]
backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "127.0.0.1:9004"]
[pools.green]
backends = ["127.0.0.1:9011", "127.0.0.1:9012"]
[split]
green_percent = 10
"#,
    )
    .expect("bench config is valid");
    switchyard::proxy::initial_table(&cfg).expect("bench pools build")
}

fn route(c: &mut Criterion) {
    let handle = RouteHandle::new(table());
    c.bench_function("route/load_snapshot", |b| {
        b.iter(|| black_box(handle.load()))
    });
    let t = handle.load();
    c.bench_function("route/pick_pool_weighted", |b| {
        b.iter(|| black_box(t.pick_pool(None)))
    });
    c.bench_function("route/pick_pool_affinity", |b| {
        b.iter(|| black_box(t.pick_pool(Some(black_box(b"user-4242")))))
    });
    let blue = t.pool(PoolId::Blue).clone();
    c.bench_function("route/pick_backend_p2c", |b| {
        b.iter(|| black_box(blue.pick_backend().is_some()))
    });
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-constitutional-hash", "cdd01ef066bc6cf2"),
        ("connection", "keep-alive"),
        ("content-length", "0"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn header_checks(c: &mut Criterion) {
    let h = request_headers();
    let name = HeaderName::from_static("x-constitutional-hash");
    let want = HeaderValue::from_static("cdd01ef066bc6cf2");
    c.bench_function("headers/check_framing", |b| {
        b.iter(|| black_box(headers::check_framing(black_box(&h))))
    });
    c.bench_function("headers/check_hash", |b| {
        b.iter(|| black_box(headers::check_hash(black_box(&h), &name, &want)))
    });
    let ip = HeaderValue::from_static("10.1.2.3");
    c.bench_function("headers/strip_and_forward", |b| {
        b.iter_batched(
            request_headers,
            |mut h| {
                headers::strip_hop_by_hop(&mut h, false);
                headers::add_forwarded(&mut h, &ip, "http");
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, route, header_checks);
criterion_main!(benches);
