//! Where a client is and how far regions are from each other.
//!
//! Pure and synchronous: no async code, no clock of its own (callers pass `now`),
//! no I/O beyond reading a MaxMind database file. The edge drives it:
//!
//! - [`Locator`] maps a client address to a [`Region`]: the configured CIDR table
//!   first ([`cidr`]), then a MaxMind `.mmdb` country/continent through a region map
//!   ([`mmdb`]), else the edge's own region.
//! - [`topology::Topology`] orders regions by distance: a configured latency matrix,
//!   overridden by the RTT the edge measures to each region once it has enough
//!   fresh samples.
//! - [`spillover`] turns the ordered regions' healthy shares into traffic shares
//!   (Envoy's locality-weighted load balancing with overprovisioning).
//!
//! It must not parse client headers or decide which address is the client's: the
//! pipeline derives the client IP (peer address or trusted-proxy chain) and passes it in.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

pub mod cidr;
mod locator;
pub mod mmdb;
pub mod spillover;
pub mod topology;

pub use cidr::CidrTable;
pub use locator::{By, Located, Locator};
pub use mmdb::{GeoDb, MmdbError, Place, RegionMap};

/// A region's id as configured, e.g. `eu-west`. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(pub Arc<str>);

impl Region {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Region {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl From<String> for Region {
    fn from(id: String) -> Self {
        Self(id.into())
    }
}

/// Lets maps keyed by region be queried with a plain `&str`.
impl Borrow<str> for Region {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod testdb;
