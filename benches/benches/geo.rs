//! Client IP → region lookups: the CIDR table with 10,000 prefixes (IPv4 and
//! IPv6), beside two other ways to hold the same prefixes, so the choice stays
//! measured: a hash map per prefix length (probed longest first) and a linear scan.
//! Then the MaxMind database lookup, when `geo/testdata/make_mmdb.py` can build a
//! test database (PyPI mmdb-writer); otherwise that case is skipped with a note.
//! Last, the per-request region decisions: nearest regions and spillover shares.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use geo::spillover::{self, Overprovisioning};
use geo::topology::{Measure, Topology};
use geo::{CidrTable, GeoDb, Locator, Region, RegionMap};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const PREFIXES: usize = 10_000;

/// xorshift64*: deterministic addresses without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn regions() -> Vec<Region> {
    (0..16)
        .map(|i| Region::from(format!("region-{i}")))
        .collect()
}

/// Prefixes of /8 to /28 under ten first octets, so they nest.
fn v4_prefixes(rng: &mut Rng) -> Vec<(IpNet, Region)> {
    let regions = regions();
    (0..PREFIXES)
        .map(|i| {
            let top = (10 + rng.below(10) as u32) << 24;
            let addr = Ipv4Addr::from(top | (rng.next() as u32 >> 8));
            let len = 8 + rng.below(21) as u8;
            let net = Ipv4Net::new(addr, len).expect("length ≤ 32").trunc();
            (IpNet::V4(net), regions[i % regions.len()].clone())
        })
        .collect()
}

fn v6_prefixes(rng: &mut Rng) -> Vec<(IpNet, Region)> {
    let regions = regions();
    (0..PREFIXES)
        .map(|i| {
            let top = u128::from(0x2001_0db8_u32 + rng.below(4) as u32) << 96;
            let addr = Ipv6Addr::from(top | (u128::from(rng.next()) << 32));
            let len = 32 + rng.below(33) as u8;
            let net = Ipv6Net::new(addr, len).expect("length ≤ 128").trunc();
            (IpNet::V6(net), regions[i % regions.len()].clone())
        })
        .collect()
}

/// Half the probes inside some prefix, half anywhere under the same first octets.
fn probes(rng: &mut Rng, prefixes: &[(IpNet, Region)]) -> Vec<IpAddr> {
    (0..4096)
        .map(|k| {
            let (net, _) = &prefixes[rng.below(prefixes.len() as u64) as usize];
            let inside = k % 2 == 0;
            match net {
                IpNet::V4(n) => {
                    let host = !u32::from(n.netmask()) & rng.next() as u32;
                    let base = u32::from(n.network());
                    let base = if inside {
                        base
                    } else {
                        base & 0xff00_0000 | (rng.next() as u32 >> 8)
                    };
                    IpAddr::V4(Ipv4Addr::from(base | host))
                }
                IpNet::V6(n) => {
                    let host = !u128::from(n.netmask()) & u128::from(rng.next());
                    IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
                }
            }
        })
        .collect()
}

/// The alternative to the range table: one hash map per IPv4 prefix length.
struct LengthMaps {
    /// Longest first.
    maps: Vec<(u8, HashMap<u32, usize>)>,
    regions: Vec<Region>,
}

impl LengthMaps {
    fn new(prefixes: &[(IpNet, Region)]) -> Self {
        let mut by_len: HashMap<u8, HashMap<u32, usize>> = HashMap::new();
        let mut regions = Vec::new();
        for (net, region) in prefixes {
            if let IpNet::V4(n) = net {
                regions.push(region.clone());
                let slot = by_len.entry(n.prefix_len()).or_default();
                slot.entry(u32::from(n.network()))
                    .or_insert(regions.len() - 1);
            }
        }
        let mut maps: Vec<_> = by_len.into_iter().collect();
        maps.sort_by_key(|&(len, _)| std::cmp::Reverse(len));
        Self { maps, regions }
    }

    fn lookup(&self, ip: Ipv4Addr) -> Option<&Region> {
        let ip = u32::from(ip);
        self.maps.iter().find_map(|(len, map)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            map.get(&(ip & mask)).map(|&i| &self.regions[i])
        })
    }
}

fn linear(prefixes: &[(IpNet, Region)], ip: IpAddr) -> Option<&Region> {
    prefixes
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, region)| region)
}

