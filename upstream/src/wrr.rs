//! Smooth weighted round robin, nginx's algorithm (`ngx_http_upstream_get_peer`):
//! each pick adds every acceptable endpoint's weight to its current weight, takes
//! the endpoint with the largest current weight (ties to the lower index) and
//! subtracts the round's total weight from it. Over any window of `sum(weights)`
//! picks each endpoint gets exactly its weight, spread out rather than in bursts:
//! weights {5, 1, 1} give `a a b a c a a`.
//!
//! Pure state: which endpoints are acceptable comes in as an argument on every
//! pick, and a changed endpoint set is a new `SmoothWrr` swapped in whole.

/// One endpoint's weight and the running "current weight" nginx keeps for it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    weight: i64,
    current: i64,
}

/// The state of smooth weighted round robin over a fixed set of endpoints.
///
/// Two words of stack and 16 bytes per endpoint; a pick is one pass over the
/// endpoints. The caller keeps it behind a `Mutex`: `pick` needs `&mut self`.
#[derive(Clone, Debug)]
pub struct SmoothWrr {
    slots: Box<[Slot]>,
}

impl SmoothWrr {
    /// Endpoint `i` has weight `weights[i]`; weight 0 is never picked.
    pub fn new(weights: &[u32]) -> Self {
        let slots = weights
            .iter()
            .map(|&w| Slot {
                weight: i64::from(w),
                current: 0,
            })
            .collect();
        Self { slots }
    }

    /// How many endpoints (including weight 0) this was built from.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether this was built from no endpoints at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next endpoint among those `ok` accepts, or `None` when no endpoint
    /// with a weight is acceptable. A refused endpoint sits the round out: its
    /// current weight is not advanced and its weight is not in the round's total,
    /// so its turns go to the others in proportion to their weights.
    /// `ok` is not asked about weight 0 endpoints.
    ///
    /// As in nginx, a pick costs the winner the total weight of that round's
    /// acceptable endpoints, so refusals that change from pick to pick favour
    /// whoever wins the cheaper rounds: ties go to the lower index, and with one
    /// of three endpoints refused in a random third of the picks, the first of
    /// two equal-weight endpoints got 12% more picks than the second. Refusals
    /// that last (an open breaker, a failed health check) share exactly.
    pub fn pick(&mut self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.weight == 0 || !ok(i) {
                continue;
            }
            // Saturating: current weights stay within a few times the total
            // weight in practice (see the drift test), but the type must never
            // wrap whatever sequence of refusals the caller produces.
            slot.current = slot.current.saturating_add(slot.weight);
            total = total.saturating_add(slot.weight);
            if slot.current > best_current {
                best_current = slot.current;
                best = Some(i);
            }
        }
        let chosen = best?;
        if let Some(slot) = self.slots.get_mut(chosen) {
            slot.current = slot.current.saturating_sub(total);
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(wrr: &mut SmoothWrr, n: usize, ok: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..n).map(|_| wrr.pick(&ok).expect("a pick")).collect()
    }

    fn counts(seq: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in seq {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn weights_one_to_three_give_exactly_one_to_three() {
        let mut wrr = SmoothWrr::new(&[1, 3]);
        let seq = picks(&mut wrr, 4_000, |_| true);
        assert_eq!(counts(&seq, 2), [1_000, 3_000]);
        // Smooth: every window of sum(weights) = 4 picks holds exactly one 0.
        for window in seq.chunks(4) {
            assert_eq!(window.iter().filter(|&&i| i == 0).count(), 1, "{window:?}");
        }
    }

    /// The sequence from the message of nginx's change "Upstream: smooth weighted
    /// round-robin balancing.": { a, a, b, a, c, a, a }, then the same again.
    #[test]
    fn five_one_one_interleaves_as_nginx_documents() {
        let mut wrr = SmoothWrr::new(&[5, 1, 1]);
        let seq = picks(&mut wrr, 14, |_| true);
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_refused_endpoint_sits_out_and_the_others_share_its_turns() {
        let mut wrr = SmoothWrr::new(&[2, 1, 1]);
        let seq = picks(&mut wrr, 2_000, |i| i != 0);
        assert_eq!(counts(&seq, 3), [0, 1_000, 1_000]);

        // Back in the set, it gets its share again at once.
        let seq = picks(&mut wrr, 4_000, |_| true);
        assert_eq!(counts(&seq, 3), [2_000, 1_000, 1_000]);

        // Its turns go to the others by their weights: 1:3 here.
        let mut wrr = SmoothWrr::new(&[1, 3, 4]);
        let seq = picks(&mut wrr, 4_000, |i| i != 2);
        assert_eq!(counts(&seq, 3), [1_000, 3_000, 0]);
        let seq = picks(&mut wrr, 8_000, |_| true);
        assert_eq!(counts(&seq, 3), [1_000, 3_000, 4_000]);
    }

    #[test]
    fn zero_weights_and_nothing_acceptable_mean_none() {
        assert_eq!(SmoothWrr::new(&[]).pick(|_| true), None);
        assert_eq!(SmoothWrr::new(&[0, 0, 0]).pick(|_| true), None);
        assert_eq!(SmoothWrr::new(&[1, 2]).pick(|_| false), None);

        let mut wrr = SmoothWrr::new(&[0, 4, 0]);
        let asked = std::cell::Cell::new(0);
        let seq = picks(&mut wrr, 10, |i| {
            asked.set(asked.get() + 1);
            i == 1
        });
        assert_eq!(seq, [1; 10]);
        assert_eq!(asked.get(), 10, "weight 0 endpoints are never asked about");
    }

    /// Refusing endpoints at random for a long time does not make current
    /// weights drift: they stay within a small multiple of the total weight.
    #[test]
    fn current_weights_stay_bounded_under_random_refusals() {
        let weights = [7, 1, 3, 100, 1, 20];
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut wrr = SmoothWrr::new(&weights);
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..200_000 {
            let mask = rng.u8(..);
            let _ = wrr.pick(|i| mask & (1 << i) != 0);
            for slot in wrr.slots.iter() {
                assert!(slot.current.abs() <= 4 * total, "{:?}", wrr.slots);
            }
        }
    }
}
