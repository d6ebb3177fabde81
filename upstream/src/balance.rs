//! Choosing an endpoint: round robin, or (the default) least-request
//! power-of-two-choices over a peak-EWMA of response latency times the requests in
//! flight, so a slow endpoint loses traffic on its own. The choice is pure: costs,
//! candidates and randomness come in as arguments.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How a pool picks among its available endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    /// Smooth weighted round robin (nginx's), weights from config or SRV records.
    WeightedRoundRobin,
    /// Consistent hashing (Maglev) on the request's `HashKey`: the same key goes
    /// to the same endpoint while it is available; only a down endpoint's keys move.
    Maglev,
    /// Power of two choices on peak-EWMA latency × (in flight + 1).
    LeastRequest,
}

/// How fast an idle endpoint's latency estimate fades, so a once-slow endpoint is
/// tried again now and then (and a recovered one wins its traffic back).
pub const DECAY: Duration = Duration::from_secs(10);

/// The estimate a new endpoint starts with.
pub const DEFAULT_RTT: Duration = Duration::from_millis(10);

/// The load signals of one endpoint, updated without locks.
#[derive(Debug)]
pub struct Load {
    pub in_flight: AtomicU32,
    ewma_ns: AtomicU64,
    stamp_ms: AtomicU64,
}

impl Load {
    pub fn new(now_ms: u64) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            stamp_ms: AtomicU64::new(now_ms),
        }
    }

    /// The latency estimate now, faded by the time since the last observation.
    pub fn ewma(&self, now_ms: u64) -> Duration {
        let ns = decayed(
            self.raw_ewma(),
            self.stamp_ms.load(Ordering::Relaxed),
            now_ms,
        );
        Duration::from_nanos(ns as u64)
    }

    fn raw_ewma(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// What picking this endpoint costs: estimate × (requests in flight + 1).
    pub fn cost(&self, now_ms: u64) -> f64 {
        let pending = f64::from(self.in_flight.load(Ordering::Relaxed)) + 1.0;
        decayed(
            self.raw_ewma(),
            self.stamp_ms.load(Ordering::Relaxed),
            now_ms,
        ) * pending
    }

    /// Feeds one response latency (or a failure's time to fail, as a peak).
    pub fn observe(&self, rtt: Duration, now_ms: u64) {
        let prev = self.raw_ewma();
        let stamp = self.stamp_ms.swap(now_ms, Ordering::Relaxed);
        let next = peak_ewma(prev, stamp, rtt.as_nanos() as f64, now_ms);
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }
}

fn decay_weight(since_ms: u64, now_ms: u64) -> f64 {
    let elapsed = now_ms.saturating_sub(since_ms) as f64;
    (-elapsed / DECAY.as_millis() as f64).exp()
}

fn decayed(ewma_ns: f64, stamp_ms: u64, now_ms: u64) -> f64 {
    ewma_ns * decay_weight(stamp_ms, now_ms)
}

/// Peak EWMA: a slower sample is taken at once; faster ones pull the estimate down
/// with a weight that grows with the time since the last sample.
pub fn peak_ewma(prev_ns: f64, prev_ms: u64, sample_ns: f64, now_ms: u64) -> f64 {
    if sample_ns > prev_ns {
        return sample_ns;
    }
    let w = decay_weight(prev_ms, now_ms);
    prev_ns * w + sample_ns * (1.0 - w)
}

/// Power of two choices: two distinct random endpoints among `0..n` that `ok`
/// accepts, the cheaper one wins (ties to the first). Random probing finds them
/// without building a candidate list, so a pick costs the same for 3 or 10,000
/// endpoints; a scan from a random start finds them when few are acceptable.
/// `rand(n)` returns a number in `0..n`.
pub fn pick_p2c(
    n: usize,
    ok: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    mut rand: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let first = sample(n, &ok, &mut rand, None)?;
    match sample(n, &ok, &mut rand, Some(first)) {
        Some(second) if cost(second) < cost(first) => Some(second),
        _ => Some(first),
    }
}

/// Round robin over `0..n` from `start`, skipping what `ok` refuses.
pub fn pick_round_robin(n: usize, start: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start.wrapping_add(k)) % n).find(|&i| ok(i))
}

