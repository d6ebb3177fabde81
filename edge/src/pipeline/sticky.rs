//! Sticky sessions, the part of `select` that keeps a user on one endpoint and
//! the part of `respond` that remembers where the user went.
//!
//! - `key = "cookie"`: the first answer sets a cookie naming the endpoint by its
//!   stable id (a hash of its address, never the address), signed with HMAC; a
//!   later request carrying a valid one prefers that endpoint (`upstream::Prefer`).
//!   A cookie that does not verify is ignored (the user is placed anew).
//! - `key = "header:NAME"` / `"client_ip"`: the user is placed by consistent
//!   hashing on the key (the same on every edge); with `shared`, the endpoint a
//!   user got is also written to Redis and preferred afterwards, so users stay
//!   put when the endpoint set changes. Redis away or slow: the hash alone.
//!
//! Either way the pool decides whether the pinned endpoint can take the request
//! (healthy, breaker closed, in the client's region); when not, the balancer
//! chooses and the pin moves to the endpoint that answered.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Request, Response};
use sha2::{Digest, Sha256};

use super::headers;
use crate::body::Body;
use crate::config::{self, StickyKey};
use crate::metrics::Metrics;
use crate::shared::redis::Redis;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of MAC a cookie carries (128 bits).
const MAC_LEN: usize = 16;
/// Where a generated signing key is kept, under `state_dir`.
const SECRET_FILE: &str = "sticky-secret";

/// One pool's stickiness, built with the config.
pub struct Sticky {
    pool: String,
    key: StickyKey,
    cookie: String,
    ttl: Duration,
    shared: bool,
    /// HMAC keyed with the secret: each cookie clones this state rather than
    /// hashing the key again.
    keyed: HmacSha256,
    /// Set for `shared` header / client pools when `[redis]` is there.
    redis: Option<Arc<Redis>>,
}

/// What `select` decided for one request, for `respond`.
pub struct Pin<'p> {
    sticky: &'p Sticky,
    /// The endpoint the request was sent to prefer, if any.
    pinned: Option<u64>,
    /// The Redis key of a shared assignment.
    shared_key: Option<String>,
    why: Why,
}

/// How the request came to be placed, for the metric.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A valid cookie or a Redis assignment.
    Pinned,
    /// Nothing to go by yet.
    New,
    /// A cookie was sent that edge did not sign.
    Forged,
    /// Redis did not answer in time: hashed on the key alone.
    Fallback,
}

impl Sticky {
    /// The stickiness `config` asks of pool `pool`; the signing key comes from
    /// `secret_file`, else from `state_dir` (made on first use).
    pub fn new(pool: &str, config: &config::Sticky, state_dir: &Path) -> Result<Self, String> {
        let secret = match &config.secret_file {
            Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => generated_secret(state_dir)?,
        };
        if secret.len() < config::MIN_SECRET {
            return Err(format!(
                "the signing key has {} bytes; at least {} needed",
                secret.len(),
                config::MIN_SECRET
            ));
        }
        Ok(Self {
            pool: pool.to_owned(),
            key: config.key.clone(),
            cookie: config.cookie.clone(),
            ttl: config.ttl,
            shared: config.shared,
            keyed: HmacSha256::new_from_slice(&secret).map_err(|e| e.to_string())?,
            redis: None,
        })
    }

    /// Whether assignments go to Redis (a shared header or client pool).
    pub fn wants_redis(&self) -> bool {
        self.shared && self.key != StickyKey::Cookie
    }

    /// Keeps shared assignments in `redis`.
    pub fn set_redis(&mut self, redis: Option<Arc<Redis>>) {
        if self.wants_redis() {
            self.redis = redis;
        }
    }

    fn mac(&self, id: u64) -> HmacSha256 {
        // The pool's name is in the MAC: a cookie of one pool means nothing in another.
        let mut mac = self.keyed.clone();
        mac.update(self.pool.as_bytes());
        mac.update(&[0]);
        mac.update(&id.to_be_bytes());
        mac
    }

