//! Client address to region: the configured CIDR table first, then the MaxMind
//! database's country or continent through the region map, else the edge's own
//! region.

use std::net::IpAddr;
use std::sync::Arc;

use crate::{CidrTable, GeoDb, Region, RegionMap};

/// What placed a client in its region, for the debug header and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By<'a> {
    /// A prefix of the CIDR table.
    Cidr,
    /// The database's country (ISO code), through the region map.
    Country(&'a str),
    /// The database's continent code, through the region map.
    Continent(&'a str),
    /// Nothing placed the address in a region: the edge's own.
    Default,
    /// The database's record for the address could not be decoded (not expected
    /// after the check at open; count it): the edge's own region.
    Unreadable,
}

/// A client's region and what placed it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located<'a> {
    pub region: &'a Region,
    pub by: By<'a>,
}

/// Client address to region. Built whole from config and swapped whole on reload.
#[derive(Debug)]
pub struct Locator {
    own: Region,
    cidr: CidrTable,
    db: Option<(Arc<GeoDb>, RegionMap)>,
}

impl Locator {
    /// `own` is the edge's region, where unplaced clients go.
    pub fn new(own: Region, cidr: CidrTable) -> Self {
        Self {
            own,
            cidr,
            db: None,
        }
    }

    /// Consults `db` for addresses the CIDR table does not hold.
    /// The database may be shared (it is opened once, when config is read).
    pub fn with_mmdb(mut self, db: impl Into<Arc<GeoDb>>, map: RegionMap) -> Self {
        self.db = Some((db.into(), map));
        self
    }

    pub fn own_region(&self) -> &Region {
        &self.own
    }

    pub fn region(&self, ip: IpAddr) -> &Region {
        self.locate(ip).region
    }

    pub fn locate(&self, ip: IpAddr) -> Located<'_> {
        if let Some(region) = self.cidr.lookup(ip) {
            return Located {
                region,
                by: By::Cidr,
            };
        }
        let by_db = self.db.as_ref().map(|(db, map)| match db.lookup(ip) {
            Ok(place) => map.region(&place),
            Err(_) => Some((&self.own, By::Unreadable)),
        });
        match by_db.flatten() {
            Some((region, by)) => Located { region, by },
            None => Located {
                region: &self.own,
                by: By::Default,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidr_first_then_the_database_then_the_edges_own_region() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = testdb::write(
            dir.path(),
            "geo.mmdb",
            &[
                ("127.1.0.0/16", Some("JP"), Some("AS")),
                ("192.0.2.0/24", Some("FR"), Some("EU")),
                ("198.51.100.0/24", Some("DE"), Some("EU")),
                ("203.0.113.0/24", Some("BR"), Some("SA")),
                ("2001:db8::/32", Some("US"), Some("NA")),
            ],
        );
        let cidr = CidrTable::new([("127.1.0.0/16".parse().expect("net"), Region::from("one"))]);
        let map = RegionMap::new(
            [
                ("FR", Region::from("eu-west")),
                ("US", Region::from("us-east")),
            ],
            [("EU", Region::from("eu-central"))],
        );
        let locator = Locator::new(Region::from("home"), cidr)
            .with_mmdb(GeoDb::open(&path).expect("opens"), map);
        let at = |s: &str| {
            let found = locator.locate(ip(s));
            (found.region.as_str(), found.by)
        };
        assert_eq!(
            at("127.1.0.1"),
            ("one", By::Cidr),
            "CIDR wins over the database"
        );
        assert_eq!(at("192.0.2.9"), ("eu-west", By::Country("FR")));
        assert_eq!(at("198.51.100.9"), ("eu-central", By::Continent("EU")));
        assert_eq!(at("2001:db8::9"), ("us-east", By::Country("US")));
        assert_eq!(
            at("203.0.113.9"),
            ("home", By::Default),
            "BR/SA map nowhere"
        );
        assert_eq!(at("10.0.0.1"), ("home", By::Default), "not in the database");
        assert_eq!(locator.region(ip("::ffff:192.0.2.9")).as_str(), "eu-west");
        assert_eq!(locator.own_region().as_str(), "home");
    }

    #[test]
    fn without_a_database_unplaced_clients_are_the_edges() {
        let locator = Locator::new(Region::from("home"), CidrTable::default());
        let found = locator.locate(ip("192.0.2.1"));
        assert_eq!((found.region.as_str(), found.by), ("home", By::Default));
    }
}
