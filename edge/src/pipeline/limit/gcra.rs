//! GCRA (the generic cell rate algorithm): one number per key, the theoretical
//! arrival time (TAT) of the next request at the steady rate. A request is let
//! through while the TAT it would push forward stays within `tolerance`
//! (`burst` × the emission interval) of now.

use std::sync::atomic::{AtomicU64, Ordering};

/// A rule's GCRA parameters, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Time one request uses up (the period over the rate).
    pub interval: u64,
    /// How far ahead of now the TAT may run: `burst` × `interval`.
    pub tolerance: u64,
}

impl Params {
    pub fn new(interval_ns: u64, burst: u64) -> Self {
        Self {
            interval: interval_ns.max(1),
            tolerance: interval_ns.max(1).saturating_mul(burst.max(1)),
        }
    }
}

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more fit right now; the bucket is full again after `reset` ns.
    Allowed { remaining: u64, reset: u64 },
    /// Over the limit; one more fits after `retry` ns.
    Denied { retry: u64 },
}

/// The decision for a request at `now` given the stored `tat`, and the TAT to
/// store when it is let through.
pub fn decide(tat: u64, now: u64, p: Params) -> (Decision, Option<u64>) {
    let next = tat.max(now).saturating_add(p.interval);
    let ahead = next - now;
    if ahead > p.tolerance {
        (
            Decision::Denied {
                retry: ahead - p.tolerance,
            },
            None,
        )
    } else {
        (
            Decision::Allowed {
                remaining: (p.tolerance - ahead) / p.interval,
                reset: ahead,
            },
            Some(next),
        )
    }
}

/// `decide` on a shared cell, lock-free (compare-and-swap until it sticks).
pub fn decide_on(cell: &AtomicU64, now: u64, p: Params) -> Decision {
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let (d, next) = decide(tat, now, p);
        let Some(next) = next else { return d };
        match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return d,
            Err(current) => tat = current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_steady_rate() {
        // 10/s, burst 5: five at once, the sixth waits one interval (100 ms).
        let p = Params::new(100 * MS, 5);
        let cell = AtomicU64::new(0);
        let now = 1_000 * MS;
        for i in 0..5 {
            match decide_on(&cell, now, p) {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, 4 - i),
                d => panic!("request {i}: {d:?}"),
            }
        }
        assert_eq!(
            decide_on(&cell, now, p),
            Decision::Denied { retry: 100 * MS }
        );
        assert!(matches!(
            decide_on(&cell, now + 100 * MS, p),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(
            decide_on(&cell, now + 100 * MS, p),
            Decision::Denied { .. }
        ));
        // After a full idle burst window, the whole burst is back.
        let later = now + 100 * MS + 500 * MS;
        assert!(matches!(
            decide_on(&cell, later, p),
            Decision::Allowed { remaining: 4, .. }
        ));
    }

    #[test]
    fn a_denied_request_uses_nothing() {
        let p = Params::new(100 * MS, 1);
        let cell = AtomicU64::new(0);
        assert!(matches!(decide_on(&cell, MS, p), Decision::Allowed { .. }));
        let before = cell.load(Ordering::Relaxed);
        assert!(matches!(decide_on(&cell, MS, p), Decision::Denied { .. }));
        assert_eq!(cell.load(Ordering::Relaxed), before);
    }
}
