//! Locality: a pool whose endpoints sit in several regions sends each request to
//! the nearest region that can take it, spilling over to farther ones in
//! proportion as the nearer ones lose healthy endpoints (`geo::spillover`).
//!
//! The pool does not know where the client is or how far regions are: the caller
//! passes the regions in order of preference (nearest first) as a [`Locality`]
//! request extension, and reads back where the request went from the [`Served`]
//! response extension. Distances are the caller's business too; the pool only
//! reports the round trips it measures to each region (health probes) through an
//! [`RttObserver`].

use std::sync::Arc;
use std::time::Duration;

/// A region's index in the caller's list of regions (edge-wide, not per pool).
pub type RegionId = u16;

/// Request extension: the regions to serve a request from, nearest first. Regions
/// the pool has no endpoints in are skipped; regions of the pool missing from the
/// list come after it.
#[derive(Clone, Debug)]
pub struct Locality {
    pub order: Arc<[RegionId]>,
}

/// Response extension of a regional pool's answers: the endpoint that answered
/// and its region.
#[derive(Clone, Debug)]
pub struct Served {
    pub endpoint: Arc<str>,
    pub region: RegionId,
}

/// Takes the round trips the pool measures to its endpoints, by region.
pub trait RttObserver: Send + Sync {
    fn observe(&self, region: RegionId, rtt: Duration);
}

/// The regions a request may go to, in the order it should try them: the
/// region the spillover shares drew first, then the others in the order given.
pub(crate) fn preference(
    order: &[RegionId],
    healthy: impl Fn(RegionId) -> (usize, usize),
    overprovisioning: geo::spillover::Overprovisioning,
    rand: f64,
) -> Vec<RegionId> {
    let shares: Vec<f64> = order
        .iter()
        .map(|&r| {
            let (up, total) = healthy(r);
            geo::spillover::healthy_share(up, total)
        })
        .collect();
    let shares = geo::spillover::shares(&shares, overprovisioning);
    let first = geo::spillover::pick_region(&shares, rand).unwrap_or(0);
    let mut out = Vec::with_capacity(order.len());
    if let Some(&r) = order.get(first) {
        out.push(r);
    }
    out.extend(
        order
            .iter()
            .copied()
            .filter(|&r| Some(&r) != order.get(first)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::spillover::Overprovisioning;

    fn counts(order: &[RegionId], health: &[(usize, usize)], n: usize) -> Vec<usize> {
        let mut seen = vec![0; health.len()];
        for k in 0..n {
            let rand = (k as f64 + 0.5) / n as f64;
            let pref = preference(
                order,
                |r| health[r as usize],
                Overprovisioning::default(),
                rand,
            );
            seen[pref[0] as usize] += 1;
        }
        seen
    }

    #[test]
    fn a_healthy_region_keeps_all_its_traffic() {
        assert_eq!(
            counts(&[0, 1, 2], &[(4, 4), (4, 4), (4, 4)], 1000),
            [1000, 0, 0]
        );
        // 3 of 4 is above the 1/1.4 threshold: still all of it.
        assert_eq!(
            counts(&[1, 0, 2], &[(4, 4), (3, 4), (4, 4)], 1000),
            [0, 1000, 0]
        );
    }

    #[test]
    fn half_a_region_spills_the_rest_to_the_next_nearest() {
        // 2 of 4 healthy: 0.5 × 1.4 = 70% stays, 30% goes to the next in order.
        let seen = counts(&[0, 2, 1], &[(2, 4), (4, 4), (4, 4)], 1000);
        assert_eq!(seen, [700, 0, 300]);
    }

    #[test]
    fn a_dead_region_sends_everything_to_the_nearest_healthy_one() {
        let seen = counts(&[0, 1, 2], &[(0, 3), (0, 2), (3, 3)], 1000);
        assert_eq!(seen, [0, 0, 1000]);
    }

    #[test]
    fn the_rest_follows_in_the_given_order() {
        let pref = preference(&[2, 0, 1], |_| (1, 1), Overprovisioning::default(), 0.1);
        assert_eq!(pref, [2, 0, 1]);
        let pref = preference(
            &[2, 0, 1],
            |r| (usize::from(r != 2), 1),
            Overprovisioning::default(),
            0.1,
        );
        assert_eq!(pref, [0, 2, 1]);
    }
}
