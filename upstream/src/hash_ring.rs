//! Consistent hashing with a Maglev lookup table (Eisenbud et al., "Maglev: A
//! Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4), weighted
//! the way Envoy's `maglev_lb` weights it.
//!
//! Every endpoint derives from its name a preference list: a permutation of the
//! table's slots (`offset`, `offset + skip`, `offset + 2·skip`, … mod a prime
//! size). Endpoints take turns claiming their next still-free preferred slot,
//! an endpoint of weight `w` taking `w / max weight` turns per round, until the
//! table is full. A key's endpoint is then one lookup: `table[mix(key) % size]`.
//! Each endpoint ends up with a share of the table close to its share of the
//! weight, and removing one endpoint mostly hands out only its own slots.
//!
//! When the caller refuses the endpoint a key maps to (breaker open, unhealthy),
//! the pick walks on to further table entries along the key's own probe
//! sequence — owned by other endpoints in proportion to their weight — so the
//! refused endpoint's keys spread over the others while every other key keeps
//! its endpoint. The table is built once per endpoint set and swapped in whole;
//! picking is pure and takes `&self`.
//!
//! Keys are hashed with FNV-1a/64 ([`key`]), written out here rather than taken
//! from `std::hash`: its `DefaultHasher` (SipHash) is documented as unstable
//! across Rust releases, and a key must map to the same endpoint in every edge
//! instance and after every upgrade, or affinity breaks whenever one restarts.
//! FNV-1a is fixed by its specification (draft-eastlake-fnv), has published test
//! vectors (pinned in the tests), needs no dependency, and is fast on the short
//! keys affinity uses (client addresses, session ids, header values).

/// The default table size: a prime, and at least 100 slots per endpoint up to 655
/// endpoints, the Maglev paper's rule of thumb for shares within 1% of weights.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// The largest table size accepted (the largest prime below 2^24): 64 MiB of
/// table, and endpoint indices comfortably within `u32`.
pub const MAX_TABLE_SIZE: usize = 16_777_213;

/// How many more table entries a pick tries after a refused one before it scans
/// the endpoints in order. Each is an endpoint drawn by weight, so with half of
/// the weight refused the walk runs out for one key in 4 billion.
const WALK: usize = 32;

/// A free slot while the table is built. Never a real index: there are at most
/// `MAX_TABLE_SIZE` endpoints with a weight.
const EMPTY: u32 = u32::MAX;

/// Why a Maglev table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime, so a preference list would not visit every slot.
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(usize),
    /// The table size is above [`MAX_TABLE_SIZE`].
    #[error("Maglev table size {0} is above the maximum of {MAX_TABLE_SIZE}")]
    TooLarge(usize),
    /// Fewer slots than endpoints with a weight: some would never be chosen.
    #[error("Maglev table size {size} is smaller than the {endpoints} endpoints with a weight")]
    TooSmall { size: usize, endpoints: usize },
    /// One weight per endpoint name is needed.
    #[error("{names} endpoint names but {weights} weights")]
    LengthMismatch { names: usize, weights: usize },
}

