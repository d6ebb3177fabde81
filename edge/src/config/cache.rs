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
    /// `redis://host:port[/db]`; `None` is L1 only.
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
        if !valid_redis_url(url) {
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

/// `redis://[user:password@]host[:port][/db]`: what the redis crate accepts
/// without TLS.
fn valid_redis_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("redis://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    !host.is_empty() && redis::Client::open(url).is_ok()
}
