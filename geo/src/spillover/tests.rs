use super::*;

const EPS: f64 = 1e-9;

fn assert_shares(healthy: &[f64], over: Overprovisioning, expected: &[f64]) {
    let got = shares(healthy, over);
    assert_eq!(got.len(), expected.len(), "{healthy:?}: {got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() < EPS,
            "healthy {healthy:?} → {got:?}, expected {expected:?}"
        );
    }
    if !got.is_empty() {
        let sum: f64 = got.iter().sum();
        assert!((sum - 1.0).abs() < EPS, "{got:?} sums to {sum}");
    }
}

fn default() -> Overprovisioning {
    Overprovisioning::default()
}

#[test]
fn all_healthy_keeps_all_traffic_local() {
    assert_shares(&[1.0, 1.0, 1.0], default(), &[1.0, 0.0, 0.0]);
    assert_shares(&[1.0], default(), &[1.0]);
}

#[test]
fn above_the_threshold_a_region_still_takes_everything() {
    // 3 of 4 healthy: 0.75 × 1.4 = 1.05, capped at 1.
    assert_shares(&[0.75, 1.0], default(), &[1.0, 0.0]);
    // Exactly at 1/1.4 (about 71%).
    assert_shares(&[1.0 / 1.4, 1.0], default(), &[1.0, 0.0]);
}

#[test]
fn two_of_four_local_endpoints_down_spills_thirty_percent() {
    let local = healthy_share(2, 4);
    assert_shares(&[local, 1.0, 1.0], default(), &[0.7, 0.3, 0.0]);
}

#[test]
fn spillover_fills_the_next_regions_in_order() {
    // 0.25 × 1.4 = 0.35 local, 0.25 × 1.4 = 0.35 next, the rest to the third.
    assert_shares(&[0.25, 0.25, 1.0, 1.0], default(), &[0.35, 0.35, 0.3, 0.0]);
    // A sick middle region is skipped over in part.
    assert_shares(&[0.5, 0.1, 1.0], default(), &[0.7, 0.14, 0.16]);
}

#[test]
fn a_whole_region_down_sends_everything_to_the_nearest_healthy() {
    assert_shares(&[0.0, 1.0, 1.0], default(), &[0.0, 1.0, 0.0]);
    assert_shares(&[0.0, 0.0, 1.0], default(), &[0.0, 0.0, 1.0]);
    assert_shares(&[healthy_share(0, 0), 1.0], default(), &[0.0, 1.0]);
}

#[test]
fn too_little_health_anywhere_is_normalised() {
    // Healths 0.14 and 0.28 sum to 0.42: 1/3 and 2/3.
    assert_shares(&[0.1, 0.2], default(), &[1.0 / 3.0, 2.0 / 3.0]);
    assert_shares(&[0.0, 0.5, 0.0], default(), &[0.0, 1.0, 0.0]);
}

#[test]
fn everything_down_keeps_traffic_in_the_first_region() {
    assert_shares(&[0.0, 0.0, 0.0], default(), &[1.0, 0.0, 0.0]);
    assert_shares(&[0.0], default(), &[1.0]);
    assert!(shares(&[], default()).is_empty());
}

#[test]
fn out_of_range_inputs_are_clamped() {
    assert_shares(&[f64::NAN, 2.0], default(), &[0.0, 1.0]);
    assert_shares(&[-1.0, 0.5], default(), &[0.0, 1.0]);
    assert_eq!(healthy_share(5, 4), 1.0);
}

#[test]
fn the_factor_sets_the_threshold() {
    let none = Overprovisioning::new(1.0).expect("valid");
    assert_shares(&[0.9, 1.0], none, &[0.9, 0.1]);
    let seventy = Overprovisioning::from_threshold(0.7).expect("valid");
    assert_shares(&[0.7, 1.0], seventy, &[1.0, 0.0]);
    assert_shares(&[0.35, 1.0], seventy, &[0.5, 0.5]);
    assert!((default().factor() - 1.4).abs() < EPS);
    assert!((default().threshold() - 1.0 / 1.4).abs() < EPS);
    assert_eq!(Overprovisioning::new(0.9), None);
    assert_eq!(Overprovisioning::new(f64::INFINITY), None);
    assert_eq!(Overprovisioning::from_threshold(0.0), None);
    assert_eq!(Overprovisioning::from_threshold(1.1), None);
}

/// Every combination of 0–4 healthy endpoints out of 4 in three regions: shares
/// add up to 1, a region never takes more than its health unless normalised, and
/// each region's share is what the formula says.
#[test]
fn every_combination_over_three_regions_follows_the_formula() {
    let over = default();
    for a in 0..=4 {
        for b in 0..=4 {
            for c in 0..=4 {
                let healthy = [a, b, c].map(|h| healthy_share(h, 4));
                let health = healthy.map(|s| (s * 1.4).min(1.0));
                let total: f64 = health.iter().sum();
                let got = shares(&healthy, over);
                let expected: Vec<f64> = if total == 0.0 {
                    vec![1.0, 0.0, 0.0]
                } else if total < 1.0 {
                    health.iter().map(|h| h / total).collect()
                } else {
                    let mut left = 1.0;
                    health
                        .iter()
                        .map(|&h| {
                            let take = f64::min(h, left);
                            left -= take;
                            take
                        })
                        .collect()
                };
                assert_shares(&healthy, over, &expected);
                if total >= 1.0 {
                    for (g, h) in got.iter().zip(health) {
                        assert!(*g <= h + EPS, "{healthy:?} → {got:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn pick_region_follows_the_cumulative_shares() {
    let s = [0.7, 0.0, 0.3];
    assert_eq!(pick_region(&s, 0.0), Some(0));
    assert_eq!(pick_region(&s, 0.699), Some(0));
    assert_eq!(
        pick_region(&s, 0.7),
        Some(2),
        "a zero share is never picked"
    );
    assert_eq!(pick_region(&s, 0.999_999), Some(2));
    assert_eq!(
        pick_region(&s, 1.5),
        Some(2),
        "past the sum: the last with a share"
    );
    assert_eq!(pick_region(&[0.5, 0.5, 0.0], 1.0), Some(1));
    assert_eq!(pick_region(&[0.0, 0.0], 0.3), None);
    assert_eq!(pick_region(&[], 0.3), None);
    assert_eq!(pick_region(&[f64::NAN, 1.0], 0.1), Some(1));
}

#[test]
fn picks_match_the_shares_over_many_draws() {
    let s = shares(&[0.5, 1.0, 1.0], default());
    let mut rng = fastrand::Rng::with_seed(4);
    let mut hits = [0u32; 3];
    let draws = 100_000;
    for _ in 0..draws {
        let i = pick_region(&s, rng.f64()).expect("a region");
        hits[i] += 1;
    }
    let local = f64::from(hits[0]) / f64::from(draws);
    assert!((local - 0.7).abs() < 0.01, "{hits:?}");
    assert_eq!(hits[2], 0);
}