/// The hash of a key: FNV-1a/64 over `bytes` (offset basis 0xcbf29ce484222325,
/// prime 0x100000001b3). Stable across platforms, Rust releases and edge versions.
pub fn key(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// MurmurHash3's 64-bit finalizer: derives an endpoint's `skip` from the same
/// FNV hash as its `offset` while looking independent of it, and spreads keys
/// that are not hashes (addresses, counters) over the table.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A Maglev lookup table over a fixed set of endpoints.
#[derive(Clone, Debug)]
pub struct Maglev {
    /// Slot → endpoint index; empty when no endpoint has a weight.
    table: Box<[u32]>,
    /// The endpoints with a weight, in index order: the fallback scan's list.
    members: Box<[u32]>,
}

/// One endpoint's progress through its preference list while the table is built.
struct Claimant {
    index: u32,
    weight: u64,
    next: u64,
    skip: u64,
    /// The turn count (× max weight) that its next claim waits for.
    target: u64,
}

impl Maglev {
    /// Builds the table for endpoints named `names[i]` with weight `weights[i]`
    /// (weight 0: never picked). `table_size` must be a prime no smaller than
    /// the number of weighted endpoints; [`DEFAULT_TABLE_SIZE`] suits up to a
    /// few hundred. The table depends on the names and weights, not their order:
    /// every instance given the same set builds the same table.
    ///
    /// Building costs O(size · max weight / mean weight) and `4 · size` bytes.
    pub fn new(names: &[String], weights: &[u32], table_size: usize) -> Result<Self, MaglevError> {
        if names.len() != weights.len() {
            return Err(MaglevError::LengthMismatch {
                names: names.len(),
                weights: weights.len(),
            });
        }
        if table_size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge(table_size));
        }
        if !is_prime(table_size) {
            return Err(MaglevError::NotPrime(table_size));
        }
        let mut weighted: Vec<(&String, u32, u32)> = Vec::new();
        for (index, (name, &weight)) in (0u32..).zip(names.iter().zip(weights)) {
            if weight > 0 {
                weighted.push((name, weight, index));
            }
        }
        if weighted.len() > table_size {
            return Err(MaglevError::TooSmall {
                size: table_size,
                endpoints: weighted.len(),
            });
        }
        let members = weighted.iter().map(|&(_, _, index)| index).collect();
        // Claiming in name order makes the table independent of the order the
        // endpoints were listed (or resolved) in.
        weighted.sort_unstable_by(|a, b| a.0.cmp(b.0).then(a.2.cmp(&b.2)));
        let size = table_size as u64;
        let mut claimants: Vec<Claimant> = weighted
            .iter()
            .map(|&(name, weight, index)| {
                let h = key(name.as_bytes());
                Claimant {
                    index,
                    weight: u64::from(weight),
                    next: h % size,
                    skip: fmix64(h) % (size - 1).max(1) + 1,
                    target: 0,
                }
            })
            .collect();
        let table = populate(&mut claimants, table_size);
        Ok(Self { table, members })
    }

    /// The number of slots in the table (0 when no endpoint has a weight).
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The endpoint for `key` among those `ok` accepts. The key is mixed
    /// (MurmurHash3's fmix64, so a raw IPv4 address or a counter spreads as well
    /// as a hash) and its slot's endpoint taken; when `ok` refuses it, up to
    /// `WALK` further entries along the key's own probe sequence are tried, then
    /// the weighted endpoints in index order. `None` when no weighted endpoint
    /// is acceptable.
    ///
    /// The probe sequence strides by a per-key step rather than to the adjacent
    /// entry: Maglev's adjacent entries are correlated (they come from a few
    /// arithmetic progressions mod the table size), and walking to them sent a
    /// refused endpoint's keys to some endpoints at 0.6× and others at 1.2× their
    /// share. Per-key strides land on entries drawn by weight.
    pub fn pick(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let size = self.table.len() as u64;
        if size == 0 {
            return None;
        }
        let h = fmix64(key);
        // Every slot below is reduced mod `size`, the table's length.
        let mut slot = h % size;
        let first = self.table[slot as usize] as usize;
        if ok(first) {
            return Some(first);
        }
        // size is a prime ≥ 2, so the step is in 1..size and the probes visit
        // distinct slots.
        let step = (h / size) % (size - 1).max(1) + 1;
        for _ in 0..WALK {
            slot = (slot + step) % size;
            let i = self.table[slot as usize] as usize;
            if ok(i) {
                return Some(i);
            }
        }
        let from = (h % self.members.len() as u64) as usize;
        let (before, after) = self.members.split_at(from);
        after
            .iter()
            .chain(before)
            .map(|&i| i as usize)
            .find(|&i| ok(i))
    }
}

/// Envoy's weighted Maglev population: in round `r` a claimant whose weight
/// has earned a turn (`r · weight ≥ target`) claims its next free preferred
/// slot, so the heaviest claims every round and one of a third of its weight
/// every third round.
fn populate(claimants: &mut [Claimant], table_size: usize) -> Box<[u32]> {
    let Some(max_weight) = claimants.iter().map(|c| c.weight).max() else {
        return Box::default();
    };
    let size = table_size as u64;
    let mut table = vec![EMPTY; table_size];
    let mut filled = 0;
    let mut round: u64 = 0;
    while filled < table_size {
        for c in claimants.iter_mut() {
            if round * c.weight < c.target {
                continue;
            }
            c.target += max_weight;
            // A free slot exists (filled < size) and the preference list
            // visits every slot (size is prime, 0 < skip < size), so this ends.
            loop {
                let slot = c.next as usize;
                c.next = (c.next + c.skip) % size;
                if table[slot] == EMPTY {
                    table[slot] = c.index;
                    break;
                }
            }
            filled += 1;
            if filled == table_size {
                break;
            }
        }
        round += 1;
    }
    table.into_boxed_slice()
}

fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    (3..)
        .step_by(2)
        .take_while(|d| d * d <= n)
        .all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("http://10.0.0.{i}:80")).collect()
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|k| key(format!("client-{k}").as_bytes()))
            .collect()
    }

    fn shares(m: &Maglev, n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &i in m.table.iter() {
            counts[i as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / m.table.len() as f64)
            .collect()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(key(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_endpoint_gets_its_weight_share_of_the_table() {
        for weights in [vec![1; 10], vec![1, 2, 3, 4], vec![10, 1, 1, 5, 100, 7]] {
            let names = names(weights.len());
            let m = Maglev::new(&names, &weights, DEFAULT_TABLE_SIZE).expect("valid");
            let total: u32 = weights.iter().sum();
            for (i, share) in shares(&m, weights.len()).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                assert!(
                    (share / want - 1.0).abs() < 0.01,
                    "endpoint {i} of {weights:?}: share {share:.4}, weight share {want:.4}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_ten_endpoints_moves_about_a_tenth_of_the_keys() {
        let all = names(10);
        let full = Maglev::new(&all, &[1; 10], DEFAULT_TABLE_SIZE).expect("valid");
        let mut rest = all.clone();
        let gone = rest.remove(3);
        let less = Maglev::new(&rest, &[1; 9], DEFAULT_TABLE_SIZE).expect("valid");

        let keys = keys(100_000);
        let (mut moved, mut others, mut others_moved) = (0, 0, 0);
        for &k in &keys {
            let before = &all[full.pick(k, |_| true).expect("a pick")];
            let after = &rest[less.pick(k, |_| true).expect("a pick")];
            assert_ne!(after, &gone);
            if before != after {
                moved += 1;
            }
            if before != &gone {
                others += 1;
                others_moved += usize::from(before != after);
            }
        }
        let moved = moved as f64 / keys.len() as f64;
        assert!(moved < 0.15, "{moved:.4} of keys moved");
        // Maglev trades a little disruption for balance: a few of the others'
        // slots change hands when the table is rebuilt, but only a few.
        let others_moved = others_moved as f64 / others as f64;
        assert!(
            others_moved < 0.01,
            "{others_moved:.4} of the other endpoints' keys moved"
        );
    }

    #[test]
    fn a_refused_endpoints_keys_spread_over_the_others_and_nothing_else_moves() {
        let m = Maglev::new(&names(10), &[1; 10], DEFAULT_TABLE_SIZE).expect("valid");
        let mut landed = [0u32; 10];
        let mut refused_keys = 0;
        for k in keys(100_000) {
            let usual = m.pick(k, |_| true).expect("a pick");
            let now = m.pick(k, |i| i != 7).expect("a pick");
            if usual == 7 {
                assert_ne!(now, 7);
                landed[now] += 1;
                refused_keys += 1;
            } else {
                assert_eq!(now, usual, "key {k:#x} moved off a healthy endpoint");
            }
        }
        let fair = f64::from(refused_keys) / 9.0;
        for (i, &n) in landed.iter().enumerate().filter(|&(i, _)| i != 7) {
            assert!(
                (f64::from(n) / fair - 1.0).abs() < 0.15,
                "endpoint {i} took {n} of {refused_keys} keys: {landed:?}"
            );
        }
    }

    #[test]
    fn the_same_set_maps_keys_the_same_way_in_any_order_and_any_run() {
        let names = names(5);
        let m = Maglev::new(&names, &[1; 5], DEFAULT_TABLE_SIZE).expect("valid");
        let pinned = [
            ("198.51.100.7", "http://10.0.0.1:80"),
            ("203.0.113.42", "http://10.0.0.1:80"),
            ("session=abc123", "http://10.0.0.4:80"),
            ("2001:db8::1", "http://10.0.0.2:80"),
        ];
        for (k, want) in pinned {
            let got = m.pick(key(k.as_bytes()), |_| true).expect("a pick");
            assert_eq!(names[got], want, "key {k}");
        }

        let mut reversed = names.clone();
        reversed.reverse();
        let r = Maglev::new(&reversed, &[1; 5], DEFAULT_TABLE_SIZE).expect("valid");
        for k in keys(1_000) {
            let a = m.pick(k, |_| true).expect("a pick");
            let b = r.pick(k, |_| true).expect("a pick");
            assert_eq!(names[a], reversed[b]);
        }
    }

    #[test]
    fn weight_zero_and_refusals_leave_only_what_is_acceptable() {
        let names = names(4);
        let m = Maglev::new(&names, &[1, 0, 1, 1], 101).expect("valid");
        assert!(m.table.iter().all(|&i| i != 1));
        for k in keys(1_000) {
            // Only endpoint 3 acceptable: the walk or the scan finds it.
            assert_eq!(m.pick(k, |i| i == 3), Some(3));
            assert_eq!(m.pick(k, |i| i == 1), None, "weight 0 is never picked");
            assert_eq!(m.pick(k, |_| false), None);
        }
        let none = Maglev::new(&names, &[0; 4], 101).expect("valid");
        assert_eq!(none.table_size(), 0);
        assert_eq!(none.pick(1, |_| true), None);
        let empty = Maglev::new(&[], &[], DEFAULT_TABLE_SIZE).expect("valid");
        assert_eq!(empty.pick(1, |_| true), None);
    }

    #[test]
    fn bad_tables_are_refused() {
        let names = names(3);
        assert_eq!(
            Maglev::new(&names, &[1; 3], 65_536).err(),
            Some(MaglevError::NotPrime(65_536))
        );
        assert_eq!(
            Maglev::new(&names, &[1; 3], 1).err(),
            Some(MaglevError::NotPrime(1))
        );
        assert_eq!(
            Maglev::new(&names, &[1; 3], 2).err(),
            Some(MaglevError::TooSmall {
                size: 2,
                endpoints: 3
            })
        );
        assert_eq!(
            Maglev::new(&names, &[1; 2], 101).err(),
            Some(MaglevError::LengthMismatch {
                names: 3,
                weights: 2
            })
        );
        assert_eq!(
            Maglev::new(&names, &[1; 3], MAX_TABLE_SIZE + 2).err(),
            Some(MaglevError::TooLarge(MAX_TABLE_SIZE + 2))
        );
        assert!(Maglev::new(&names, &[1; 3], 3).is_ok());
        let primes: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(MAX_TABLE_SIZE + 2));
    }
}
