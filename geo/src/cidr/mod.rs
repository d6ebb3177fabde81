//! Client address to region by longest matching prefix, from the configured CIDR
//! table.
//!
//! The prefixes are flattened once, when the table is built, into a sorted list of
//! disjoint address ranges that covers the whole address space, each range holding
//! the region of the most specific prefix over it (or none). A lookup is one binary
//! search, whatever the nesting. With 10,000 prefixes (`benches/benches/geo.rs`):
//! about 25 ns for IPv4 and 110 ns for IPv6, against 190 ns for a hash map per
//! prefix length probed longest first, and 75 µs for a linear scan. Building the
//! table takes under a millisecond.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports an
//! IPv4 peer) are looked up as the IPv4 address they carry.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::Region;

/// Client address to region by longest matching prefix. Of identical prefixes, the
/// first listed wins.
#[derive(Clone, Debug)]
pub struct CidrTable {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
    /// The distinct regions; ranges hold indexes into it.
    regions: Vec<Region>,
    prefixes: usize,
}

impl Default for CidrTable {
    fn default() -> Self {
        Self::new([])
    }
}

impl CidrTable {
    pub fn new(entries: impl IntoIterator<Item = (IpNet, Region)>) -> Self {
        let mut regions = Vec::new();
        let mut index: HashMap<Region, u32> = HashMap::new();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (order, (net, region)) in entries.into_iter().enumerate() {
            let value = *index.entry(region.clone()).or_insert_with(|| {
                regions.push(region);
                // Fewer regions than u32::MAX: each needs a configured entry.
                u32::try_from(regions.len() - 1).unwrap_or(NONE - 1)
            });
            match net {
                IpNet::V4(n) => v4.push(Prefix {
                    start: u32::from(n.network()),
                    end: u32::from(n.broadcast()),
                    len: n.prefix_len(),
                    order,
                    value,
                }),
                IpNet::V6(n) => v6.push(Prefix {
                    start: u128::from(n.network()),
                    end: u128::from(n.broadcast()),
                    len: n.prefix_len(),
                    order,
                    value,
                }),
            }
        }
        let prefixes = v4.len() + v6.len();
        Self {
            v4: Ranges::build(v4),
            v6: Ranges::build(v6),
            regions,
            prefixes,
        }
    }

    /// The region of the longest prefix holding `ip`, if any holds it.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Region> {
        let value = match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => self.v6.get(u128::from(a)),
        }?;
        self.regions.get(value as usize)
    }

    /// How many prefixes the table was built from.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// How many disjoint ranges the prefixes flattened into (a lookup searches these).
    pub fn ranges(&self) -> usize {
        self.v4.starts.len() + self.v6.starts.len()
    }
}

/// No region: the range is covered by no prefix.
const NONE: u32 = u32::MAX;

/// An address as a number: `u32` for IPv4, `u128` for IPv6.
trait Key: Copy + Ord {
    const ZERO: Self;
    /// The next address, unless this is the last one.
    fn succ(self) -> Option<Self>;
}

impl Key for u32 {
    const ZERO: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u128 {
    const ZERO: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

struct Prefix<K> {
    start: K,
    end: K,
    len: u8,
    /// Position in the configured list, so the first of identical prefixes wins.
    order: usize,
    value: u32,
}

/// The address space cut into disjoint ranges: range `i` runs from `starts[i]` up
/// to `starts[i + 1]` (exclusive) and maps to `values[i]`. `starts[0]` is always
/// zero, so every address falls in exactly one range.
#[derive(Clone, Debug)]
struct Ranges<K> {
    starts: Vec<K>,
    values: Vec<u32>,
}

impl<K: Key> Ranges<K> {
    /// A sweep over the prefixes in address order, wider first where two start
    /// together. Two prefixes either nest or are disjoint, so the prefixes holding
    /// the sweep's position form a stack, the most specific on top.
    fn build(mut prefixes: Vec<Prefix<K>>) -> Self {
        prefixes.sort_unstable_by_key(|p| (p.start, p.len, p.order));
        let mut out = Self {
            starts: vec![K::ZERO],
            values: vec![NONE],
        };
        let mut open: Vec<(K, u32)> = Vec::new();
        let mut previous = None;
        for p in &prefixes {
            if previous == Some((p.start, p.len)) {
                continue;
            }
            previous = Some((p.start, p.len));
            out.close(&mut open, |end| end < p.start);
            out.push(p.start, p.value);
            open.push((p.end, p.value));
        }
        out.close(&mut open, |_| true);
        out.starts.shrink_to_fit();
        out.values.shrink_to_fit();
        out
    }

    /// Pops the open prefixes that `done` says end before the sweep's position; the
    /// one below each (or none) takes over after its end.
    fn close(&mut self, open: &mut Vec<(K, u32)>, done: impl Fn(K) -> bool) {
        while let Some(&(end, _)) = open.last() {
            if !done(end) {
                break;
            }
            open.pop();
            if let Some(next) = end.succ() {
                self.push(next, open.last().map_or(NONE, |&(_, value)| value));
            }
        }
    }

    /// Starts a range, replacing one that starts at the same address and merging
    /// with the previous one when it maps to the same value.
    fn push(&mut self, start: K, value: u32) {
        if self.starts.last() == Some(&start) {
            self.starts.pop();
            self.values.pop();
        }
        if self.values.last() == Some(&value) {
            return;
        }
        self.starts.push(start);
        self.values.push(value);
    }

    fn get(&self, key: K) -> Option<u32> {
        // At least 1, since starts[0] is zero.
        let i = self.starts.partition_point(|&start| start <= key);
        let value = *self.values.get(i.checked_sub(1)?)?;
        (value != NONE).then_some(value)
    }
}

#[cfg(test)]
mod tests;
