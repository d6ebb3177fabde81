//! One endpoint pick with 3, 100 and 10,000 endpoints, every endpoint acceptable:
//! least-request power of two choices, smooth weighted round robin and Maglev.
//! Building a Maglev table (done once per endpoint set) is measured beside them.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use upstream::balance::{pick_p2c, Load};
use upstream::hash_ring::{self, Maglev, DEFAULT_TABLE_SIZE};
use upstream::wrr::SmoothWrr;

const SIZES: [usize; 3] = [3, 100, 10_000];

/// xorshift64*: enough randomness for p2c's samples without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255))
        .collect()
}

/// Weights 1 to 4, so WRR and Maglev do weighted work.
fn weights(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i % 4) as u32 + 1).collect()
}

fn p2c(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/p2c");
    for n in SIZES {
        let loads: Vec<Load> = (0..n).map(|_| Load::new(0)).collect();
        for (i, load) in loads.iter().enumerate() {
            load.observe(Duration::from_micros(500 + (i as u64 % 7) * 300), 0);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                pick_p2c(
                    black_box(n),
                    |_| true,
                    |i| loads[i].cost(1_000),
                    |k| rng.below(k),
                )
            })
        });
    }
    group.finish();
}

fn wrr(c: &mut Criterion) {
    let mut group = c.benchmark_group("select/wrr");
    for n in SIZES {
        let mut wrr = SmoothWrr::new(&weights(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| wrr.pick(|_| true))
        });
    }
    group.finish();
}

fn maglev(c: &mut Criterion) {
    let keys: Vec<u64> = (0..4096)
        .map(|k| hash_ring::key(format!("198.51.{}.{}", k >> 8, k & 255).as_bytes()))
        .collect();
    let mut group = c.benchmark_group("select/maglev");
    for n in SIZES {
        let ring = Maglev::new(&names(n), &weights(n), DEFAULT_TABLE_SIZE).expect("valid table");
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                ring.pick(black_box(keys[next]), |_| true)
            })
        });
    }
    group.finish();

    c.bench_function("select/maglev_key_ipv4", |b| {
        b.iter(|| hash_ring::key(black_box(b"198.51.100.7")))
    });

    let mut group = c.benchmark_group("select/maglev_build");
    group.sample_size(20);
    for n in SIZES {
        let (names, weights) = (names(n), weights(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| Maglev::new(&names, &weights, DEFAULT_TABLE_SIZE))
        });
    }
    group.finish();
}

criterion_group!(benches, p2c, wrr, maglev);
criterion_main!(benches);
