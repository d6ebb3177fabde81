//! Replicas sharing one ACME certificate through the shared Redis: the
//! certificate (key and chain) under `edge:acme:cert:ID`, and a lock
//! `edge:acme:lock:ID` (a random token, with a TTL past the order deadline) so
//! that one replica orders while the others wait and pick its result up.
//!
//! Must not: block ordering when Redis is away (each edge then orders for
//! itself, as without Redis), or release a lock another replica holds (the
//! delete compares the token, in one script).

use std::sync::Arc;
use std::time::Duration;

use crate::shared::{Lock, Redis};

/// How often Redis is asked again while it is still connecting at start.
const CONNECT_POLL: Duration = Duration::from_millis(100);
const CONNECT_TRIES: u32 = 30;

pub struct Replicas {
    redis: Arc<Redis>,
    cert_key: String,
    lock: Lock,
}

impl Replicas {
    /// `id` names the certificate (its domains and directory).
    pub fn new(redis: Arc<Redis>, id: &str) -> Self {
        Self {
            lock: Lock::new(redis.clone(), format!("edge:acme:lock:{id}")),
            redis,
            cert_key: format!("edge:acme:cert:{id}"),
        }
    }

    /// The shared certificate (`Some(None)`: none yet); `None` when Redis did
    /// not answer, after waiting out a connection still being made.
    pub async fn cert(&self) -> Option<Option<Vec<u8>>> {
        for _ in 0..CONNECT_TRIES {
            let key = self.cert_key.clone();
            let got = self
                .redis
                .call("acme_cert", |mut c| async move {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                })
                .await;
            if got.is_some() || self.redis.degraded() {
                return got;
            }
            tokio::time::sleep(CONNECT_POLL).await;
        }
        None
    }

    /// Takes the ordering lock for `ttl`: `Some(false)` when another replica
    /// holds it, `None` when Redis did not answer.
    pub async fn lock(&self, ttl: Duration) -> Option<bool> {
        self.lock.acquire(ttl).await
    }

    /// Releases the lock if it is still ours.
    pub async fn unlock(&self) {
        if !self.lock.release().await {
            tracing::warn!("acme: the ordering lock was not released; it expires by itself");
        }
    }

    /// Publishes a new certificate for the other replicas, kept until `ttl`
    /// (its expiry) passes.
    pub async fn publish(&self, pem: &[u8], ttl: Duration) -> bool {
        let (key, pem) = (self.cert_key.clone(), pem.to_vec());
        let secs = ttl.as_secs().max(1);
        self.redis
            .call("acme_publish", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(pem)
                    .arg("EX")
                    .arg(secs)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .is_some()
    }
}
