//! Where a client is and how far regions are from each other.
//!
//! Pure and synchronous: no async code, no I/O beyond reading a database file.
//! This first piece maps client addresses to regions with a CIDR table (longest
//! prefix wins); region distances and MaxMind databases come with the geo issue.

use std::net::IpAddr;

use ipnet::IpNet;

/// A region's id as configured, e.g. `eu-west`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region(pub String);

/// Client address to region by longest matching prefix.
#[derive(Clone, Debug, Default)]
pub struct CidrTable {
    /// Sorted longest prefix first, so the first hit is the most specific.
    entries: Vec<(IpNet, Region)>,
}

impl CidrTable {
    pub fn new(entries: impl IntoIterator<Item = (IpNet, Region)>) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self { entries }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&Region> {
        self.entries
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, region)| region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid network")
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let table = CidrTable::new([
            (net("10.0.0.0/8"), Region("wide".into())),
            (net("10.1.0.0/16"), Region("narrow".into())),
            (net("2001:db8::/32"), Region("v6".into())),
        ]);
        let at = |ip: &str| table.lookup(ip.parse().expect("ip")).map(|r| r.0.as_str());
        assert_eq!(at("10.1.2.3"), Some("narrow"));
        assert_eq!(at("10.2.0.1"), Some("wide"));
        assert_eq!(at("2001:db8::1"), Some("v6"));
        assert_eq!(at("192.0.2.1"), None);
    }
}
