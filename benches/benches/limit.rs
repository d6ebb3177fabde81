//! One local rate limit decision (GCRA on one atomic cell): the arithmetic alone,
//! and the compare-and-swap on a shared cell, allowed and denied. The request
//! path adds one bounded-cache lookup of the key per matching rule.

use std::hint::black_box;
use std::sync::atomic::AtomicU64;

use criterion::{criterion_group, criterion_main, Criterion};
use edge::pipeline::gcra::{decide, decide_on, Params};

fn gcra(c: &mut Criterion) {
    // 100/s, burst 100.
    let p = Params::new(10_000_000, 100);
    let mut g = c.benchmark_group("gcra");
    g.bench_function("decide", |b| {
        let mut now = 0u64;
        b.iter(|| {
            now += 10_000_000;
            black_box(decide(black_box(now - 5_000_000), now, p))
        })
    });
    g.bench_function("decide_on_allowed", |b| {
        let cell = AtomicU64::new(0);
        let mut now = 0u64;
        b.iter(|| {
            // Time moves one interval per request: always allowed.
            now += 10_000_000;
            black_box(decide_on(&cell, now, p))
        })
    });
    g.bench_function("decide_on_denied", |b| {
        let cell = AtomicU64::new(0);
        for _ in 0..200 {
            decide_on(&cell, 1, p);
        }
        b.iter(|| black_box(decide_on(&cell, black_box(1), p)))
    });
    g.finish();
}

criterion_group!(benches, gcra);
criterion_main!(benches);