    /// The cookie value naming endpoint `id`: 16 hex digits of id, 32 of MAC.
    fn sign(&self, id: u64) -> String {
        let tag = self.mac(id).finalize().into_bytes();
        let mut s = format!("{id:016x}");
        for b in &tag[..MAC_LEN] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The endpoint a cookie value names, when edge signed it.
    fn verify(&self, value: &[u8]) -> Option<u64> {
        if value.len() != 16 + 2 * MAC_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        let id = u64::from_str_radix(&text[..16], 16).ok()?;
        let mut tag = [0u8; MAC_LEN];
        for (i, b) in tag.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(16 + 2 * i..18 + 2 * i)?, 16).ok()?;
        }
        self.mac(id).verify_truncated_left(&tag).ok()?;
        Some(id)
    }

    /// The user's key bytes for a header or client pool (`None`: no key, e.g.
    /// the header is missing — the request is balanced as usual).
    fn user_key<'r>(&self, h: &'r HeaderMap, client: &'r [u8]) -> Option<&'r [u8]> {
        match &self.key {
            StickyKey::Cookie => None,
            StickyKey::Header(name) => h.get(name.as_str()).map(HeaderValue::as_bytes),
            StickyKey::ClientIp => Some(client),
        }
    }

    fn redis_key(&self, user: &[u8]) -> String {
        let d = Sha256::digest(user);
        let mut s = format!("edge:sticky:{}:", self.pool);
        for b in &d[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Places the request: attaches `Prefer` and/or `HashKey` and says why.
    pub async fn select<'p>(
        &'p self,
        client: std::net::IpAddr,
        req: &mut Request<Body>,
    ) -> Pin<'p> {
        let mut pin = Pin {
            sticky: self,
            pinned: None,
            shared_key: None,
            why: Why::New,
        };
        if self.key == StickyKey::Cookie {
            if let Some(value) = headers::cookie(req.headers(), &self.cookie) {
                match self.verify(value) {
                    Some(id) => {
                        pin.pinned = Some(id);
                        pin.why = Why::Pinned;
                    }
                    None => pin.why = Why::Forged,
                }
            }
        } else {
            let ip = match client {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            let Some(user) = self.user_key(req.headers(), &ip).map(<[u8]>::to_vec) else {
                return pin;
            };
            let user = user.as_slice();
            req.extensions_mut()
                .insert(upstream::HashKey(upstream::hash_ring::key(user)));
            if let Some(redis) = &self.redis {
                let key = self.redis_key(user);
                let ttl = self.ttl.as_secs().max(1);
                let k = key.clone();
                let found: Option<Option<String>> = redis
                    .call("sticky_get", |mut c| async move {
                        redis::cmd("GETEX")
                            .arg(k)
                            .arg("EX")
                            .arg(ttl)
                            .query_async(&mut c)
                            .await
                    })
                    .await;
                match found {
                    Some(v) => {
                        pin.pinned = v.and_then(|v| u64::from_str_radix(&v, 16).ok());
                        if pin.pinned.is_some() {
                            pin.why = Why::Pinned;
                        }
                        pin.shared_key = Some(key);
                    }
                    None => pin.why = Why::Fallback,
                }
            }
        }
        if let Some(id) = pin.pinned {
            req.extensions_mut().insert(upstream::Prefer(id));
        }
        pin
    }
}

impl Pin<'_> {
    /// Remembers where the request went: a cookie (set when it names another
    /// endpoint than the request's), or the shared assignment in Redis; counts
    /// the outcome, and returns it. A response that no endpoint served (a cache
    /// hit) changes nothing.
    pub fn remember<B>(
        &self,
        resp: &mut Response<B>,
        secure: bool,
        metrics: &Metrics,
    ) -> &'static str {
        let Some(served) = resp.extensions().get::<upstream::ServedBy>().map(|s| s.id) else {
            return "";
        };
        let s = self.sticky;
        let outcome = match (self.why, self.pinned) {
            (_, Some(id)) if id == served => "kept",
            (_, Some(_)) => "moved",
            (Why::Forged, _) => "forged",
            (Why::Fallback, _) => "fallback",
            _ => "new",
        };
        metrics.sticky(&s.pool, outcome);
        if self.pinned == Some(served) {
            return outcome;
        }
        if s.key == StickyKey::Cookie {
            let mut cookie = format!(
                "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                s.cookie,
                s.sign(served),
                s.ttl.as_secs().max(1)
            );
            if secure {
                cookie.push_str("; Secure");
            }
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(http::header::SET_COOKIE, v);
            }
        } else if let (Some(redis), Some(key)) = (&s.redis, &self.shared_key) {
            // Off the response path: the answer does not wait for the write.
            let redis = Arc::clone(redis);
            let key = key.clone();
            let ttl = s.ttl.as_secs().max(1);
            tokio::spawn(async move {
                redis
                    .call("sticky_set", |mut c| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(format!("{served:016x}"))
                            .arg("EX")
                            .arg(ttl)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await
            });
        }
        outcome
    }
}

