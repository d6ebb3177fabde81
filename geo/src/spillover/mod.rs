//! How much of a client region's traffic each region takes: Envoy's
//! locality-weighted load balancing with overprovisioning, over the regions in
//! order (the client's region first, then the others by distance).
//!
//! A region's health is its healthy share of endpoints times the overprovisioning
//! factor, capped at 1: with the default 1.4, a region with at least 1/1.4 ≈ 71%
//! of its endpoints healthy counts as fully healthy and keeps all its traffic.
//! The first region takes its health's worth of traffic; what it cannot take
//! spills to the next, which takes up to its own health, and so on:
//!
//! ```text
//! share[i] = min(health[i], 1 − (health[0] + … + health[i−1]))
//! ```
//!
//! When the healths add up to less than 1 (too few healthy endpoints anywhere to
//! carry all traffic), each region's share is its health over the total, as
//! Envoy normalises priority load. When no region has a healthy endpoint, all
//! traffic stays with the first region: there is nowhere better to send it, and
//! its own balancer and breakers decide what happens there.

/// The overprovisioning factor: how much headroom a region is assumed to have.
/// At least 1; the default is Envoy's 1.4.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Overprovisioning(f64);

impl Default for Overprovisioning {
    fn default() -> Self {
        Self(1.4)
    }
}

impl Overprovisioning {
    /// A factor of at least 1 (finite).
    pub fn new(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor >= 1.0).then_some(Self(factor))
    }

    /// The factor that makes `threshold` (in (0, 1]) the healthy share at which a
    /// region keeps all its traffic: 0.7 gives 1/0.7 ≈ 1.43.
    pub fn from_threshold(threshold: f64) -> Option<Self> {
        (threshold > 0.0 && threshold <= 1.0).then(|| Self(1.0 / threshold))
    }

    pub fn factor(self) -> f64 {
        self.0
    }

    /// The healthy share at which a region keeps all its traffic.
    pub fn threshold(self) -> f64 {
        1.0 / self.0
    }
}

/// `healthy / total` endpoints, 0 for a region with none.
pub fn healthy_share(healthy: usize, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (healthy.min(total) as f64) / (total as f64)
}

/// The share of traffic each region takes, in the order given, from each region's
/// healthy share of endpoints (clamped to [0, 1]; NaN counts as 0). The shares add
/// up to 1 unless `healthy` is empty.
pub fn shares(healthy: &[f64], over: Overprovisioning) -> Vec<f64> {
    let health: Vec<f64> = healthy
        .iter()
        .map(|&share| {
            let share = if share.is_nan() {
                0.0
            } else {
                share.clamp(0.0, 1.0)
            };
            (share * over.0).min(1.0)
        })
        .collect();
    let total: f64 = health.iter().sum();
    if total <= 0.0 {
        return (0..health.len())
            .map(|i| if i == 0 { 1.0 } else { 0.0 })
            .collect();
    }
    if total < 1.0 {
        return health.iter().map(|h| h / total).collect();
    }
    let mut left = 1.0_f64;
    health
        .iter()
        .map(|&h| {
            let take = h.min(left);
            left -= take;
            take
        })
        .collect()
}

/// The region that a uniform random number `rand` in [0, 1) falls to, in
/// proportion to `shares`; `None` when no region has a share. A `rand` past the
/// shares' sum (rounding) falls to the last region with a share.
pub fn pick_region(shares: &[f64], rand: f64) -> Option<usize> {
    let mut last = None;
    let mut sum = 0.0;
    for (i, &share) in shares.iter().enumerate() {
        if share.is_nan() || share <= 0.0 {
            continue;
        }
        sum += share;
        if rand < sum {
            return Some(i);
        }
        last = Some(i);
    }
    last
}

#[cfg(test)]
mod tests;
