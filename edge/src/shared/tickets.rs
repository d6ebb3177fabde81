//! Session ticket keys shared by every replica through Redis
//! (`tls.ticket_keys = "redis"`), so a session made on one edge resumes on
//! any other.
//!
//! The set lives under `edge:tls:ticket_keys` as text: `v1 ROTATED_AT` (Unix
//! seconds), then one key per line (64 hex digits): the next key, the current
//! one, the previous one. The current key encrypts; all three decrypt. Every
//! `ticket_rotation`, one replica (under the `Lock`) rotates: a fresh key
//! becomes next, next becomes current, current previous, and the old previous
//! is gone. A key is published one interval before it encrypts, so every
//! replica (which reads the set several times an interval) can already open
//! the tickets a replica makes with it the moment that replica switches;
//! a ticket stays decryptable one interval after its key stops encrypting.
//!
//! Must not: hold up start or a handshake on Redis (the set is read in the
//! background; until it is there, and while Redis is away, the edge uses a
//! key of its own, so sessions still resume on the edge that made them);
//! keep using one key forever when Redis stays away (the local key rotates
//! at the same interval); print a key.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge, Registry};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;

use super::{Lock, Redis};
use crate::config::TicketKey;

/// Where the set is kept.
pub const KEY: &str = "edge:tls:ticket_keys";
const LOCK_KEY: &str = "edge:tls:ticket_keys:lock";
/// A rotation is one GET and one SET: the lock outlives it by far.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How often the set is asked for while the edge has none from Redis yet.
const UNSHARED_POLL: Duration = Duration::from_millis(500);
/// The index of the key that encrypts in a shared set (next, current, previous).
pub const CURRENT: usize = 1;

/// One set as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    pub rotated_at: u64,
    /// Next, current, previous.
    pub keys: Vec<TicketKey>,
}

impl KeyRing {
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let rotated_at = lines.next()?.strip_prefix("v1 ")?.trim().parse().ok()?;
        let keys = lines
            .map(TicketKey::from_hex)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        (keys.len() >= 2).then_some(Self { rotated_at, keys })
    }

    pub fn render(&self) -> String {
        let mut text = format!("v1 {}\n", self.rotated_at);
        for k in &self.keys {
            text.push_str(&k.to_hex());
            text.push('\n');
        }
        text
    }

    /// A fresh key in front; the old previous one dropped.
    fn rotated(old: Option<&Self>, fresh: TicketKey, second: TicketKey, now: u64) -> Self {
        let mut keys = vec![fresh];
        match old {
            Some(o) => keys.extend(o.keys.iter().take(2).cloned()),
            None => keys.push(second),
        }
        Self {
            rotated_at: now,
            keys,
        }
    }
}

/// `proxy_tls_ticket_key_*`: what the shared set is doing.
struct Metrics {
    rotations: IntCounter,
    shared: IntGauge,
    age: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            rotations: IntCounter::new(
                "proxy_tls_ticket_key_rotations_total",
                "Rotations of the shared session ticket keys this edge made in Redis (one replica rotates each time).",
            )?,
            shared: IntGauge::new(
                "proxy_tls_ticket_keys_shared",
                "1 while the session ticket keys are the set shared through Redis; 0 on this edge's own key (Redis not read yet, or away).",
            )?,
            age: IntGauge::new(
                "proxy_tls_ticket_key_age_seconds",
                "Seconds since the shared session ticket keys last rotated, as last read from Redis.",
            )?,
        };
        registry.register(Box::new(m.rotations.clone()))?;
        registry.register(Box::new(m.shared.clone()))?;
        registry.register(Box::new(m.age.clone()))?;
        Ok(m)
    }
}

