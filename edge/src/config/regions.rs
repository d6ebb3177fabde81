//! Reading `[geo]`: the edge's region, the regions clients and endpoints are
//! placed in, how clients are placed (CIDR prefixes, a MaxMind database's
//! countries and continents), the configured latency between regions, and how
//! traffic spills from one region to the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::walk::{Cx, FromToml, Table};
use super::{at_least, positive};

/// `[geo]`, validated: every region named anywhere is listed, the database opened.
#[derive(Clone, Debug)]
pub struct Geo {
    /// The edge's own region: clients nothing places go here, and round trips
    /// are measured from here.
    pub region: String,
    /// Whose region a request is served from first.
    pub prefer: Prefer,
    /// The healthy share of a region's endpoints below which its traffic starts
    /// to spill to the next-nearest region.
    pub spillover_threshold: f64,
    /// Adds `x-edge-geo` (client region, chosen region and endpoint) to responses.
    pub debug_header: bool,
    /// A MaxMind-format database (`GeoIP2-Country`, `GeoLite2-Country`, ...),
    /// opened and verified when the config is read.
    pub mmdb: Option<Arc<geo::GeoDb>>,
    /// The regions in file order; a region's position is its id.
    pub regions: Vec<GeoRegion>,
    /// When measured round trips take over from configured latencies.
    pub measure: geo::topology::Measure,
}

/// `[geo.regions.ID]`.
#[derive(Clone, Debug)]
pub struct GeoRegion {
    pub id: String,
    /// Client prefixes placed in this region (longest prefix wins across regions).
    pub cidrs: Vec<IpNet>,
    /// ISO 3166 country codes (`DE`) the database places in this region.
    pub countries: Vec<String>,
    /// Continent codes (`EU`) the database places in this region; a country
    /// listed anywhere wins over its continent.
    pub continents: Vec<String>,
    /// Configured round trips to other regions (one direction stands for both).
    pub latency: Vec<(String, Duration)>,
}

/// Whose region a request is served from first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// The client's region, as its address places it.
    Client,
    /// The edge's own region, whatever the client's.
    Edge,
}

impl Geo {
    /// A region's id (its position in `regions`).
    pub fn id(&self, region: &str) -> Option<upstream::RegionId> {
        self.regions
            .iter()
            .position(|r| r.id == region)
            .and_then(|i| upstream::RegionId::try_from(i).ok())
    }
}

impl FromToml for Prefer {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("client") => Ok(Prefer::Client),
            Some("edge") => Ok(Prefer::Edge),
            Some(other) => Err(format!("expected \"client\" or \"edge\", found {other:?}")),
            None => Err(format!(
                "expected \"client\" or \"edge\", found {}",
                v.type_name()
            )),
        }
    }
}

pub(super) fn read_geo(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Option<Geo> {
    let mut t = root.table(cx, "geo")?;
    let region = t.opt::<String>(cx, "region");
    let prefer = t.or(cx, "prefer", Prefer::Client);
    let spillover_threshold = match t.opt::<f64>(cx, "spillover_threshold") {
        None => 0.7,
        Some(v) if v > 0.0 && v <= 1.0 => v,
        Some(_) => {
            let line = t.line_of(cx, "spillover_threshold");
            cx.error(
                line,
                &t.path("spillover_threshold"),
                "must be greater than 0.0 and at most 1.0",
            );
            0.7
        }
    };
    let debug_header = t.or(cx, "debug_header", false);
    let mmdb = t.opt::<PathBuf>(cx, "mmdb").and_then(|p| {
        let path = base.join(p);
        match geo::GeoDb::open(&path) {
            Ok(db) => Some(Arc::new(db)),
            Err(e) => {
                let line = t.line_of(cx, "mmdb");
                let reason = format!("{e}{}", crate::chain::error_chain(&e));
                cx.error(line, &t.path("mmdb"), reason);
                None
            }
        }
    });
    let mut measure = geo::topology::Measure::default();
    measure.min_samples = at_least(cx, &mut t, "measure_min_samples", measure.min_samples, 1);
    measure.stale_after = positive(cx, &mut t, "measure_stale_after", measure.stale_after);
    let mut regions = Vec::new();
    let mut latency_lines = Vec::new();
    for (id, mut r) in t.named_tables(cx, "regions") {
        let cidrs = r.or(cx, "cidrs", Vec::new());
        let countries = r.or::<Vec<String>>(cx, "countries", Vec::new());
        let continents = r.or::<Vec<String>>(cx, "continents", Vec::new());
        let latency_path = r.path("latency");
        let mut latency = Vec::new();
        for (to, rtt, line) in r.map::<Duration>(cx, "latency") {
            latency_lines.push((format!("{latency_path}.{to}"), to.clone(), line));
            latency.push((to, rtt));
        }
        r.finish(cx);
        regions.push(GeoRegion {
            id,
            cidrs,
            countries: countries.iter().map(|c| c.to_ascii_uppercase()).collect(),
            continents: continents.iter().map(|c| c.to_ascii_uppercase()).collect(),
            latency,
        });
    }
    if regions.len() > usize::from(upstream::RegionId::MAX) {
        let line = t.line_of(cx, "regions");
        cx.error(line, &t.path("regions"), "too many regions");
    }
    let known = |id: &str| regions.iter().any(|r| r.id == id);
    match &region {
        None => {
            let line = t.line();
            cx.error(
                line,
                &t.path("region"),
                "missing (required): the edge's own region",
            );
        }
        Some(own) if !known(own) => {
            let line = t.line_of(cx, "region");
            cx.error(
                line,
                &t.path("region"),
                format!("no region named {own:?} in [geo.regions]"),
            );
        }
        Some(_) => {}
    }
    for (path, to, line) in latency_lines {
        if !known(&to) {
            cx.error(
                line,
                &path,
                format!("no region named {to:?} in [geo.regions]"),
            );
        }
    }
    if mmdb.is_some()
        && regions
            .iter()
            .all(|r| r.countries.is_empty() && r.continents.is_empty())
    {
        let line = t.line_of(cx, "mmdb");
        cx.error(
            line,
            &t.path("mmdb"),
            "no region lists countries or continents, so the database would place nobody",
        );
    }
    t.finish(cx);
    Some(Geo {
        region: region.unwrap_or_default(),
        prefer,
        spillover_threshold,
        debug_header,
        mmdb,
        regions,
        measure,
    })
}