/// The signing key kept in `state_dir`, made (32 random bytes, mode 0600) when
/// missing, so cookies outlive restarts without configuration.
fn generated_secret(state_dir: &Path) -> Result<Vec<u8>, String> {
    let path = state_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() >= config::MIN_SECRET => return Ok(bytes),
        Ok(_) | Err(_) => {}
    }
    // Two v4 UUIDs: 244 bits from the OS's random source.
    let secret: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|u| *u.as_bytes())
        .collect();
    std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    write_private(&path, &secret).map_err(|e| format!("{}: {e}", path.display()))?;
    let kept = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if kept == secret {
        tracing::info!(path = %path.display(), "generated the sticky cookie signing key");
    }
    Ok(kept)
}

/// Writes `bytes` to `path` unless it exists, readable by its owner only; two
/// edges sharing `state_dir` that start together agree on the first one written.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // A link, not a rename: it fails when another process got there first.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(pool: &str, secret: &[u8]) -> Sticky {
        Sticky {
            pool: pool.to_owned(),
            key: StickyKey::Cookie,
            cookie: "edge_s".to_owned(),
            ttl: Duration::from_secs(60),
            shared: false,
            keyed: HmacSha256::new_from_slice(secret).expect("any key length"),
            redis: None,
        }
    }

    #[test]
    fn a_signed_cookie_verifies_and_a_tampered_one_does_not() {
        let s = sticky("api", b"0123456789abcdef0123");
        let value = s.sign(0x1234_5678_9abc_def0);
        assert_eq!(value.len(), 48);
        assert_eq!(s.verify(value.as_bytes()), Some(0x1234_5678_9abc_def0));
        // Another endpoint id under the same MAC.
        let mut forged = value.clone().into_bytes();
        forged[15] = if forged[15] == b'0' { b'1' } else { b'0' };
        assert_eq!(s.verify(&forged), None);
        // A flipped MAC digit, a short value, junk, non-hex.
        let mut flipped = value.clone().into_bytes();
        flipped[47] = if flipped[47] == b'a' { b'b' } else { b'a' };
        assert_eq!(s.verify(&flipped), None);
        assert_eq!(s.verify(&value.as_bytes()[..40]), None);
        assert_eq!(s.verify(b""), None);
        assert_eq!(s.verify("é".repeat(24).as_bytes()), None);
        assert_eq!(s.verify(&[b'z'; 48]), None);
    }

    #[test]
    fn a_cookie_means_nothing_to_another_pool_or_key() {
        let api = sticky("api", b"0123456789abcdef0123");
        let value = api.sign(7);
        assert_eq!(
            sticky("web", b"0123456789abcdef0123").verify(value.as_bytes()),
            None
        );
        assert_eq!(
            sticky("api", b"another key, 16+ bytes").verify(value.as_bytes()),
            None
        );
        assert_eq!(
            sticky("api", b"0123456789abcdef0123").verify(value.as_bytes()),
            Some(7)
        );
    }

    #[test]
    fn the_generated_key_is_kept_across_restarts_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generated_secret(dir.path()).expect("generated");
        assert_eq!(first.len(), 32);
        assert_eq!(generated_secret(dir.path()).expect("read back"), first);
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(generated_secret(other.path()).expect("generated"), first);
    }
}
