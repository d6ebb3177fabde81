//! How far regions are from each other: a configured latency matrix (round-trip
//! times), and the round-trip times this edge measures to each region's endpoints
//! (upstream connects, health checks), kept as an exponentially weighted moving
//! average per region.
//!
//! Measurements are taken from where the edge stands, so they give the distance
//! between the edge's own region and each region (both ways: a round trip is
//! symmetric); distances between two other regions stay the configured ones.
//! A region's measured value takes over from the configured one once it rests on
//! at least [`Measure::min_samples`] samples and the latest is no older than
//! [`Measure::stale_after`]; a stale measurement falls back to the configured value,
//! and the next sample starts a new average. Where nothing is configured, a fresh
//! measurement with fewer samples is still better than nothing.
//!
//! Pure: callers pass `now`, so tests drive time by hand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Region;

/// How measurements are averaged and when they are trusted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measure {
    /// Samples needed before the measured value replaces the configured one.
    pub min_samples: u32,
    /// A measurement whose latest sample is older than this is ignored.
    pub stale_after: Duration,
    /// Each new sample's weight in the average, in (0, 1]: 0.2 lets the last ten
    /// or so samples count.
    pub weight: f64,
}

impl Default for Measure {
    fn default() -> Self {
        Self {
            min_samples: 5,
            stale_after: Duration::from_secs(60),
            weight: 0.2,
        }
    }
}

/// Why a topology could not be built, or a measurement was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopologyError {
    /// A region is listed twice.
    #[error("region {0} is listed twice")]
    Duplicate(Region),
    /// The edge's region, a latency entry or a measurement names a region that is
    /// not listed.
    #[error("region {0} is not among the configured regions")]
    UnknownRegion(Region),
    /// The measurement weight is not in (0, 1].
    #[error("measurement weight {0} is not in (0, 1]")]
    Weight(f64),
}

/// The regions, in configured order, and the distances between them.
#[derive(Clone, Debug)]
pub struct Topology {
    regions: Vec<Region>,
    index: HashMap<Region, usize>,
    /// The edge's own region, where measurements are taken from.
    local: usize,
    /// `configured[from * n + to]`, filled symmetrically where one direction is given.
    configured: Vec<Option<Duration>>,
    /// Per region: the measured round trip from this edge.
    measured: Vec<Option<Ewma>>,
    measure: Measure,
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    rtt_ns: f64,
    samples: u32,
    last: Instant,
}

impl Topology {
    /// `latencies` are `(from, to, round trip)`; one direction stands for both
    /// unless the other is given too. A region's distance to itself is zero unless
    /// configured.
    pub fn new(
        local: Region,
        regions: impl IntoIterator<Item = Region>,
        latencies: impl IntoIterator<Item = (Region, Region, Duration)>,
        measure: Measure,
    ) -> Result<Self, TopologyError> {
        if !(measure.weight > 0.0 && measure.weight <= 1.0) {
            return Err(TopologyError::Weight(measure.weight));
        }
        let regions: Vec<Region> = regions.into_iter().collect();
        let mut index = HashMap::with_capacity(regions.len());
        for (i, region) in regions.iter().enumerate() {
            if index.insert(region.clone(), i).is_some() {
                return Err(TopologyError::Duplicate(region.clone()));
            }
        }
        let id = |r: &Region| {
            index
                .get(r)
                .copied()
                .ok_or_else(|| TopologyError::UnknownRegion(r.clone()))
        };
        let n = regions.len();
        let mut configured = vec![None; n * n];
        let mut given = vec![false; n * n];
        for (from, to, rtt) in latencies {
            let (a, b) = (id(&from)?, id(&to)?);
            configured[a * n + b] = Some(rtt);
            given[a * n + b] = true;
            if !given[b * n + a] {
                configured[b * n + a] = Some(rtt);
            }
        }
        for i in 0..n {
            configured[i * n + i].get_or_insert(Duration::ZERO);
        }
        Ok(Self {
            local: id(&local)?,
            measured: vec![None; n],
            regions,
            index,
            configured,
            measure,
        })
    }

    /// The regions in configured order; a region's position is its id.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The edge's own region.
    pub fn local(&self) -> &Region {
        &self.regions[self.local]
    }

    /// Feeds one measured round trip from this edge to `region`'s endpoints.
    pub fn observe(
        &mut self,
        region: &Region,
        rtt: Duration,
        now: Instant,
    ) -> Result<(), TopologyError> {
        let i = self
            .id(region)
            .ok_or_else(|| TopologyError::UnknownRegion(region.clone()))?;
        let sample = rtt.as_nanos() as f64;
        let slot = &mut self.measured[i];
        match slot {
            Some(e) if now.saturating_duration_since(e.last) <= self.measure.stale_after => {
                e.rtt_ns += self.measure.weight * (sample - e.rtt_ns);
                e.samples = e.samples.saturating_add(1);
                e.last = e.last.max(now);
            }
            _ => {
                *slot = Some(Ewma {
                    rtt_ns: sample,
                    samples: 1,
                    last: now,
                })
            }
        }
        Ok(())
    }

    /// The measured round trip to `region` and how many samples it rests on,
    /// stale or not (for status pages).
    pub fn measured(&self, region: &Region) -> Option<(Duration, u32)> {
        let e = self.measured[self.id(region)?]?;
        Some((Duration::from_nanos(e.rtt_ns as u64), e.samples))
    }

    /// The distance between two regions now, if anything says.
    pub fn distance(&self, from: &Region, to: &Region, now: Instant) -> Option<Duration> {
        self.distance_by_id(self.id(from)?, self.id(to)?, now)
    }

    /// `from` first, then every other region by distance from it, nearest first
    /// (ties in configured order); regions at no known distance come last, at
    /// `Duration::MAX`. A `from` that is not in the topology is taken to be the
    /// edge's own region.
    pub fn nearest(&self, from: &Region, now: Instant) -> Vec<(Region, Duration)> {
        let from = self.id(from).unwrap_or(self.local);
        let mut order: Vec<(usize, Duration)> = (0..self.regions.len())
            .map(|to| {
                (
                    to,
                    self.distance_by_id(from, to, now).unwrap_or(Duration::MAX),
                )
            })
            .collect();
        order.sort_by_key(|&(to, d)| (to != from, d, to));
        order
            .into_iter()
            .map(|(to, d)| (self.regions[to].clone(), d))
            .collect()
    }

    fn id(&self, region: &Region) -> Option<usize> {
        self.index.get(region).copied()
    }

    fn distance_by_id(&self, from: usize, to: usize, now: Instant) -> Option<Duration> {
        let configured = self.configured[from * self.regions.len() + to];
        let measured = if from == self.local {
            self.fresh(to, now)
        } else if to == self.local {
            self.fresh(from, now)
        } else {
            None
        };
        match (measured, configured) {
            (Some((rtt, samples)), _) if samples >= self.measure.min_samples => Some(rtt),
            (_, Some(rtt)) => Some(rtt),
            (measured, None) => measured.map(|(rtt, _)| rtt),
        }
    }

    /// A measurement whose latest sample is within `stale_after` of `now`.
    fn fresh(&self, region: usize, now: Instant) -> Option<(Duration, u32)> {
        let e = self.measured[region]?;
        (now.saturating_duration_since(e.last) <= self.measure.stale_after)
            .then(|| (Duration::from_nanos(e.rtt_ns as u64), e.samples))
    }
}

#[cfg(test)]
mod tests;