fn sample(
    n: usize,
    ok: &impl Fn(usize) -> bool,
    rand: &mut impl FnMut(usize) -> usize,
    exclude: Option<usize>,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let usable = |i: usize| Some(i) != exclude && ok(i);
    for _ in 0..8 {
        let i = rand(n);
        if usable(i) {
            return Some(i);
        }
    }
    let start = rand(n);
    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_toward_faster_samples() {
        let ms = 1_000_000.0;
        assert_eq!(peak_ewma(10.0 * ms, 0, 50.0 * ms, 1), 50.0 * ms);
        let after_one_decay = peak_ewma(50.0 * ms, 0, 10.0 * ms, 10_000);
        let expected =
            50.0 * ms / std::f64::consts::E + 10.0 * ms * (1.0 - 1.0 / std::f64::consts::E);
        assert!(
            (after_one_decay - expected).abs() < 1.0,
            "{after_one_decay} vs {expected}"
        );
        assert!(
            peak_ewma(50.0 * ms, 0, 10.0 * ms, 0) > 49.0 * ms,
            "no time, no change"
        );
    }

    #[test]
    fn cost_grows_with_requests_in_flight_and_fades_when_idle() {
        let load = Load::new(0);
        load.observe(Duration::from_millis(100), 0);
        let idle = load.cost(0);
        load.in_flight.store(3, Ordering::Relaxed);
        assert!((load.cost(0) - 4.0 * idle).abs() < 1.0);
        load.in_flight.store(0, Ordering::Relaxed);
        assert!(
            load.cost(30_000) < idle / 10.0,
            "30 s idle fades the estimate"
        );
        assert!(load.ewma(0) >= Duration::from_millis(99));
    }

    #[test]
    fn p2c_keeps_the_cheaper_of_two_distinct_acceptable_endpoints() {
        let costs = [5.0, 1.0, 9.0];
        let cost = |i: usize| costs[i];
        let all = |_: usize| true;
        let mut seq = [0, 1].into_iter();
        assert_eq!(pick_p2c(3, all, cost, |_| seq.next().unwrap_or(0)), Some(1));
        let mut seq = [2, 0].into_iter();
        assert_eq!(pick_p2c(3, all, cost, |_| seq.next().unwrap_or(0)), Some(0));
        // The same index twice is not a second choice.
        let mut seq = [2, 2, 2, 2, 2, 2, 2, 2, 2, 0].into_iter();
        assert_eq!(pick_p2c(3, all, cost, |_| seq.next().unwrap_or(0)), Some(0));
        assert_eq!(pick_p2c(0, all, cost, |_| 0), None);
    }

    #[test]
    fn refused_endpoints_are_never_picked_and_none_means_none() {
        let mut rng = fastrand::Rng::with_seed(1);
        let only_two = |i: usize| i == 2;
        for _ in 0..100 {
            assert_eq!(
                pick_p2c(1000, only_two, |_| 1.0, |n| rng.usize(..n)),
                Some(2)
            );
        }
        assert_eq!(pick_p2c(5, |_| false, |_| 1.0, |n| rng.usize(..n)), None);
        assert_eq!(
            pick_round_robin(4, 6, |i| i != 2),
            Some(3),
            "starts at 6 % 4 = 2, skips it"
        );
        assert_eq!(pick_round_robin(4, 0, |_| false), None);
    }

    /// A slow endpoint among fast ones gets a small share: it wins only while its
    /// estimate has faded, and each request it takes restores the estimate.
    #[test]
    fn a_slow_endpoint_loses_traffic_on_its_own() {
        let loads: Vec<Load> = (0..3).map(|_| Load::new(0)).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut hits = [0u32; 3];
        for step in 0..10_000u64 {
            let now = step; // one request per millisecond, 10 s in all
            let pick =
                pick_p2c(3, |_| true, |i| loads[i].cost(now), |n| rng.usize(..n)).unwrap_or(0);
            hits[pick] += 1;
            let rtt = if pick == 2 { 100 } else { 1 };
            loads[pick].observe(Duration::from_millis(rtt), now);
        }
        let slow_share = f64::from(hits[2]) / 10_000.0;
        assert!(
            slow_share < 0.10,
            "slow endpoint got {slow_share:.3} of requests: {hits:?}"
        );
        assert!(hits[2] > 0, "it is still probed now and then");
    }
}
