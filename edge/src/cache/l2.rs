//! L2: the cache's entries in the Redis shared by every edge (`crate::shared`),
//! which puts a deadline and a breaker on every call. Every problem is "not in
//! L2": the caller falls back to L1 and the origin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::Redis;

use super::key::BANS;

pub struct L2 {
    redis: Arc<Redis>,
}

/// What a read found: the raw value and the prefix purges in force.
pub struct Found {
    pub value: Option<Vec<u8>>,
    pub bans: HashMap<String, u64>,
}

impl L2 {
    pub fn new(redis: Arc<Redis>) -> Arc<Self> {
        Arc::new(Self { redis })
    }

    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(crate::shared::Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.redis.call(what, f).await
    }

    /// The value at `key` and the prefix purges. Two commands rather than one
    /// pipeline, because in a Redis Cluster the two keys live in different
    /// slots; on one connection they still go out together.
    pub async fn get(self: &Arc<Self>, key: &str) -> Option<Found> {
        let key = key.to_owned();
        self.call("get", |mut c| async move {
            let mut c2 = c.clone();
            let (mut get, mut hgetall) = (redis::cmd("GET"), redis::cmd("HGETALL"));
            get.arg(&key);
            hgetall.arg(BANS);
            let (value, bans) = tokio::try_join!(
                get.query_async::<Option<Vec<u8>>>(&mut c),
                hgetall.query_async::<HashMap<String, u64>>(&mut c2),
            )?;
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
