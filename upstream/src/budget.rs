//! The retry budget: retries may add at most `ratio` of a pool's requests (plus a
//! small floor per second), so a sick pool cannot multiply its own load. Each
//! request deposits `ratio` of a token, each retry spends one; a floor refills
//! `min_per_sec` tokens a second. Lock-free; `now` comes from the caller.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const MILLI: i64 = 1000;

#[derive(Debug)]
pub struct RetryBudget {
    /// Milli-tokens deposited per request.
    deposit: i64,
    /// Milli-tokens refilled per second, whatever the traffic.
    floor_per_sec: i64,
    cap: i64,
    balance: AtomicI64,
    refilled_ms: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32, now_ms: u64) -> Self {
        let deposit = (ratio.clamp(0.0, 1.0) * MILLI as f64) as i64;
        let floor_per_sec = i64::from(min_per_sec) * MILLI;
        // Savings are bounded: ten seconds of floor, or a hundred retries' worth.
        let cap = (floor_per_sec * 10).max(100 * MILLI);
        Self {
            deposit,
            floor_per_sec,
            cap,
            balance: AtomicI64::new(floor_per_sec),
            refilled_ms: AtomicU64::new(now_ms),
        }
    }

    /// Called once per request.
    pub fn deposit(&self) {
        self.add(self.deposit);
    }

    /// Takes one retry's token; false when the budget is spent.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }

    fn refill(&self, now_ms: u64) {
        let last = self.refilled_ms.load(Ordering::Acquire);
        let elapsed = now_ms.saturating_sub(last);
        if elapsed < 10 {
            return;
        }
        if self
            .refilled_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let elapsed = i64::try_from(elapsed).unwrap_or(i64::MAX / MILLI);
            self.add(self.floor_per_sec.saturating_mul(elapsed) / MILLI);
        }
    }

    fn add(&self, milli: i64) {
        let cap = self.cap;
        // fetch_update with an always-Some closure cannot fail.
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + milli).min(cap))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_of_requests() {
        let budget = RetryBudget::new(0.2, 0, 0);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw(0) {
                retries += 1;
            }
        }
        assert_eq!(retries, 200, "20% of 1000 requests");
    }

    #[test]
    fn the_floor_refills_with_time_even_without_traffic() {
        let budget = RetryBudget::new(0.2, 3, 0);
        let spent = (0..10).filter(|_| budget.withdraw(0)).count();
        assert_eq!(spent, 3, "starts with one second of floor");
        assert!(!budget.withdraw(0));
        let refilled = (0..10).filter(|_| budget.withdraw(2_000)).count();
        assert_eq!(refilled, 6, "two seconds later, two seconds of floor");
    }

    #[test]
    fn savings_are_capped() {
        let budget = RetryBudget::new(1.0, 0, 0);
        for _ in 0..10_000 {
            budget.deposit();
        }
        let spent = (0..1000).filter(|_| budget.withdraw(0)).count();
        assert_eq!(spent, 100);
    }
}
