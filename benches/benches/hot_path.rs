//! Micro benchmarks of per-request work on the hot path.

use criterion::{criterion_group, criterion_main, Criterion};
use edge::config::Route;
use edge::pipeline::{strip_hop_by_hop, Routes};
use http::HeaderMap;

fn header_rewrite(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive, x-private"),
        ("x-private", "1"),
        ("keep-alive", "timeout=5"),
    ] {
        base.insert(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    c.bench_function("strip_hop_by_hop", |b| {
        b.iter(|| {
            let mut h = base.clone();
            strip_hop_by_hop(&mut h);
            h
        })
    });
}

fn route_match(c: &mut Criterion) {
    let routes: Vec<Route> = (0..20)
        .map(|i| Route {
            host: Some(format!("host{i}.example")),
            path_prefix: format!("/svc{i}"),
            pool: "p".to_owned(),
        })
        .collect();
    let table = Routes::new(&routes, |_| Some(0));
    c.bench_function("route_match_20_last", |b| {
        b.iter(|| table.find("host19.example", "/svc19/items/42"))
    });
}

criterion_group!(benches, header_rewrite, route_match);
criterion_main!(benches);
