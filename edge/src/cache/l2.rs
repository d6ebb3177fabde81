//! L2: Redis shared by every edge. Every call has a short deadline and goes
//! through a breaker, so Redis down, hung or slow costs a request at most one
//! deadline, and after a few failures nothing at all until a probe succeeds.
//! Errors are counted here and turned into "not available": the caller falls
//! back to L1 and the origin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::key::BANS;
use super::metrics::CacheMetrics;

/// Consecutive failures open the breaker; while open, one probe per cool-down.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
        }
    }

    /// Whether a call may go out now. When open and the cool-down is over, one
    /// call is let through as a probe and the next probe is a cool-down away
    /// (so a probe that never reports back cannot wedge the breaker).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now >= until => {
                self.open_until = Some(now + self.cooldown);
                true
            }
            Some(_) => false,
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// The Redis settings the cache takes.
#[derive(Clone, Debug)]
pub struct L2Config {
    pub url: String,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

pub struct L2 {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: Arc<AtomicBool>,
    timeout: Duration,
    breaker: Mutex<Breaker>,
    metrics: Arc<CacheMetrics>,
}

/// What a read found: the raw value and the prefix purges in force.
pub struct Found {
    pub value: Option<Vec<u8>>,
    pub bans: HashMap<String, u64>,
}

impl L2 {
    pub fn new(
        config: &L2Config,
        metrics: Arc<CacheMetrics>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let l2 = Arc::new(Self {
            client,
            conn: Mutex::new(None),
            connecting: Arc::new(AtomicBool::new(false)),
            timeout: config.timeout,
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_cooldown,
            )),
            metrics,
        });
        l2.connect_in_background();
        Ok(l2)
    }

    /// Connects once in the background; requests skip L2 until it is up. The
    /// connection manager reconnects by itself afterwards.
    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(this.timeout.max(Duration::from_millis(200)))
                .set_response_timeout(this.timeout)
                .set_number_of_retries(1)
                .set_max_delay(1000);
            match this.client.get_connection_manager_with_config(config).await {
                Ok(conn) => {
                    *this.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                    tracing::info!("cache: connected to redis");
                }
                Err(e) => {
                    this.metrics.redis_error("connect");
                    tracing::warn!(error = %e, "cache: cannot connect to redis; L1 only for now");
                }
            }
            this.connecting.store(false, Ordering::SeqCst);
        });
    }

    /// Runs one Redis call under the breaker and the deadline.
    async fn call<T, F, Fut>(self: &Arc<Self>, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let allowed = {
            let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            b.allow(Instant::now())
        };
        if !allowed {
            return None;
        }
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(conn) = conn else {
            // Not connected yet: skip L2. Only a finished, failed connect counts
            // toward the breaker (so start-up under load does not open it).
            if !self.connecting.load(Ordering::SeqCst) {
                self.connect_in_background();
                self.failed("unavailable");
            }
            return None;
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
                b.success();
                self.metrics.breaker_open(b.is_open());
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, what, "cache: redis call failed");
                self.failed("error");
                None
            }
            Err(_) => {
                tracing::debug!(what, "cache: redis call timed out");
                self.failed("timeout");
                None
            }
        }
    }

    fn failed(&self, kind: &'static str) {
        self.metrics.redis_error(kind);
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        b.failure(Instant::now());
        self.metrics.breaker_open(b.is_open());
    }

    /// The value at `key` and the prefix purges, in one round trip.
    pub async fn get(self: &Arc<Self>, key: &str) -> Option<Found> {
        let key = key.to_owned();
        self.call("get", |mut c| async move {
            let (value, bans): (Option<Vec<u8>>, HashMap<String, u64>) = redis::pipe()
                .get(&key)
                .hgetall(BANS)
                .query_async(&mut c)
                .await?;
            Ok(Found { value, bans })
        })
        .await
    }

    pub async fn set(self: &Arc<Self>, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        let key = key.to_owned();
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.call("set", |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }

    pub async fn del(self: &Arc<Self>, key: &str) -> bool {
        let key = key.to_owned();
        self.call("del", |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
        })
        .await
        .is_some()
    }

    /// Takes the cross-edge fetch lock `lock_key` for `ttl`: `Some(true)` taken,
    /// `Some(false)` another edge holds it, `None` Redis did not answer.
    pub async fn lock(self: &Arc<Self>, lock_key: &str, ttl: Duration) -> Option<bool> {
        let lock_key = lock_key.to_owned();
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.call("lock", |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Whether `lock_key` is still held.
    pub async fn locked(self: &Arc<Self>, lock_key: &str) -> Option<bool> {
        let lock_key = lock_key.to_owned();
        self.call("locked", |mut c| async move {
            redis::cmd("EXISTS")
                .arg(&lock_key)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    /// Records a prefix purge at `at_ms`; the list of purges lives as long as the
    /// longest entry could, so it stays bounded by the purges of that window.
    pub async fn ban(self: &Arc<Self>, prefix: &str, at_ms: u64, keep: Duration) -> bool {
        let prefix = prefix.to_owned();
        let keep_ms = keep.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.call("ban", |mut c| async move {
            redis::pipe()
                .hset(BANS, &prefix, at_ms)
                .ignore()
                .cmd("PEXPIRE")
                .arg(BANS)
                .arg(keep_ms)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_per_cooldown() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(5);
        let mut b = Breaker::new(3, cool);
        assert!(b.allow(t0));
        b.failure(t0);
        b.failure(t0);
        assert!(!b.is_open());
        b.failure(t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        // One probe after the cool-down, then closed again until the next one.
        assert!(b.allow(t0 + cool));
        assert!(!b.allow(t0 + cool + Duration::from_millis(1)));
        b.failure(t0 + cool);
        assert!(!b.allow(t0 + cool + Duration::from_secs(1)));
        assert!(b.allow(t0 + cool * 3));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(t0 + cool * 3));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(!b.is_open());
    }
}
