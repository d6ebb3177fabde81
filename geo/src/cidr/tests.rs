use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("valid network")
}

fn table(entries: &[(&str, &str)]) -> CidrTable {
    CidrTable::new(entries.iter().map(|&(n, r)| (net(n), Region::from(r))))
}

fn at<'a>(table: &'a CidrTable, ip: &str) -> Option<&'a str> {
    table.lookup(ip.parse().expect("ip")).map(Region::as_str)
}

/// The specification: every prefix holding the address, the longest wins, the
/// first listed among identical ones.
fn linear(entries: &[(IpNet, Region)], ip: IpAddr) -> Option<&Region> {
    let ip = ip.to_canonical();
    let mut best: Option<&(IpNet, Region)> = None;
    for entry in entries {
        if entry.0.contains(&ip) && best.is_none_or(|b| entry.0.prefix_len() > b.0.prefix_len()) {
            best = Some(entry);
        }
    }
    best.map(|(_, region)| region)
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    let t = table(&[
        ("10.0.0.0/8", "wide"),
        ("10.1.0.0/16", "narrow"),
        ("2001:db8::/32", "v6"),
    ]);
    assert_eq!(at(&t, "10.1.2.3"), Some("narrow"));
    assert_eq!(at(&t, "10.2.0.1"), Some("wide"));
    assert_eq!(at(&t, "2001:db8::1"), Some("v6"));
    assert_eq!(at(&t, "192.0.2.1"), None);
    assert_eq!(at(&t, "2001:db9::1"), None);
    assert_eq!((t.len(), t.is_empty()), (3, false));
}

#[test]
fn nested_ranges_hand_back_to_the_wider_prefix_after_they_end() {
    let t = table(&[
        ("10.0.0.0/8", "a"),
        ("10.1.0.0/16", "b"),
        ("10.1.2.0/24", "c"),
        ("10.1.3.0/24", "a"),
    ]);
    assert_eq!(at(&t, "9.255.255.255"), None);
    assert_eq!(at(&t, "10.0.0.0"), Some("a"));
    assert_eq!(at(&t, "10.1.0.0"), Some("b"));
    assert_eq!(at(&t, "10.1.2.255"), Some("c"));
    assert_eq!(at(&t, "10.1.3.0"), Some("a"));
    assert_eq!(at(&t, "10.1.4.0"), Some("b"));
    assert_eq!(at(&t, "10.2.0.0"), Some("a"));
    assert_eq!(at(&t, "11.0.0.0"), None);
}

#[test]
fn identical_prefixes_keep_the_first_and_host_bits_are_ignored() {
    let t = table(&[("10.1.2.3/16", "first"), ("10.1.0.0/16", "second")]);
    assert_eq!(at(&t, "10.1.200.1"), Some("first"));
}

#[test]
fn the_ends_of_the_address_space() {
    let t = table(&[
        ("0.0.0.0/0", "default"),
        ("255.255.255.255/32", "top"),
        ("0.0.0.0/32", "bottom"),
        ("::/0", "default6"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "top6"),
    ]);
    assert_eq!(at(&t, "0.0.0.0"), Some("bottom"));
    assert_eq!(at(&t, "0.0.0.1"), Some("default"));
    assert_eq!(at(&t, "255.255.255.254"), Some("default"));
    assert_eq!(at(&t, "255.255.255.255"), Some("top"));
    assert_eq!(at(&t, "::"), Some("default6"));
    assert_eq!(
        at(&t, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        Some("top6")
    );
    assert_eq!(t.ranges(), 3 + 2, "adjacent ranges of one region merge");
}

#[test]
fn ipv4_mapped_addresses_are_looked_up_as_ipv4() {
    let t = table(&[("127.1.0.0/16", "one"), ("::/0", "v6")]);
    assert_eq!(at(&t, "::ffff:127.1.0.1"), Some("one"));
    assert_eq!(at(&t, "::ffff:127.2.0.1"), None);
    assert_eq!(at(&t, "::1"), Some("v6"));
}

#[test]
fn an_empty_table_finds_nothing() {
    let t = CidrTable::default();
    assert!(t.is_empty());
    assert_eq!(at(&t, "10.0.0.1"), None);
    assert_eq!(at(&t, "::1"), None);
}

/// Prefixes drawn under a few common first octets (or 16-bit groups) nest and
/// overlap a lot; half the probes sit on or beside a prefix's bounds.
#[test]
fn matches_a_linear_scan_over_random_prefixes() {
    let mut rng = fastrand::Rng::with_seed(0x6e0);
    for round in 0..4 {
        let regions: Vec<Region> = (0..12).map(|i| Region::from(format!("r{i}"))).collect();
        let entries: Vec<(IpNet, Region)> = (0..3_000)
            .map(|_| {
                let region = regions[rng.usize(..regions.len())].clone();
                (random_net(&mut rng, round), region)
            })
            .collect();
        let t = CidrTable::new(entries.iter().cloned());
        for _ in 0..5_000 {
            let ip = probe(&mut rng, &entries);
            assert_eq!(
                t.lookup(ip),
                linear(&entries, ip),
                "round {round}, address {ip}"
            );
        }
    }
}

/// Round 0 is IPv4 only, round 1 IPv6 only, the others both.
fn random_net(rng: &mut fastrand::Rng, round: u32) -> IpNet {
    let v4 = match round {
        0 => true,
        1 => false,
        _ => rng.bool(),
    };
    if v4 {
        let top = [10u32, 127, 192, 255][rng.usize(..4)] << 24;
        let addr = Ipv4Addr::from(top | (rng.u32(..) >> 8));
        let len = if rng.u8(..10) == 0 {
            rng.u8(..=8)
        } else {
            rng.u8(8..=32)
        };
        net(&format!("{addr}/{len}"))
    } else {
        let top = u128::from([0x2001u16, 0xfd00, 0xffff][rng.usize(..3)]) << 112;
        let addr = Ipv6Addr::from(top | (rng.u128(..) >> 16));
        let len = if rng.u8(..10) == 0 {
            rng.u8(..=16)
        } else {
            rng.u8(16..=128)
        };
        net(&format!("{addr}/{len}"))
    }
}

fn probe(rng: &mut fastrand::Rng, entries: &[(IpNet, Region)]) -> IpAddr {
    let (n, _) = &entries[rng.usize(..entries.len())];
    match (n, rng.u8(..6)) {
        (IpNet::V4(n), 0) => IpAddr::V4(n.network()),
        (IpNet::V4(n), 1) => IpAddr::V4(n.broadcast()),
        (IpNet::V4(n), 2) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_sub(1))),
        (IpNet::V4(n), 3) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()).wrapping_add(1))),
        (IpNet::V6(n), 0) => IpAddr::V6(n.network()),
        (IpNet::V6(n), 1) => IpAddr::V6(n.broadcast()),
        (IpNet::V6(n), 2) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_sub(1))),
        (IpNet::V6(n), 3) => IpAddr::V6(Ipv6Addr::from(u128::from(n.broadcast()).wrapping_add(1))),
        (IpNet::V4(n), _) => {
            let mask = u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0) | 0x00ff_ffff;
            IpAddr::V4(Ipv4Addr::from(
                (u32::from(n.network()) & !mask) | (rng.u32(..) & mask),
            ))
        }
        (IpNet::V6(n), _) => {
            let mask = u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0)
                | (u128::MAX >> 16);
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(n.network()) & !mask) | (rng.u128(..) & mask),
            ))
        }
    }
}