/// Reads, rotates and hands over the shared set.
pub struct SharedTicketKeys {
    lock: Lock,
    rotation: Duration,
    rng: SystemRandom,
    metrics: Metrics,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SharedTicketKeys {
    pub fn new(
        redis: Arc<Redis>,
        rotation: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            lock: Lock::new(redis, LOCK_KEY.to_owned()),
            rotation,
            rng: SystemRandom::new(),
            metrics: Metrics::new(registry)?,
        })
    }

    fn fresh(&self) -> Option<TicketKey> {
        let mut key = [0u8; 32];
        self.rng.fill(&mut key).ok()?;
        Some(TicketKey(key))
    }

    /// How often a replica reads the set: several times an interval, so a
    /// key published as next is everywhere before it encrypts.
    fn poll(&self) -> Duration {
        (self.rotation / 8).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    fn stale(&self, ring: Option<&KeyRing>, now: u64) -> bool {
        ring.is_none_or(|r| now >= r.rotated_at.saturating_add(self.rotation.as_secs().max(1)))
    }

    /// The stored set: `Some(None)` when there is none (or it does not
    /// parse: it is then replaced), `None` when Redis did not answer.
    async fn read(&self) -> Option<Option<KeyRing>> {
        let text = self
            .lock
            .redis()
            .call("ticket_keys", |mut c| async move {
                redis::cmd("GET")
                    .arg(KEY)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await?;
        let ring = text.as_deref().and_then(KeyRing::parse);
        if text.is_some() && ring.is_none() {
            tracing::warn!("{KEY} in redis does not parse; it will be replaced");
        }
        Some(ring)
    }

    /// Rotates under the lock (or creates the first set); the new set, or
    /// `None` when another replica holds the lock or Redis did not answer.
    async fn rotate(&self) -> Option<KeyRing> {
        if self.lock.acquire(LOCK_TTL).await != Some(true) {
            return None;
        }
        let result = self.rotate_locked().await;
        if !self.lock.release().await {
            tracing::debug!(
                "ticket keys: the rotation lock was not released; it expires by itself"
            );
        }
        result
    }

    async fn rotate_locked(&self) -> Option<KeyRing> {
        // Read again under the lock: another replica may have just rotated.
        let old = self.read().await?;
        let now = now_secs();
        if !self.stale(old.as_ref(), now) {
            return old;
        }
        let ring = KeyRing::rotated(old.as_ref(), self.fresh()?, self.fresh()?, now);
        // Kept past the last interval a key of it decrypts, so a set nobody
        // rotates any more (every edge gone) does not stay forever.
        let ttl = self.rotation.as_secs().max(1).saturating_mul(3);
        let text = ring.render();
        self.lock
            .redis()
            .call("ticket_keys_rotate", |mut c| async move {
                redis::cmd("SET")
                    .arg(KEY)
                    .arg(text)
                    .arg("EX")
                    .arg(ttl)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        self.metrics.rotations.inc();
        tracing::info!("ticket keys: rotated the shared set in redis");
        Some(ring)
    }

    /// Until `stop`: reads the set, rotates it when due, and hands every new
    /// one to `apply` (keys, index of the encrypting one). `first` is the
    /// edge's own key, already serving.
    pub async fn run(
        self,
        first: TicketKey,
        apply: impl Fn(&[TicketKey], usize),
        stop: CancellationToken,
    ) {
        let mut held: Option<KeyRing> = None;
        let mut local = vec![first];
        let mut since = Instant::now();
        let mut away = false;
        loop {
            match self.read().await {
                Some(stored) => {
                    away = false;
                    let now = now_secs();
                    let ring = if self.stale(stored.as_ref(), now) {
                        self.rotate().await.or(stored)
                    } else {
                        stored
                    };
                    if let Some(ring) = ring {
                        self.metrics
                            .age
                            .set(i64::try_from(now.saturating_sub(ring.rotated_at)).unwrap_or(0));
                        if held.as_ref() != Some(&ring) {
                            apply(&ring.keys, CURRENT);
                            if held.is_none() {
                                tracing::info!("ticket keys: serving the set shared through redis");
                            }
                            held = Some(ring);
                            since = Instant::now();
                        }
                        self.metrics.shared.set(1);
                    }
                }
                None => {
                    if held.is_some() && !away {
                        tracing::warn!("ticket keys: redis not answering; keeping the last set");
                    }
                    away = true;
                    // Away a whole interval: rotate a key of our own rather
                    // than encrypt under one key indefinitely.
                    if since.elapsed() >= self.rotation {
                        if let Some(fresh) = self.fresh() {
                            let current = held
                                .take()
                                .and_then(|r| r.keys.get(CURRENT).cloned())
                                .or_else(|| local.first().cloned());
                            local = std::iter::once(fresh).chain(current).collect();
                            apply(&local, 0);
                            since = Instant::now();
                            self.metrics.shared.set(0);
                            tracing::warn!("ticket keys: redis away for a whole rotation; rotated a key of this edge's own");
                        }
                    }
                }
            }
            let wait = if held.is_some() {
                self.poll()
            } else {
                self.poll().min(UNSHARED_POLL)
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TicketKey {
        let mut k = [b; 32];
        k[31] = 0;
        TicketKey(k)
    }

    #[test]
    fn a_rotation_shifts_next_to_current_and_drops_previous() {
        let first = KeyRing::rotated(None, key(1), key(2), 10);
        assert_eq!(first.keys, [key(1), key(2)]);
        let second = KeyRing::rotated(Some(&first), key(3), key(9), 20);
        assert_eq!(second.keys, [key(3), key(1), key(2)]);
        let third = KeyRing::rotated(Some(&second), key(4), key(9), 30);
        assert_eq!(third.keys, [key(4), key(3), key(1)]);
        assert_eq!(KeyRing::parse(&third.render()), Some(third));
        assert_eq!(KeyRing::parse("v1 x\n"), None);
        assert_eq!(
            KeyRing::parse(&format!("v1 5\n{}\n", key(1).to_hex())),
            None
        );
    }
}
