use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::ResolveError;

use super::state::{delay, diff, next, MAX_RETRY};
use super::{Discovered, DnsConfig, LookupError, Resolution};
use crate::EndpointAddr;

fn ep(url: &str, weight: u32, priority: u16) -> Discovered {
    Discovered {
        addr: EndpointAddr::parse(url).expect("test URL"),
        weight,
        priority,
    }
}

fn a(last: u8) -> Discovered {
    ep(&format!("http://127.0.0.{last}:8080"), 1, 0)
}

fn failure() -> LookupError {
    LookupError::Query {
        name: "api.internal.".into(),
        record_type: "A",
        source: ResolveError::from("request timed out"),
    }
}

fn state(endpoints: Vec<Discovered>, refreshed_at: Instant, failures: u64) -> Resolution {
    Resolution {
        endpoints: Arc::from(endpoints),
        refreshed_at,
        failures,
        lookups: 0,
        failed_lookups: 0,
    }
}

#[test]
fn records_replace_the_set_sorted_and_reset_failures() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(5);
    let prev = state(vec![a(11)], t0, 3);
    let got = next(&prev, Ok(vec![a(13), a(12), a(13)]), t1);
    assert_eq!(&*got.endpoints, &[a(12), a(13)]);
    assert_eq!(got.refreshed_at, t1);
    assert_eq!(got.failures, 0);
}

#[test]
fn the_same_records_in_another_order_are_the_same_set() {
    let t0 = Instant::now();
    let prev = next(&Resolution::empty(t0), Ok(vec![a(12), a(11)]), t0);
    let t1 = t0 + Duration::from_secs(1);
    let got = next(&prev, Ok(vec![a(11), a(12)]), t1);
    assert!(Arc::ptr_eq(&got.endpoints, &prev.endpoints));
    assert_eq!(got.refreshed_at, t1);
}

#[test]
fn sorting_is_by_priority_then_address_numerically() {
    let t0 = Instant::now();
    let got = next(
        &Resolution::empty(t0),
        Ok(vec![
            ep("http://127.0.0.100:1", 1, 0),
            ep("http://127.0.0.9:1", 1, 1),
            ep("http://127.0.0.20:2", 1, 0),
            ep("http://127.0.0.20:1", 1, 0),
        ]),
        t0,
    );
    let order: Vec<String> = got.endpoints.iter().map(|d| d.addr.to_string()).collect();
    assert_eq!(
        order,
        [
            "http://127.0.0.20:1",
            "http://127.0.0.20:2",
            "http://127.0.0.100:1",
            "http://127.0.0.9:1"
        ]
    );
}

#[test]
fn a_failure_keeps_the_set_and_its_age() {
    let t0 = Instant::now();
    let prev = state(vec![a(11), a(12)], t0, 0);
    let err = failure();
    let once = next(&prev, Err(&err), t0 + Duration::from_secs(1));
    let twice = next(&once, Err(&err), t0 + Duration::from_secs(2));
    assert!(Arc::ptr_eq(&twice.endpoints, &prev.endpoints));
    assert_eq!(twice.refreshed_at, t0);
    assert_eq!((once.failures, twice.failures), (1, 2));
}

#[test]
fn an_empty_answer_does_not_replace_a_non_empty_set() {
    let t0 = Instant::now();
    let prev = state(vec![a(11)], t0, 0);
    let got = next(&prev, Ok(Vec::new()), t0 + Duration::from_secs(1));
    assert_eq!(&*got.endpoints, &[a(11)]);
    assert_eq!(got.refreshed_at, t0);
    assert_eq!(got.failures, 1);
}

#[test]
fn an_empty_answer_replaces_an_empty_set() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(1);
    let prev = state(Vec::new(), t0, 2);
    let got = next(&prev, Ok(Vec::new()), t1);
    assert!(got.endpoints.is_empty());
    assert_eq!((got.refreshed_at, got.failures), (t1, 0));
}

#[test]
fn a_failure_over_an_empty_set_counts_too() {
    let t0 = Instant::now();
    let got = next(&Resolution::empty(t0), Err(&failure()), t0);
    assert!(got.endpoints.is_empty());
    assert_eq!(got.failures, 1);
}

fn cfg(floor: u64, ceiling: u64) -> DnsConfig {
    let mut cfg = DnsConfig::address("api.internal", 80);
    cfg.ttl_floor = Duration::from_secs(floor);
    cfg.ttl_ceiling = Duration::from_secs(ceiling);
    cfg
}

#[test]
fn after_an_answer_the_ttl_is_clamped_to_floor_and_ceiling() {
    let ok = state(vec![a(11)], Instant::now(), 0);
    let c = cfg(1, 300);
    let secs = Duration::from_secs;
    assert_eq!(delay(&c, &ok, Some(secs(0))), secs(1));
    assert_eq!(delay(&c, &ok, Some(secs(30))), secs(30));
    assert_eq!(delay(&c, &ok, Some(secs(86_400))), secs(300));
    assert_eq!(delay(&c, &ok, None), secs(1));
}

#[test]
fn after_failures_the_retry_backs_off_from_the_floor_to_the_cap() {
    let c = cfg(1, 300);
    let waits: Vec<u64> = [1, 2, 3, 4, 5, 6, 7, 100, u64::MAX]
        .into_iter()
        .map(|failures| {
            let res = state(vec![a(11)], Instant::now(), failures);
            delay(&c, &res, Some(Duration::from_secs(60))).as_secs()
        })
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30, 30]);
    assert_eq!(MAX_RETRY, Duration::from_secs(30));
}

#[test]
fn the_retry_cap_is_never_past_the_ceiling_nor_below_the_floor() {
    let failing = state(vec![a(11)], Instant::now(), 10);
    assert_eq!(delay(&cfg(1, 10), &failing, None), Duration::from_secs(10));
    assert_eq!(
        delay(&cfg(60, 600), &failing, None),
        Duration::from_secs(60)
    );
}

#[test]
fn diff_names_added_and_removed_endpoints() {
    let old = [a(11), a(12)];
    let new = [a(12), a(13)];
    let (added, removed) = diff(&old, &new);
    assert_eq!(added, [&a(13)]);
    assert_eq!(removed, [&a(11)]);
    let (added, removed) = diff(&old, &old);
    assert!(added.is_empty() && removed.is_empty());
}
