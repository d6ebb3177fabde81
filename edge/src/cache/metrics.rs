//! The cache's Prometheus series, registered on the edge's registry.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct CacheMetrics {
    requests: IntCounterVec,
    /// `requests` resolved per outcome, indexed by `Outcome as usize`.
    outcomes: Vec<IntCounter>,
    coalesced: IntCounter,
    stored_bytes: IntGaugeVec,
    written_bytes: IntCounterVec,
    redis_errors: IntCounterVec,
}

/// What the cache did for one request (`result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    HitL1,
    HitL2,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 6] = [
        Outcome::HitL1,
        Outcome::HitL2,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HitL1 => "hit_l1",
            Outcome::HitL2 => "hit_l2",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
        }
    }
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let mut m = Self {
            outcomes: Vec::new(),
            requests: IntCounterVec::new(
                Opts::new(
                    "proxy_cache_requests_total",
                    "Cacheable-route requests by what the cache did: hit_l1, hit_l2, miss, stale, revalidated, bypass.",
                ),
                &["result"],
            )?,
            coalesced: IntCounter::new(
                "proxy_cache_coalesced_total",
                "Misses that waited for another request's fetch of the same key.",
            )?,
            stored_bytes: IntGaugeVec::new(
                Opts::new("proxy_cache_stored_bytes", "Bytes held in L1 (weighted size)."),
                &["layer"],
            )?,
            written_bytes: IntCounterVec::new(
                Opts::new(
                    "proxy_cache_written_bytes_total",
                    "Bytes of entries written, by layer (l1, l2).",
                ),
                &["layer"],
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "proxy_cache_redis_errors_total",
                    "L2 entries the cache could not use, by kind (garbage); failed calls are proxy_redis_errors_total.",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.coalesced.clone()))?;
        registry.register(Box::new(m.stored_bytes.clone()))?;
        registry.register(Box::new(m.written_bytes.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        m.outcomes = Outcome::ALL
            .iter()
            .map(|o| m.requests.with_label_values(&[o.as_str()]))
            .collect();
        Ok(m)
    }

    pub fn outcome(&self, o: Outcome) {
        if let Some(c) = self.outcomes.get(o as usize) {
            c.inc();
        }
    }

    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub fn l1_size(&self, bytes: u64) {
        self.stored_bytes
            .with_label_values(&["l1"])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn written(&self, layer: &str, bytes: usize) {
        self.written_bytes
            .with_label_values(&[layer])
            .inc_by(bytes as u64);
    }

    pub fn redis_error(&self, kind: &str) {
        self.redis_errors.with_label_values(&[kind]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_counts_under_its_own_label() {
        let registry = Registry::new();
        let m = CacheMetrics::new(&registry).expect("registers");
        for (i, o) in Outcome::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.outcome(*o);
            }
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            let n = m.requests.with_label_values(&[o.as_str()]).get();
            assert_eq!(n, i as u64 + 1, "{}", o.as_str());
        }
    }
}
