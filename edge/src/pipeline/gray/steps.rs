//! Progressive delivery, pure: a canary starts at the first of its `steps`
//! (percent of the traffic) and moves to the next one at the first healthy
//! judgement of the guard once `after` has passed on the current step. A
//! breach rolls back as always (the guard's business, not this one's). No
//! clock of its own: `now` is the time since the guard started.

use std::time::Duration;

use super::guard::Decision;

#[derive(Debug)]
pub struct Steps {
    steps: Vec<u32>,
    after: Duration,
    /// Index into `steps` of the step in effect; `None` while the weight in
    /// effect is below the first step (set so by the admin API).
    at: Option<usize>,
    /// When the step in effect began.
    since: Duration,
}

impl Steps {
    /// At the first step from `now`. `steps` is non-empty (checked with the config).
    pub fn new(steps: Vec<u32>, after: Duration, now: Duration) -> Self {
        Self {
            steps,
            after,
            at: Some(0),
            since: now,
        }
    }

    /// The canary's weight (percent) of the step in effect.
    #[cfg(test)]
    pub fn weight(&self) -> u32 {
        self.at.map_or(0, |i| self.steps[i])
    }

    /// The step in effect, counted from 1 (0: below the first), and how many there are.
    pub fn position(&self) -> (usize, usize) {
        (self.at.map_or(0, |i| i + 1), self.steps.len())
    }

    /// The guard's latest judgement at `now`: the canary's next weight when it
    /// moves up a step.
    pub fn judged(&mut self, decision: &Decision, now: Duration) -> Option<u32> {
        if *decision != Decision::Healthy || now.saturating_sub(self.since) < self.after {
            return None;
        }
        let next = self.at.map_or(0, |i| i + 1);
        if next >= self.steps.len() {
            return None;
        }
        self.at = Some(next);
        self.since = now;
        Some(self.steps[next])
    }

    /// An operator set the canary's weight to `weight` at `now`: the step in
    /// effect is the highest at or below it, and its period starts afresh.
    pub fn set(&mut self, weight: u32, now: Duration) {
        self.at = self.steps.iter().rposition(|&s| s <= weight);
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_clean_guard_moves_the_canary_up_one_step_per_period() {
        let mut steps = Steps::new(vec![5, 25, 50, 100], s(300), s(0));
        assert_eq!((steps.weight(), steps.position()), (5, (1, 4)));
        assert_eq!(steps.judged(&Decision::Healthy, s(299)), None, "too soon");
        assert_eq!(steps.judged(&Decision::Healthy, s(300)), Some(25));
        assert_eq!(
            steps.judged(&Decision::Healthy, s(301)),
            None,
            "a new period"
        );
        // Too little traffic to judge is no evidence: the step waits for it.
        assert_eq!(steps.judged(&Decision::Wait, s(700)), None);
        assert_eq!(steps.judged(&Decision::Healthy, s(701)), Some(50));
        assert_eq!(steps.judged(&Decision::Healthy, s(1001)), Some(100));
        assert_eq!((steps.weight(), steps.position()), (100, (4, 4)));
        assert_eq!(
            steps.judged(&Decision::Healthy, s(5000)),
            None,
            "the last step"
        );
    }

    #[test]
    fn a_breach_never_moves_a_step() {
        let mut steps = Steps::new(vec![10, 100], s(60), s(0));
        let breach = Decision::Breach {
            version: 1,
            why: super::super::guard::Why::Errors {
                canary: 0.5,
                baseline: 0.0,
            },
        };
        assert_eq!(steps.judged(&breach, s(120)), None);
        assert_eq!(steps.weight(), 10);
    }

    #[test]
    fn an_operator_weight_picks_the_step_and_restarts_its_period() {
        let mut steps = Steps::new(vec![5, 25, 50, 100], s(60), s(0));
        steps.set(30, s(100));
        assert_eq!((steps.weight(), steps.position()), (25, (2, 4)));
        assert_eq!(steps.judged(&Decision::Healthy, s(159)), None);
        assert_eq!(steps.judged(&Decision::Healthy, s(160)), Some(50));
        // Below the first step: the first comes after a clean period.
        steps.set(0, s(200));
        assert_eq!(steps.position(), (0, 4));
        assert_eq!(steps.judged(&Decision::Healthy, s(260)), Some(5));
    }
}
