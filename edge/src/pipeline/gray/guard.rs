//! The rollback guard's decision, pure: answers (error or not, time to the
//! response head) go into a sliding window per version, and `judge` compares
//! each canary's error rate and p99 with the baseline's. No clock of its own:
//! every call takes `now`, the time since the guard started, so tests drive it
//! with any timeline.

use std::time::Duration;

use crate::config::Guard;

/// Slots the window is cut into; it slides by one slot at a time.
const SLOTS: usize = 10;
/// Latency buckets: bucket `i` holds answers up to `FIRST_US × GROWTH^i` µs.
const BUCKETS: usize = 64;
const FIRST_US: f64 = 100.0;
const GROWTH: f64 = 1.2;

/// One slot's answers for one version.
#[derive(Clone)]
struct Counts {
    requests: u64,
    errors: u64,
    latency: [u32; BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
    }

    /// The upper bound of the bucket holding the 99th percentile.
    fn p99(&self) -> Duration {
        let n: u64 = self.latency.iter().map(|c| u64::from(*c)).sum();
        let rank = (n * 99).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (i, c) in self.latency.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return bucket_bound(i);
            }
        }
        bucket_bound(BUCKETS - 1)
    }

    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    let i = ((us / FIRST_US).ln() / GROWTH.ln()).ceil();
    // Finite and at least 1 here; past the last bucket counts as the last.
    (i as usize).min(BUCKETS - 1)
}

fn bucket_bound(i: usize) -> Duration {
    Duration::from_secs_f64(FIRST_US * GROWTH.powi(i as i32) / 1e6)
}

/// What the guard concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Too few answers on one side to judge.
    Wait,
    Healthy,
    /// Canary `version` is worse than the thresholds allow.
    Breach {
        version: usize,
        why: Why,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    Errors {
        canary: f64,
        baseline: f64,
    },
    Latency {
        canary: Duration,
        baseline: Duration,
    },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Errors { canary, baseline } => write!(
                f,
                "error rate {:.1}% against the baseline's {:.1}%",
                canary * 100.0,
                baseline * 100.0
            ),
            Why::Latency { canary, baseline } => write!(
                f,
                "p99 {} ms against the baseline's {} ms",
                canary.as_millis(),
                baseline.as_millis()
            ),
        }
    }
}

/// The sliding window of one split: `SLOTS` slots per version, version 0 the baseline.
pub struct Window {
    guard: Guard,
    slot_len: Duration,
    /// Per slot: which slot number of the timeline it holds, and its counts by version.
    slots: Vec<(u64, Vec<Counts>)>,
}

impl Window {
    pub fn new(guard: Guard, versions: usize) -> Self {
        let slot_len = (guard.window / SLOTS as u32).max(Duration::from_millis(1));
        Self {
            guard,
            slot_len,
            slots: vec![(0, vec![Counts::default(); versions]); SLOTS],
        }
    }

    fn slot_no(&self, now: Duration) -> u64 {
        (now.as_nanos() / self.slot_len.as_nanos()) as u64
    }

    /// One answer of `version` at `now`.
    pub fn record(&mut self, now: Duration, version: usize, error: bool, latency: Duration) {
        let no = self.slot_no(now);
        let versions = self.slots[0].1.len();
        let slot = &mut self.slots[(no % SLOTS as u64) as usize];
        if slot.0 != no {
            *slot = (no, vec![Counts::default(); versions]);
        }
        let Some(c) = slot.1.get_mut(version) else {
            return;
        };
        c.requests += 1;
        c.errors += u64::from(error);
        c.latency[bucket_of(latency)] += 1;
    }

    /// Each version's answers in the window ending at `now`.
    fn totals(&self, now: Duration) -> Vec<Counts> {
        let no = self.slot_no(now);
        let mut out = vec![Counts::default(); self.slots[0].1.len()];
        for (slot_no, counts) in &self.slots {
            if *slot_no + (SLOTS as u64) > no && *slot_no <= no {
                for (o, c) in out.iter_mut().zip(counts) {
                    o.add(c);
                }
            }
        }
        out
    }

