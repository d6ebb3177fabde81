//! The pure part of discovery: which set to publish after an answer, and when to ask
//! again. No I/O and no clock: callers pass `now`.

use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Discovered, DnsConfig, LookupError, Resolution};

/// The longest wait between retries after failures, unless `ttl_ceiling` is shorter.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);

impl Resolution {
    /// No endpoints and no failures: the state before the first answer.
    pub(super) fn empty(now: Instant) -> Self {
        Self {
            endpoints: Arc::from([]),
            refreshed_at: now,
            failures: 0,
            lookups: 0,
            failed_lookups: 0,
        }
    }
}

/// What to publish, given the published state and the latest lookup.
///
/// - Records: they become the set (sorted, deduplicated), `failures` resets, and
///   `refreshed_at` is `now`.
/// - No records (NXDOMAIN, NODATA, SRV targets without addresses): the same when the
///   set is empty; over a non-empty set they count as a failure and the set stays.
/// - A failed lookup: the set and `refreshed_at` stay, `failures` grows.
///
/// An unchanged set keeps its `Arc`, so publishing it again copies nothing.
pub(super) fn next(
    prev: &Resolution,
    answer: Result<Vec<Discovered>, &LookupError>,
    now: Instant,
) -> Resolution {
    match answer {
        Ok(found) if !found.is_empty() || prev.endpoints.is_empty() => {
            let found = normalize(found);
            let endpoints = if *found == *prev.endpoints {
                Arc::clone(&prev.endpoints)
            } else {
                Arc::from(found)
            };
            Resolution {
                endpoints,
                refreshed_at: now,
                failures: 0,
                lookups: prev.lookups + 1,
                failed_lookups: prev.failed_lookups,
            }
        }
        Ok(_) | Err(_) => Resolution {
            endpoints: Arc::clone(&prev.endpoints),
            refreshed_at: prev.refreshed_at,
            failures: prev.failures.saturating_add(1),
            lookups: prev.lookups + 1,
            failed_lookups: prev.failed_lookups + 1,
        },
    }
}

/// How long to wait before the next lookup, after `res` was published.
///
/// After a good answer: its TTL (the floor when it had no records) clamped to
/// [`ttl_floor`, `ttl_ceiling`]. After `n` consecutive failures: `ttl_floor · 2^(n-1)`,
/// capped at [`MAX_RETRY`] or `ttl_ceiling` if shorter, never below `ttl_floor`.
pub(super) fn delay(cfg: &DnsConfig, res: &Resolution, ttl: Option<Duration>) -> Duration {
    let floor = cfg.ttl_floor;
    if res.failures == 0 {
        return ttl.unwrap_or(floor).min(cfg.ttl_ceiling).max(floor);
    }
    // 2^16 times any sane floor is past the cap already; the bound keeps the shift small.
    let doublings = u32::try_from(res.failures - 1).unwrap_or(u32::MAX).min(16);
    floor
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY.min(cfg.ttl_ceiling))
        .max(floor)
}

/// Endpoints in `new` but not in `old`, and in `old` but not in `new`.
pub(super) fn diff<'a>(
    old: &'a [Discovered],
    new: &'a [Discovered],
) -> (Vec<&'a Discovered>, Vec<&'a Discovered>) {
    let added = new.iter().filter(|d| !old.contains(d)).collect();
    let removed = old.iter().filter(|d| !new.contains(d)).collect();
    (added, removed)
}

/// Sorts by priority, then address, and drops exact duplicates, so that the same
/// records in any order give the same set.
fn normalize(mut found: Vec<Discovered>) -> Vec<Discovered> {
    found.sort_by(order);
    found.dedup();
    found
}

fn order(a: &Discovered, b: &Discovered) -> Ordering {
    let ip = |d: &Discovered| d.addr.host.parse::<IpAddr>().ok();
    a.priority
        .cmp(&b.priority)
        .then_with(|| ip(a).cmp(&ip(b)))
        .then_with(|| a.addr.host.cmp(&b.addr.host))
        .then_with(|| a.addr.port.cmp(&b.addr.port))
        .then_with(|| a.addr.tls.cmp(&b.addr.tls))
        .then_with(|| a.weight.cmp(&b.weight))
}
