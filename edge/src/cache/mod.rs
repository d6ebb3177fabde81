//! The HTTP cache: an in-memory L1 (moka, bounded by bytes, TinyLFU admission)
//! over an optional Redis L2 shared by every edge, with RFC 9111 semantics.
//!
//! The pipeline hands `serve` a request that is already fit for the upstream
//! (forwarding headers set, unkeyed headers stripped) and gets back a response
//! with `Cache-Status` (RFC 9211). Correctness comes before hit rate: whatever
//! `policy` does not allow is forwarded, and every Redis problem becomes
//! "not in L2". The store lives outside `Proxy`, so a reload keeps it; changes to
//! `[cache]` take effect on restart.
//!
//! What it must not do: hold a whole body it was not asked to store, wait on
//! Redis longer than its deadline, or share an entry between two keys.

mod coalesce;
pub mod entry;
mod flow;
pub mod key;
mod l2;
mod metrics;
pub mod policy;
mod range;
mod tee;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, CONTENT_LOCATION, LOCATION};
use http::HeaderMap;

pub use coalesce::Coalescer;
pub use metrics::CacheMetrics;
pub use tee::Tee;

use crate::config;
use coalesce::Leader;
use entry::{Entry, Record, VaryList};
use l2::L2;

/// Request headers that change what many origins answer but are not part of the
/// key: stripped from cacheable requests so nobody can poison an entry with them.
/// X-Forwarded-Host and -Proto are then set by the pipeline from the keyed Host
/// and the listener's scheme, even behind a trusted proxy.
pub const UNKEYED: [HeaderName; 11] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-host"),
];

/// Removes [`UNKEYED`] headers.
pub fn strip_unkeyed(headers: &mut HeaderMap) {
    for name in &UNKEYED {
        headers.remove(name);
    }
}

/// The device token this cache announces in `Surrogate-Capability`, and whose
/// `Surrogate-Control` directives (`max-age=60;edge`) it takes as its own.
pub const SURROGATE_TOKEN: &str = "edge";

/// Tells the origin a surrogate cache is on the way (Edge Architecture 1.0):
/// `Surrogate-Capability: edge="Surrogate/1.0"`, after any a surrogate in front
/// of this edge announced.
pub fn announce_surrogate(headers: &mut HeaderMap) {
    headers.append(
        HeaderName::from_static("surrogate-capability"),
        http::HeaderValue::from_static("edge=\"Surrogate/1.0\""),
    );
}

/// How many keys are remembered as uncacheable, and for how long.
const UNCACHEABLE_KEYS: u64 = 100_000;
const UNCACHEABLE_FOR: Duration = Duration::from_secs(30);

/// Per-route cache settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteCache {
    /// Store responses carrying Set-Cookie (the cookie itself is never stored).
    pub set_cookie: bool,
    /// The statuses that may be stored (`cache_statuses`).
    pub statuses: crate::config::CacheStatuses,
}

/// Which layer answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    L1,
    L2,
}

/// One L1 value with the time it may stay.
#[derive(Clone)]
struct Slot {
    record: Record,
    ttl: Duration,
}

struct SlotExpiry;

impl moka::Expiry<String, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &String, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    /// A refreshed entry (after a 304 or a new fetch) gets its own time, not
    /// what was left of the old one.
    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

pub struct Cache {
    /// Synchronous, so a copy can be put in L1 inside the body's poll, before
    /// the client sees the end of the response.
    l1: moka::sync::Cache<String, Slot>,
    l1_max_entry: u64,
    l2: Option<Arc<L2>>,
    l2_max_entry: u64,
    coalescer: Coalescer,
    coalesce_timeout: Duration,
    max_ttl: Duration,
    keep_stale: Duration,
    /// Keys whose last answer was not storable: their misses are not coalesced
    /// (as Varnish's hit-for-miss), so uncacheable pages are never queued
    /// behind each other. Still looked up and stored if that changes.
    uncacheable: moka::sync::Cache<String, ()>,
    /// Prefix purges made here (prefix → ms), also written to Redis for the others.
    bans: Mutex<HashMap<String, u64>>,
    metrics: Arc<CacheMetrics>,
}

/// What a lookup found: the entry that matches the request, and the Vary list
/// at the key (reused when storing a new variant).
#[derive(Default)]
struct Lookup {
    entry: Option<(Arc<Entry>, Layer)>,
    vary: Option<Arc<VaryList>>,
}

pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cache {
    /// The store; `redis` is its L2, `None` for L1 only.
    pub fn new(
        c: &config::Cache,
        redis: Option<Arc<crate::shared::Redis>>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(CacheMetrics::new(registry).map_err(|e| format!("metrics: {e}"))?);
        let l2 = redis.map(L2::new);
        let l1 = moka::sync::Cache::builder()
            .max_capacity(c.l1_max_bytes)
            .weigher(|_: &String, s: &Slot| u32::try_from(s.record.weight()).unwrap_or(u32::MAX))
            .expire_after(SlotExpiry)
            .support_invalidation_closures()
            .build();
        Ok(Arc::new(Self {
            l1,
            l1_max_entry: c.l1_max_entry_bytes,
            l2,
            l2_max_entry: c.l2_max_entry_bytes,
            coalescer: Coalescer::default(),
            uncacheable: moka::sync::Cache::builder()
                .max_capacity(UNCACHEABLE_KEYS)
                .time_to_live(UNCACHEABLE_FOR)
                .build(),
            coalesce_timeout: c.coalesce_timeout,
            max_ttl: c.max_ttl,
            keep_stale: c.keep_stale,
            bans: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// Refreshes the gauges read at scrape time.
    /// L1's entries and bytes now, for `/status`.
    pub fn l1_usage(&self) -> (u64, u64) {
        (self.l1.entry_count(), self.l1.weighted_size())
    }

    pub fn refresh_metrics(&self) {
        self.metrics.l1_size(self.l1.weighted_size());
    }

    /// The largest body any layer would keep: bodies above it are not buffered.
    fn store_bound(&self) -> u64 {
        let l2 = if self.l2.is_some() {
            self.l2_max_entry
        } else {
            0
        };
        self.l1_max_entry.max(l2)
    }

    async fn lookup(&self, key: &str, req: &HeaderMap) -> Lookup {
        self.lookup_in(key, req, true).await
    }

    /// As `lookup`; `l2 = false` looks in L1 only.
    async fn lookup_in(&self, key: &str, req: &HeaderMap, l2: bool) -> Lookup {
        let Some((record, layer)) = self.get(key, l2).await else {
            return Lookup::default();
        };
        match record {
            Record::Response(e) if e.vary.is_empty() => Lookup {
                entry: Some((e, layer)),
                vary: None,
            },
            Record::Response(_) => Lookup::default(),
            Record::Vary(list) => {
                let values = vary_values(&list.names, req);
                let vk = key::variant(key, list.generation, &values);
                let entry = match self.get(&vk, l2).await {
                    Some((Record::Response(e), layer)) if e.vary == values => Some((e, layer)),
                    _ => None,
                };
                Lookup {
                    entry,
                    vary: Some(list),
                }
            }
        }
    }

    /// One key from L1, else (when `l2`) from L2, filling L1.
    async fn get(&self, key: &str, l2: bool) -> Option<(Record, Layer)> {
        if let Some(slot) = self.l1.get(key) {
            return Some((slot.record, Layer::L1));
        }
        if !l2 {
            return None;
        }
        let found = self.l2.as_ref()?.get(&key::redis_key(key)).await?;
        let record = match entry::decode(&found.value?) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.redis_error("garbage");
                tracing::warn!(key, error = %e, "cache: unreadable L2 entry treated as a miss");
                return None;
            }
        };
        let stored_at = match &record {
            Record::Response(e) => e.stored_at_ms,
            Record::Vary(v) => v.stored_at_ms,
        };
        if self.banned(key, stored_at, &found.bans) {
            return None;
        }
        let ttl = self.retention(&record);
        if record.weight() <= self.l1_max_entry {
            let slot = Slot {
                record: record.clone(),
                ttl,
            };
            self.l1.insert(key.to_owned(), slot);
        }
        Some((record, Layer::L2))
    }

    fn banned(&self, key: &str, stored_at_ms: u64, remote: &HashMap<String, u64>) -> bool {
        let hit =
            |(prefix, at): (&String, &u64)| key.starts_with(prefix.as_str()) && stored_at_ms <= *at;
        remote.iter().any(hit)
            || self
                .bans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(hit)
    }

    fn retention(&self, record: &Record) -> Duration {
        match record {
            Record::Response(e) => Duration::from_secs(policy::retention(
                e.status.as_u16(),
                &e.headers,
                e.times,
                unix_now(),
                self.keep_stale.as_secs(),
                self.max_ttl.as_secs(),
            )),
            Record::Vary(_) => self.max_ttl,
        }
    }

    /// Stores a response in every layer that takes its size. The leader (if any)
    /// is released once L1 holds it, before the slower L2 write.
    async fn store(
        &self,
        key: &str,
        entry: Entry,
        names: Vec<String>,
        seen: Option<Arc<VaryList>>,
        leader: Option<Leader>,
    ) {
        let mut leader = leader;
        let release = leader.as_mut().and_then(Leader::take_release);
        let writes = self.store_l1(key, entry, names, seen);
        drop(leader);
        self.store_l2(writes).await;
        // Other edges wait on the lock until the entry is in Redis.
        if let Some(release) = release {
            release();
        }
    }

    /// Puts a response (and its Vary list) in L1 when it fits; returns the
    /// records for [`Cache::store_l2`].
    fn store_l1(
        &self,
        key: &str,
        entry: Entry,
        names: Vec<String>,
        seen: Option<Arc<VaryList>>,
    ) -> Vec<(String, Record)> {
        let entry = Arc::new(entry);
        let mut writes = Vec::with_capacity(2);
        if names.is_empty() {
            writes.push((key.to_owned(), Record::Response(entry)));
        } else {
            let list = match seen {
                Some(l) if l.names == names => l,
                _ => Arc::new(VaryList {
                    names,
                    generation: fastrand::u64(..),
                    stored_at_ms: unix_now_ms(),
                }),
            };
            let vk = key::variant(key, list.generation, &entry.vary);
            writes.push((vk, Record::Response(entry)));
            writes.push((key.to_owned(), Record::Vary(list)));
        }
        for (k, record) in &writes {
            let weight = record.weight();
            if weight <= self.l1_max_entry {
                let ttl = self.retention(record);
                let slot = Slot {
                    record: record.clone(),
                    ttl,
                };
                self.l1.insert(k.clone(), slot);
                self.metrics.written("l1", weight as usize);
            }
        }
        writes
    }

    /// Writes records to Redis, those within the L2 size bound.
    async fn store_l2(&self, writes: Vec<(String, Record)>) {
        let Some(l2) = &self.l2 else { return };
        for (k, record) in writes {
            let fits = match &record {
                Record::Response(e) => e.body.len() as u64 <= self.l2_max_entry,
                Record::Vary(_) => true,
            };
            if fits {
                let raw = entry::encode(&record);
                let len = raw.len();
                if l2
                    .set(&key::redis_key(&k), raw, self.retention(&record))
                    .await
                {
                    self.metrics.written("l2", len);
                }
            }
        }
    }

    /// Drops what is stored for one primary key (and so all its variants) in
    /// both layers.
    pub async fn purge_key(&self, key: &str) {
        self.l1.invalidate(key);
        if let Some(l2) = &self.l2 {
            l2.del(&key::redis_key(key)).await;
        }
    }

    /// Drops every key starting with `prefix`: from L1 now, from L2 through a
    /// purge record every edge checks on L2 reads.
    pub async fn purge_prefix(&self, prefix: &str) -> Result<(), String> {
        let now = unix_now_ms();
        {
            let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
            let oldest = now.saturating_sub(self.max_ttl.as_millis() as u64);
            bans.retain(|_, at| *at >= oldest);
            bans.insert(prefix.to_owned(), now);
        }
        let p = prefix.to_owned();
        self.l1
            .invalidate_entries_if(move |k, _| k.starts_with(&p))
            .map_err(|e| e.to_string())?;
        if let Some(l2) = &self.l2 {
            if !l2.ban(prefix, now, self.max_ttl).await {
                return Err("purged here; redis did not record it for the other edges".into());
            }
        }
        Ok(())
    }

    /// After an unsafe method succeeded: its target, and Location /
    /// Content-Location on the same origin (RFC 9111 4.4).
    async fn invalidate(&self, key: &str, resp: &HeaderMap) {
        self.purge_key(key).await;
        let origin = origin_of(key);
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(v) = resp.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let other = if v.starts_with('/') {
                Some(format!("{origin}{v}"))
            } else {
                key::from_url(v)
            };
            if let Some(other) = other.filter(|o| origin_of(o) == origin) {
                self.purge_key(&other).await;
            }
        }
    }
}

/// `scheme://host:port` of a key.
fn origin_of(key: &str) -> &str {
    let after_scheme = key.find("://").map_or(0, |i| i + 3);
    match key[after_scheme..].find('/') {
        Some(i) => &key[..after_scheme + i],
        None => key,
    }
}

fn vary_values(names: &[String], req: &HeaderMap) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|n| (n.clone(), policy::vary_value(req, n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_of_a_key() {
        assert_eq!(origin_of("https://e.x:443/a/b?c"), "https://e.x:443");
        assert_eq!(origin_of("https://e.x:443"), "https://e.x:443");
    }
}
