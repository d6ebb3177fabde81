use super::*;

const MS: Duration = Duration::from_millis(1);

fn r(id: &str) -> Region {
    Region::from(id)
}

/// a–b 10 ms, a–c 50 ms, b–c 20 ms, c→d 30 ms (d–a and d–b unknown), local a.
fn four() -> Topology {
    Topology::new(
        r("a"),
        ["a", "b", "c", "d"].map(r),
        [
            (r("a"), r("b"), 10 * MS),
            (r("a"), r("c"), 50 * MS),
            (r("b"), r("c"), 20 * MS),
            (r("c"), r("d"), 30 * MS),
        ],
        Measure::default(),
    )
    .expect("valid")
}

fn order(t: &Topology, from: &str, now: Instant) -> Vec<(String, Duration)> {
    t.nearest(&r(from), now)
        .into_iter()
        .map(|(region, d)| (region.to_string(), d))
        .collect()
}

fn names(t: &Topology, from: &str, now: Instant) -> Vec<String> {
    order(t, from, now).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn configured_distances_order_regions_from_the_client_region() {
    let t = four();
    let now = Instant::now();
    assert_eq!(
        order(&t, "a", now),
        [
            ("a".into(), Duration::ZERO),
            ("b".into(), 10 * MS),
            ("c".into(), 50 * MS),
            ("d".into(), Duration::MAX),
        ],
        "unknown distances come last"
    );
    assert_eq!(
        names(&t, "c", now),
        ["c", "b", "d", "a"],
        "one direction stands for both"
    );
    assert_eq!(
        names(&t, "d", now),
        ["d", "c", "a", "b"],
        "ties in configured order"
    );
    assert_eq!(
        names(&t, "elsewhere", now),
        names(&t, "a", now),
        "unknown: from the edge's own"
    );
    assert_eq!(t.distance(&r("b"), &r("c"), now), Some(20 * MS));
    assert_eq!(t.distance(&r("a"), &r("d"), now), None);
    assert_eq!(t.local(), &r("a"));
    assert_eq!(t.regions().len(), 4);
}

#[test]
fn a_direction_given_on_its_own_is_kept() {
    let t = Topology::new(
        r("a"),
        ["a", "b"].map(r),
        [(r("a"), r("b"), 10 * MS), (r("b"), r("a"), 30 * MS)],
        Measure::default(),
    )
    .expect("valid");
    let now = Instant::now();
    assert_eq!(t.distance(&r("a"), &r("b"), now), Some(10 * MS));
    assert_eq!(t.distance(&r("b"), &r("a"), now), Some(30 * MS));
}

#[test]
fn measurement_takes_over_after_enough_samples() {
    let mut t = four();
    let start = Instant::now();
    // The configuration says c is far (50 ms); it measures at 5 ms.
    for k in 0..4 {
        t.observe(&r("c"), 5 * MS, start + k * MS).expect("known");
        assert_eq!(
            names(&t, "a", start + k * MS),
            ["a", "b", "c", "d"],
            "{} samples",
            k + 1
        );
    }
    t.observe(&r("c"), 5 * MS, start + 4 * MS).expect("known");
    let now = start + 5 * MS;
    assert_eq!(names(&t, "a", now), ["a", "c", "b", "d"]);
    assert_eq!(t.distance(&r("a"), &r("c"), now), Some(5 * MS));
    assert_eq!(
        t.distance(&r("c"), &r("a"), now),
        Some(5 * MS),
        "a round trip is symmetric"
    );
    assert_eq!(
        t.distance(&r("b"), &r("c"), now),
        Some(20 * MS),
        "not from the edge: configured"
    );
    assert_eq!(t.measured(&r("c")), Some((5 * MS, 5)));
}

#[test]
fn the_average_weighs_each_sample_by_the_configured_weight() {
    let mut t = four();
    let now = Instant::now();
    t.observe(&r("b"), 100 * MS, now).expect("known");
    t.observe(&r("b"), 50 * MS, now).expect("known");
    assert_eq!(
        t.measured(&r("b")),
        Some((90 * MS, 2)),
        "100 + 0.2 × (50 − 100)"
    );
    assert_eq!(t.measured(&r("c")), None);
}

#[test]
fn a_stale_measurement_falls_back_and_the_next_sample_starts_afresh() {
    let mut t = four();
    let start = Instant::now();
    for k in 0..10 {
        t.observe(&r("c"), 5 * MS, start + k * MS).expect("known");
    }
    let last = start + 9 * MS;
    let stale = Measure::default().stale_after;
    assert_eq!(
        t.distance(&r("a"), &r("c"), last + stale),
        Some(5 * MS),
        "just fresh"
    );
    let later = last + stale + MS;
    assert_eq!(
        t.distance(&r("a"), &r("c"), later),
        Some(50 * MS),
        "stale: configured"
    );
    t.observe(&r("c"), 7 * MS, later).expect("known");
    assert_eq!(t.measured(&r("c")), Some((7 * MS, 1)), "a new average");
    assert_eq!(
        t.distance(&r("a"), &r("c"), later),
        Some(50 * MS),
        "one sample is not enough"
    );
}

#[test]
fn a_young_measurement_beats_knowing_nothing() {
    let mut t = four();
    let now = Instant::now();
    assert_eq!(t.distance(&r("a"), &r("d"), now), None);
    t.observe(&r("d"), 3 * MS, now).expect("known");
    assert_eq!(t.distance(&r("a"), &r("d"), now), Some(3 * MS));
    assert_eq!(names(&t, "a", now), ["a", "d", "b", "c"]);
    let stale = now + Measure::default().stale_after + MS;
    assert_eq!(t.distance(&r("a"), &r("d"), stale), None);
}

#[test]
fn the_edges_own_region_is_measured_too_and_still_listed_first() {
    let mut t = four();
    let now = Instant::now();
    for _ in 0..5 {
        t.observe(&r("a"), 40 * MS, now).expect("known");
    }
    assert_eq!(order(&t, "a", now)[0], ("a".into(), 40 * MS));
    assert_eq!(names(&t, "a", now), ["a", "b", "c", "d"]);
}

#[test]
fn bad_configuration_and_unknown_regions_are_refused() {
    let m = Measure::default();
    let err = Topology::new(r("a"), ["a", "b", "a"].map(r), [], m).expect_err("duplicate");
    assert_eq!(err, TopologyError::Duplicate(r("a")));
    let err = Topology::new(r("x"), ["a"].map(r), [], m).expect_err("local unknown");
    assert_eq!(err, TopologyError::UnknownRegion(r("x")));
    let err = Topology::new(r("a"), ["a"].map(r), [(r("a"), r("z"), MS)], m).expect_err("matrix");
    assert_eq!(
        err.to_string(),
        "region z is not among the configured regions"
    );
    for weight in [0.0, 1.5, f64::NAN] {
        let bad = Measure { weight, ..m };
        let err = Topology::new(r("a"), ["a"].map(r), [], bad).expect_err("weight");
        assert!(matches!(err, TopologyError::Weight(_)), "{err}");
    }
    let mut t = four();
    let err = t.observe(&r("z"), MS, Instant::now()).expect_err("unknown");
    assert_eq!(err, TopologyError::UnknownRegion(r("z")));
}