    /// Compares every canary with the baseline over the window ending at `now`.
    pub fn judge(&self, now: Duration) -> Decision {
        let totals = self.totals(now);
        let Some((baseline, canaries)) = totals.split_first() else {
            return Decision::Wait;
        };
        let g = &self.guard;
        let mut waiting = baseline.requests < g.min_requests;
        for (i, canary) in canaries.iter().enumerate() {
            if canary.requests < g.min_requests || baseline.requests < g.min_requests {
                waiting = true;
                continue;
            }
            let (c, b) = (canary.error_rate(), baseline.error_rate());
            if c.max(g.error_floor) > g.max_error_ratio * b.max(g.error_floor) {
                let why = Why::Errors {
                    canary: c,
                    baseline: b,
                };
                return Decision::Breach {
                    version: i + 1,
                    why,
                };
            }
            let (c, b) = (canary.p99(), baseline.p99());
            let floor = g.latency_floor;
            if c.max(floor).as_secs_f64() > g.max_p99_ratio * b.max(floor).as_secs_f64() {
                let why = Why::Latency {
                    canary: c,
                    baseline: b,
                };
                return Decision::Breach {
                    version: i + 1,
                    why,
                };
            }
        }
        if waiting {
            Decision::Wait
        } else {
            Decision::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            min_requests: 100,
            window: Duration::from_secs(10),
            ..Guard::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// `n` answers per version spread over one second from `start`, every
    /// `error_every`th of the canary an error, canary latency `slow`.
    fn load(w: &mut Window, start: Duration, n: u32, error_every: u32, slow: Duration) {
        for k in 0..n {
            let now = start + Duration::from_secs(1) * k / n;
            w.record(now, 0, false, 5 * MS);
            let error = error_every > 0 && k % error_every == 0;
            w.record(now, 1, error, slow);
        }
    }

    #[test]
    fn waits_for_min_requests_on_both_sides() {
        let mut w = Window::new(guard(), 2);
        load(&mut w, Duration::ZERO, 99, 1, 5 * MS);
        assert_eq!(w.judge(Duration::from_secs(1)), Decision::Wait);
        w.record(Duration::from_secs(1), 1, true, MS);
        w.record(Duration::from_secs(1), 0, false, MS);
        assert!(matches!(
            w.judge(Duration::from_secs(1)),
            Decision::Breach { version: 1, .. }
        ));
    }

    #[test]
    fn a_fifth_of_errors_is_a_breach_and_a_similar_canary_is_not() {
        let mut w = Window::new(guard(), 2);
        load(&mut w, Duration::ZERO, 300, 5, 5 * MS);
        match w.judge(Duration::from_secs(1)) {
            Decision::Breach {
                version: 1,
                why: Why::Errors { canary, baseline },
            } => {
                assert!((canary - 0.2).abs() < 0.01, "{canary}");
                assert_eq!(baseline, 0.0);
            }
            other => panic!("{other:?}"),
        }
        let mut w = Window::new(guard(), 2);
        // One error in 300 stays under the floor.
        load(&mut w, Duration::ZERO, 300, 300, 6 * MS);
        assert_eq!(w.judge(Duration::from_secs(1)), Decision::Healthy);
    }

    #[test]
    fn a_slower_canary_breaches_on_p99_but_jitter_under_the_floor_does_not() {
        let mut w = Window::new(guard(), 2);
        load(&mut w, Duration::ZERO, 300, 0, 305 * MS);
        match w.judge(Duration::from_secs(1)) {
            Decision::Breach {
                version: 1,
                why: Why::Latency { canary, baseline },
            } => {
                assert!(canary >= 300 * MS && canary < 400 * MS, "{canary:?}");
                assert!(baseline < 7 * MS, "{baseline:?}");
            }
            other => panic!("{other:?}"),
        }
        let mut w = Window::new(guard(), 2);
        // Three times slower, but both under the 20 ms floor.
        load(&mut w, Duration::ZERO, 300, 0, 15 * MS);
        assert_eq!(w.judge(Duration::from_secs(1)), Decision::Healthy);
    }

    #[test]
    fn old_answers_slide_out_of_the_window() {
        let mut w = Window::new(guard(), 2);
        load(&mut w, Duration::ZERO, 300, 2, 5 * MS);
        assert!(matches!(
            w.judge(Duration::from_secs(1)),
            Decision::Breach { .. }
        ));
        // Eleven seconds on, the bad second is gone: too few answers to judge.
        assert_eq!(w.judge(Duration::from_secs(12)), Decision::Wait);
        load(&mut w, Duration::from_secs(12), 300, 0, 5 * MS);
        assert_eq!(w.judge(Duration::from_secs(13)), Decision::Healthy);
    }

    #[test]
    fn the_p99_is_the_bucket_bound_of_the_99th_answer() {
        let mut c = Counts::default();
        for _ in 0..98 {
            c.latency[bucket_of(MS)] += 1;
        }
        c.latency[bucket_of(100 * MS)] += 2;
        let p99 = c.p99();
        assert!(p99 >= 100 * MS && p99 < 121 * MS, "{p99:?}");
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }
}
