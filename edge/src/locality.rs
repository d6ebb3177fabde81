//! Where a request should be served from: the client's region (or the edge's),
//! then every other region nearest first. Built from `[geo]`; regional pools
//! read the order from a request extension and report the round trips their
//! health probes measure back here, so measured distances replace configured ones.
//!
//! The order per source region is precomputed and swapped whole whenever a
//! measurement arrives, so the request path reads it without a lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use geo::topology::Topology;
use geo::{By, CidrTable, Locator, Region, RegionMap};
use upstream::{Locality, RegionId, RttObserver};

use crate::config::{self, Prefer};

/// The geo state of one config: placement, topology and the orders derived from it.
pub struct Geo {
    locator: Locator,
    /// Regions by id (their position in the config).
    regions: Vec<Region>,
    ids: HashMap<Region, RegionId>,
    own: RegionId,
    prefer: Prefer,
    pub debug_header: bool,
    topology: Mutex<Topology>,
    /// `orders[source]`: every region nearest first from `source`.
    orders: ArcSwap<Vec<Locality>>,
}

/// Where the pipeline placed a client, and the order its request will try.
pub struct Placed {
    pub client: RegionId,
    pub by: &'static str,
    pub locality: Locality,
}

/// A region's distance from this edge, for metrics.
pub struct RegionStatus<'a> {
    pub region: &'a str,
    /// The measured round trip (EWMA) and how many samples it rests on.
    pub measured: Option<(Duration, u32)>,
    /// The distance in use: measured once trusted, else configured.
    pub distance: Option<Duration>,
}

impl Geo {
    /// Builds from a validated `[geo]` (an inconsistent one is a bug in validation).
    pub fn new(cfg: &config::Geo) -> Result<Self, geo::topology::TopologyError> {
        let regions: Vec<Region> = cfg
            .regions
            .iter()
            .map(|r| Region::from(r.id.as_str()))
            .collect();
        let ids = regions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.clone(), RegionId::try_from(i).ok()?)))
            .collect::<HashMap<_, _>>();
        let own = Region::from(cfg.region.as_str());
        let cidr = CidrTable::new(cfg.regions.iter().flat_map(|r| {
            let region = Region::from(r.id.as_str());
            r.cidrs.iter().map(move |net| (*net, region.clone()))
        }));
        let mut locator = Locator::new(own.clone(), cidr);
        if let Some(db) = &cfg.mmdb {
            let map = RegionMap::new(
                cfg.regions.iter().flat_map(|r| {
                    r.countries
                        .iter()
                        .map(|c| (c.clone(), Region::from(r.id.as_str())))
                }),
                cfg.regions.iter().flat_map(|r| {
                    r.continents
                        .iter()
                        .map(|c| (c.clone(), Region::from(r.id.as_str())))
                }),
            );
            locator = locator.with_mmdb(db.clone(), map);
        }
        let latencies = cfg.regions.iter().flat_map(|r| {
            r.latency
                .iter()
                .map(|(to, rtt)| (Region::from(r.id.as_str()), Region::from(to.as_str()), *rtt))
        });
        let topology = Topology::new(own.clone(), regions.clone(), latencies, cfg.measure)?;
        let own_id = ids.get(&own).copied().unwrap_or_default();
        let geo = Self {
            locator,
            regions,
            ids,
            own: own_id,
            prefer: cfg.prefer,
            debug_header: cfg.debug_header,
            topology: Mutex::new(topology),
            orders: ArcSwap::from_pointee(Vec::new()),
        };
        geo.reorder(&geo.topology(), Instant::now());
        Ok(geo)
    }

    fn topology(&self) -> std::sync::MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recomputes every source region's order from the topology as it is now.
    fn reorder(&self, topology: &Topology, now: Instant) {
        let orders = self
            .regions
            .iter()
            .map(|from| Locality {
                order: topology
                    .nearest(from, now)
                    .iter()
                    .filter_map(|(r, _)| self.ids.get(r).copied())
                    .collect(),
            })
            .collect();
        self.orders.store(Arc::new(orders));
    }

    /// Places a client by its address (the one the pipeline derived, never a
    /// header from an untrusted peer) and gives the order its request tries.
    pub fn place(&self, ip: IpAddr) -> Placed {
        let located = self.locator.locate(ip);
        let client = self.ids.get(located.region).copied().unwrap_or(self.own);
        let by = match located.by {
            By::Cidr => "cidr",
            By::Country(_) => "country",
            By::Continent(_) => "continent",
            By::Default => "default",
            By::Unreadable => "unreadable",
        };
        let source = match self.prefer {
            Prefer::Client => client,
            Prefer::Edge => self.own,
        };
        let orders = self.orders.load();
        let locality = orders
            .get(usize::from(source))
            .cloned()
            .unwrap_or_else(|| Locality {
                order: Arc::from([]),
            });
        Placed {
            client,
            by,
            locality,
        }
    }

    pub fn name(&self, id: RegionId) -> &str {
        self.regions
            .get(usize::from(id))
            .map_or("unknown", Region::as_str)
    }

    /// Every region's measured and effective distance from this edge.
    pub fn statuses(&self) -> Vec<RegionStatus<'_>> {
        let topology = self.topology();
        let now = Instant::now();
        let own = &self.regions[usize::from(self.own)];
        self.regions
            .iter()
            .map(|r| RegionStatus {
                region: r.as_str(),
                measured: topology.measured(r),
                distance: topology.distance(own, r, now),
            })
            .collect()
    }
}

impl RttObserver for Geo {
    fn observe(&self, region: RegionId, rtt: Duration) {
        let Some(r) = self.regions.get(usize::from(region)) else {
            return;
        };
        let now = Instant::now();
        let mut topology = self.topology();
        if topology.observe(r, rtt, now).is_ok() {
            self.reorder(&topology, now);
        }
    }
}
