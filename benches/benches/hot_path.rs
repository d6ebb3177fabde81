//! Micro benchmarks of per-request work on the hot path.

use criterion::{criterion_group, criterion_main, Criterion};
use edge::config::Route;
use edge::pipeline::{request_id, strip_hop_by_hop, to_upstream, Peer, Routes, Trace};
use http::{HeaderMap, HeaderValue, Request};

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
            name: format!("r{i}"),
            split: None,
            host: Some(format!("host{i}.example")),
            path_prefix: format!("/svc{i}"),
            pool: "p".to_owned(),
            cache: true,
            cache_set_cookie: false,
            max_body_bytes: None,
            cache_statuses: edge::config::CacheStatuses::default(),
            require_client_cert: false,
            compress: None,
            early_hints: edge::config::EarlyHints::All,
        })
        .collect();
    let table = Routes::new(&routes, |_| Some(0), &Default::default());
    c.bench_function("route_match_20_last", |b| {
        b.iter(|| table.find("host19.example", "/svc19/items/42"))
    });
}

/// The whole upstream header rewrite of a typical browser GET.
fn upstream_rewrite(c: &mut Criterion) {
    let mut base = Request::builder().uri("https://example.com/app/page?x=1");
    for (k, v) in [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-forwarded-for", "198.51.100.7"),
    ] {
        base = base.header(k, v);
    }
    let base = base.body(()).expect("valid request");
    let peer = Peer {
        ip: "192.0.2.10".parse().expect("ip"),
        tls: true,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    let trusted = ["10.0.0.0/8".parse().expect("net")];
    let id = HeaderValue::from_static("0b9e6c1e-4a8f-4a51-9b5e-2f1f8f0d2c11");
    let host = HeaderValue::from_static("example.com");
    let trace = Trace::of(base.headers());
    c.bench_function("to_upstream_browser_get", |b| {
        b.iter(|| {
            let mut req = base.clone();
            to_upstream(&mut req, &peer, &trusted, &id, &trace, host.clone());
            req
        })
    });
}

fn request_ids(c: &mut Criterion) {
    let mut given = HeaderMap::new();
    given.insert(
        "x-request-id",
        HeaderValue::from_static("client-chosen-id-42"),
    );
    let none = HeaderMap::new();
    c.bench_function("request_id_new_uuid", |b| b.iter(|| request_id(&none)));
    c.bench_function("request_id_keep_client", |b| b.iter(|| request_id(&given)));
}

criterion_group!(
    benches,
    header_rewrite,
    route_match,
    upstream_rewrite,
    request_ids
);
criterion_main!(benches);
