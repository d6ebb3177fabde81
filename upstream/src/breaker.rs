//! A circuit breaker per endpoint: a pure state machine over classified outcomes
//! and the caller's `now` (milliseconds on any monotonic clock).
//!
//! Closed: requests flow; `failures` consecutive failures open it. Open: the
//! endpoint gets nothing until the open period ends, then it is half-open. Half-open:
//! one probe at a time; a success closes it, a failure opens it again for longer
//! (the period doubles per consecutive opening, up to `open_max`).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failures: u32,
    /// First open period.
    pub open_base: Duration,
    /// Longest open period.
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// For the metric: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    /// Openings in a row without a close in between: sets the open period.
    openings: u32,
    open_until_ms: u64,
    probe_in_flight: bool,
}

/// What `try_acquire` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send as usual.
    Yes,
    /// Send as the one half-open probe; its outcome decides.
    Probe,
    /// Do not send to this endpoint now.
    No,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: State::Closed,
            consecutive_failures: 0,
            openings: 0,
            open_until_ms: 0,
            probe_in_flight: false,
        }
    }

    pub fn state(&self, now_ms: u64) -> State {
        match self.state {
            State::Open if now_ms >= self.open_until_ms => State::HalfOpen,
            s => s,
        }
    }

    /// Whether a request may go to this endpoint now.
    pub fn try_acquire(&mut self, now_ms: u64) -> Admit {
        match self.state(now_ms) {
            State::Closed => Admit::Yes,
            State::Open => Admit::No,
            State::HalfOpen if self.probe_in_flight => Admit::No,
            State::HalfOpen => {
                self.state = State::HalfOpen;
                self.probe_in_flight = true;
                Admit::Probe
            }
        }
    }

    /// Whether a request could go here now, without claiming a probe.
    pub fn available(&self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => !self.probe_in_flight,
        }
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.openings = 0;
        self.probe_in_flight = false;
    }

    /// Returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now_ms: u64) -> bool {
        self.on_failure_unless_last(now_ms, true)
    }

    /// A failure that may open the breaker only when `may_open`: used for error
    /// answers (5xx) from a reachable endpoint, which must not eject so many
    /// endpoints that the pool falls below its minimum share. The failures still
    /// count, so the breaker opens as soon as it may.
    pub fn on_failure_unless_last(&mut self, now_ms: u64, may_open: bool) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // A failed half-open probe always reopens: that endpoint is out already.
        let open = match self.state(now_ms) {
            State::HalfOpen => true,
            State::Closed => may_open && self.consecutive_failures >= self.cfg.failures,
            State::Open => false,
        };
        self.probe_in_flight = false;
        if open {
            let factor = 1u32 << self.openings.min(16);
            let period = self
                .cfg
                .open_base
                .saturating_mul(factor)
                .min(self.cfg.open_max);
            self.open_until_ms =
                now_ms.saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
            self.openings = self.openings.saturating_add(1);
            self.state = State::Open;
        }
        open
    }

    /// A probe ended without an outcome (the client went away): let another try.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(12),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = breaker();
        assert!(!b.on_failure(0));
        assert!(!b.on_failure(0));
        b.on_success();
        assert!(!b.on_failure(0));
        assert!(!b.on_failure(0));
        assert!(b.on_failure(10), "third consecutive failure opens");
        assert_eq!(b.state(10), State::Open);
        assert_eq!(b.try_acquire(4_999 + 10), Admit::No);
    }

    #[test]
    fn half_open_admits_one_probe_and_its_outcome_decides() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(0);
        }
        assert_eq!(b.state(5_000), State::HalfOpen);
        assert_eq!(b.try_acquire(5_000), Admit::Probe);
        assert_eq!(b.try_acquire(5_001), Admit::No, "one probe at a time");
        assert!(!b.available(5_001));
        b.on_success();
        assert_eq!(b.state(5_002), State::Closed);
        assert_eq!(b.try_acquire(5_002), Admit::Yes);
    }

    #[test]
    fn failed_probes_reopen_for_longer_up_to_the_cap() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(0);
        }
        // 5 s, then 10 s, then capped at 12 s.
        assert_eq!(b.try_acquire(5_000), Admit::Probe);
        assert!(b.on_failure(5_000));
        assert_eq!(b.state(14_999), State::Open);
        assert_eq!(b.try_acquire(15_000), Admit::Probe);
        assert!(b.on_failure(15_000));
        assert_eq!(b.state(26_999), State::Open);
        assert_eq!(b.state(27_000), State::HalfOpen);
        b.on_success();
        for _ in 0..3 {
            b.on_failure(30_000);
        }
        assert_eq!(
            b.state(34_999),
            State::Open,
            "a close resets the period to the base"
        );
        assert_eq!(b.state(35_000), State::HalfOpen);
    }

    #[test]
    fn a_failure_that_may_not_open_still_counts_toward_the_next() {
        let mut b = breaker();
        assert!(!b.on_failure_unless_last(0, false));
        assert!(!b.on_failure_unless_last(0, false));
        assert!(
            !b.on_failure_unless_last(0, false),
            "threshold reached but not allowed"
        );
        assert_eq!(b.state(0), State::Closed);
        assert!(b.on_failure_unless_last(1, true), "opens once allowed");
        assert_eq!(b.try_acquire(5_001), Admit::Probe);
        assert!(
            b.on_failure_unless_last(5_001, false),
            "a failed probe reopens regardless"
        );
    }

    #[test]
    fn an_abandoned_probe_lets_another_one_through() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(0);
        }
        assert_eq!(b.try_acquire(5_000), Admit::Probe);
        b.release_probe();
        assert_eq!(b.try_acquire(5_001), Admit::Probe);
    }
}