fn cidr(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let v4 = v4_prefixes(&mut rng);
    let v6 = v6_prefixes(&mut rng);
    let (v4_probes, v6_probes) = (probes(&mut rng, &v4), probes(&mut rng, &v6));
    let (t4, t6) = (CidrTable::new(v4.clone()), CidrTable::new(v6.clone()));
    let maps = LengthMaps::new(&v4);
    let mut group = c.benchmark_group("geo/cidr_10k");
    for (name, table, probes) in [("ipv4", &t4, &v4_probes), ("ipv6", &t6, &v6_probes)] {
        let mut next = 0;
        group.bench_function(format!("ranges_{name}"), |b| {
            b.iter(|| {
                next = (next + 1) % probes.len();
                table.lookup(black_box(probes[next]))
            })
        });
    }
    let v4_addrs: Vec<Ipv4Addr> = v4_probes
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut next = 0;
    group.bench_function("length_maps_ipv4", |b| {
        b.iter(|| {
            next = (next + 1) % v4_addrs.len();
            maps.lookup(black_box(v4_addrs[next]))
        })
    });
    group.sample_size(20);
    let mut next = 0;
    group.bench_function("linear_ipv4", |b| {
        b.iter(|| {
            next = (next + 1) % v4_probes.len();
            linear(&v4, black_box(v4_probes[next]))
        })
    });
    group.bench_function("build_ipv4", |b| {
        b.iter(|| CidrTable::new(v4.iter().cloned()))
    });
    group.finish();
}

/// Builds a 10,000-network test database with the geo tests' script, or says why not.
fn test_database(dir: &Path) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../geo/testdata/make_mmdb.py");
    let countries = ["DE", "FR", "US", "JP", "BR", "AU", "IN", "ZA"];
    let continents = ["EU", "EU", "NA", "AS", "SA", "OC", "AS", "AF"];
    let networks: Vec<String> = (0..PREFIXES)
        .map(|i| {
            let k = i % countries.len();
            format!(
                r#"["{}.{}.{}.0/24", {{"country": {{"iso_code": "{}"}}, "continent": {{"code": "{}"}}}}]"#,
                20 + i / 65_536,
                (i / 256) % 256,
                i % 256,
                countries[k],
                continents[k]
            )
        })
        .collect();
    let out = dir.join("bench.mmdb");
    // The test command's virtualenv when it exists (Debian's own python3 has no mmdb-writer).
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3");
    let python = std::env::var_os("EDGE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    let mut child = Command::new(python)
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(format!("[{}]", networks.join(",")).as_bytes())
            .map_err(|e| format!("writing to {}: {e}", script.display()))?;
    }
    let done = child.wait_with_output().map_err(|e| e.to_string())?;
    if !done.status.success() {
        return Err(String::from_utf8_lossy(&done.stderr).into_owned());
    }
    Ok(out)
}

fn mmdb(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("geo-bench-{}", std::process::id()));
    let built = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| test_database(&dir));
    let path = match built {
        Ok(path) => path,
        Err(why) => {
            eprintln!(
                "geo/mmdb skipped: no test database (python3 -m pip install mmdb-writer): {why}"
            );
            return;
        }
    };
    let started = Instant::now();
    let db = GeoDb::open(&path).expect("the test database opens");
    eprintln!(
        "geo/mmdb: opening and verifying 10,000 networks took {:?}",
        started.elapsed()
    );
    let probes: Vec<IpAddr> = (0..4096u32)
        .map(|k| IpAddr::V4(Ipv4Addr::new(20, (k / 256 % 40) as u8, k as u8, 7)))
        .collect();
    let mut next = 0;
    c.bench_function("geo/mmdb_lookup", |b| {
        b.iter(|| {
            next = (next + 1) % probes.len();
            db.lookup(black_box(probes[next]))
        })
    });
    let map = RegionMap::new(
        [
            ("DE", Region::from("eu-central")),
            ("US", Region::from("us-east")),
        ],
        [
            ("EU", Region::from("eu-west")),
            ("AS", Region::from("ap-northeast")),
        ],
    );
    let locator = Locator::new(Region::from("home"), CidrTable::default()).with_mmdb(db, map);
    let mut next = 0;
    c.bench_function("geo/locate_via_mmdb", |b| {
        b.iter(|| {
            next = (next + 1) % probes.len();
            locator
                .locate(black_box(probes[next]))
                .region
                .as_str()
                .len()
        })
    });
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("geo/mmdb: leaving {}: {e}", dir.display());
    }
}

fn decisions(c: &mut Criterion) {
    let regions = regions();
    let latencies = regions.iter().enumerate().flat_map(|(i, a)| {
        regions.iter().enumerate().skip(i + 1).map(move |(j, b)| {
            (
                a.clone(),
                b.clone(),
                Duration::from_millis((i * 7 + j * 13) as u64 % 150 + 1),
            )
        })
    });
    let mut topology = Topology::new(
        regions[0].clone(),
        regions.clone(),
        latencies,
        Measure::default(),
    )
    .expect("valid topology");
    let now = Instant::now();
    for region in &regions {
        for _ in 0..5 {
            topology
                .observe(region, Duration::from_millis(20), now)
                .expect("known region");
        }
    }
    c.bench_function("geo/nearest_16_regions", |b| {
        b.iter(|| topology.nearest(black_box(&regions[3]), now))
    });
    let healthy = [0.5, 0.25, 1.0, 1.0, 1.0];
    c.bench_function("geo/spillover_5_regions", |b| {
        b.iter(|| spillover::shares(black_box(&healthy), Overprovisioning::default()))
    });
}

criterion_group!(benches, cidr, mmdb, decisions);
criterion_main!(benches);
