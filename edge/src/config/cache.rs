//! `[cache]`: the HTTP cache's layers, Redis deadline and breaker, coalescing.

use std::time::Duration;

use super::walk::{Cx, Table};
use super::{at_least, positive};

/// The cache settings. Off unless `[cache] enabled = true`; with no `redis` the
/// cache is L1 (memory) only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    pub enabled: bool,
    /// Bytes L1 may hold in all (bodies, headers and keys, roughly).
    pub l1_max_bytes: u64,
    /// Larger entries skip L1.
    pub l1_max_entry_bytes: u64,
    /// Whether the cache uses the shared Redis (`[redis]`) as its L2, when
    /// there is one.
    pub l2: bool,
    /// The older way to name the L2: `redis://host:port[/db]`, the same as
    /// `[redis] url` (with `redis_timeout` and `redis_breaker_*` as its
    /// `timeout` and `breaker_*`).
    pub redis: Option<String>,
    /// Deadline of every Redis call.
    pub redis_timeout: Duration,
    /// Consecutive Redis failures that open the breaker.
    pub redis_breaker_failures: u32,
    /// How long the open breaker skips Redis before one probe.
    pub redis_breaker_cooldown: Duration,
    /// Larger bodies are not written to Redis.
    pub l2_max_entry_bytes: u64,
    /// How long a miss waits for another request's fetch of the same key.
    pub coalesce_timeout: Duration,
    /// No entry is kept longer than this, in either layer.
    pub max_ttl: Duration,
    /// How long a stale entry with a validator is kept for revalidation.
    pub keep_stale: Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            enabled: false,
            l1_max_bytes: 256 * 1024 * 1024,
            l1_max_entry_bytes: 8 * 1024 * 1024,
            l2: true,
            redis: None,
            redis_timeout: Duration::from_millis(50),
            redis_breaker_failures: 5,
            redis_breaker_cooldown: Duration::from_secs(2),
            l2_max_entry_bytes: 8 * 1024 * 1024,
            coalesce_timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
            keep_stale: Duration::from_secs(3_600),
        }
    }
}

pub(super) fn read_cache(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Cache {
    let d = Cache::default();
    let Some(mut t) = root.table(cx, "cache") else {
        return d;
    };
    let redis = t.opt::<String>(cx, "redis");
    if let Some(url) = &redis {
        if !super::redis::valid_url(url) {
            let line = t.line_of(cx, "redis");
            cx.error(
                line,
                &t.path("redis"),
                format!("invalid Redis URL {url:?}; write it like \"redis://127.0.0.1:6379\""),
            );
        }
    }
    let out = Cache {
        enabled: t.or(cx, "enabled", d.enabled),
        l1_max_bytes: t.or(cx, "l1_max_bytes", d.l1_max_bytes),
        l1_max_entry_bytes: t.or(cx, "l1_max_entry_bytes", d.l1_max_entry_bytes),
        l2: t.or(cx, "l2", d.l2),
        redis,
        redis_timeout: positive(cx, &mut t, "redis_timeout", d.redis_timeout),
        redis_breaker_failures: at_least(
            cx,
            &mut t,
            "redis_breaker_failures",
            d.redis_breaker_failures,
            1,
        ),
        redis_breaker_cooldown: positive(
            cx,
            &mut t,
            "redis_breaker_cooldown",
            d.redis_breaker_cooldown,
        ),
        l2_max_entry_bytes: t.or(cx, "l2_max_entry_bytes", d.l2_max_entry_bytes),
        coalesce_timeout: positive(cx, &mut t, "coalesce_timeout", d.coalesce_timeout),
        max_ttl: positive(cx, &mut t, "max_ttl", d.max_ttl),
        keep_stale: t.or(cx, "keep_stale", d.keep_stale),
    };
    t.finish(cx);
    out
}

/// The final statuses a route's cache may store (`cache_statuses` on a
/// route), as a set over 200..=599. The default is RFC 9110 15.1's
/// heuristically cacheable statuses without the errors: an error page with
/// `max-age` (CPDoS) is passed on but not stored unless the operator lists it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheStatuses([u64; 7]);

impl CacheStatuses {
    const FIRST: u16 = 200;
    const LAST: u16 = 599;
    pub const DEFAULT: [u16; 7] = [200, 203, 204, 206, 300, 301, 308];

    /// The set of `list`; `Err` names the first status outside 200..=599.
    pub fn of(list: &[u16]) -> Result<Self, u16> {
        let mut bits = [0u64; 7];
        for &s in list {
            if !(Self::FIRST..=Self::LAST).contains(&s) {
                return Err(s);
            }
            let i = usize::from(s - Self::FIRST);
            bits[i / 64] |= 1 << (i % 64);
        }
        Ok(Self(bits))
    }

    pub fn contains(self, status: u16) -> bool {
        let Some(i) = status.checked_sub(Self::FIRST).map(usize::from) else {
            return false;
        };
        status <= Self::LAST && self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

impl Default for CacheStatuses {
    fn default() -> Self {
        let mut bits = [0u64; 7];
        for s in Self::DEFAULT {
            let i = usize::from(s - Self::FIRST);
            bits[i / 64] |= 1 << (i % 64);
        }
        Self(bits)
    }
}

impl std::fmt::Debug for CacheStatuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = (Self::FIRST..=Self::LAST).filter(|s| self.contains(*s));
        f.debug_set().entries(set).finish()
    }
}

impl super::walk::FromToml for CacheStatuses {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let list = <Vec<u16> as super::walk::FromToml>::from_toml(v)?;
        Self::of(&list).map_err(|s| format!("{s} is not a final status (200-599)"))
    }
}

#[cfg(test)]
mod tests {
    use super::CacheStatuses;

    #[test]
    fn statuses_default_to_the_heuristic_set_without_errors() {
        let d = CacheStatuses::default();
        for s in CacheStatuses::DEFAULT {
            assert!(d.contains(s), "{s}");
        }
        for s in [100, 199, 302, 404, 410, 500, 501, 503, 600, 0, u16::MAX] {
            assert!(!d.contains(s), "{s}");
        }
        let all = CacheStatuses::of(&(200..=599).collect::<Vec<_>>()).expect("in range");
        assert!(all.contains(200) && all.contains(599) && all.contains(404));
        assert_eq!(CacheStatuses::of(&[200, 600]), Err(600));
        assert_eq!(CacheStatuses::of(&[199]), Err(199));
    }
}
