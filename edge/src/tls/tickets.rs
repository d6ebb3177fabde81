//! Stateless TLS session tickets under keys edges can share: a ticket made by
//! one edge resumes on any other holding its key, over TCP (h1, h2) and QUIC
//! (h3) alike, as both server configs take the same `Ticketer`.
//!
//! A ticket is `name (16) ‖ nonce (12) ‖ AES-256-GCM(session) ‖ tag (16)`.
//! The name and the AEAD key are both derived from the configured 32-byte key
//! (HKDF-SHA256), so every edge with the key computes the same name and a
//! ticket says which key made it. The newest key encrypts (or the one the
//! source says); every key held decrypts. The additional data is the name and
//! a context (the client-certificate policy): a ticket made under one policy
//! does not resume under another, even with the same key.
//!
//! Must not: panic or allocate unboundedly on a hostile ticket (it is fully
//! the client's); print a key (`TicketKey`'s `Debug` does not).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::config::TicketKey;

const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// A ticket longer than this is not one of ours: rustls's session state with a
/// long client chain stays well under it.
const MAX_TICKET: usize = 16 * 1024;
const SALT: &[u8] = b"edge session ticket key v1";

/// One key, ready to seal and open.
struct Sealer {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// The keys held now, and which of them encrypts.
struct KeySet {
    keys: Vec<Sealer>,
    encrypt: usize,
}

/// `proxy_tls_tickets_total{outcome}` and `proxy_tls_ticket_keys`.
struct TicketMetrics {
    issued: IntCounter,
    resumed: IntCounter,
    unknown_key: IntCounter,
    invalid: IntCounter,
    keys: IntGauge,
    changes: IntCounter,
}

impl TicketMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let tickets = IntCounterVec::new(
            Opts::new(
                "proxy_tls_tickets_total",
                "TLS session tickets, by outcome: issued; resumed (a ticket decrypted: the \
                 session resumes); unknown_key (a key no longer or never held: a full handshake); \
                 invalid (malformed or failed authentication).",
            ),
            &["outcome"],
        )?;
        let keys = IntGauge::new(
            "proxy_tls_ticket_keys",
            "Session ticket keys held (one encrypts, all decrypt).",
        )?;
        let changes = IntCounter::new(
            "proxy_tls_ticket_key_changes_total",
            "Times the session ticket key set was replaced (a reload, a rotation, a set read from Redis).",
        )?;
        registry.register(Box::new(tickets.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        registry.register(Box::new(changes.clone()))?;
        Ok(Self {
            issued: tickets.with_label_values(&["issued"]),
            resumed: tickets.with_label_values(&["resumed"]),
            unknown_key: tickets.with_label_values(&["unknown_key"]),
            invalid: tickets.with_label_values(&["invalid"]),
            keys,
            changes,
        })
    }
}

/// The session ticket encrypter both listeners' TLS configs share; its keys
/// are swapped whole (`replace`), and tickets under a key that stays keep
/// resuming.
pub struct Ticketer {
    set: ArcSwap<KeySet>,
    lifetime: u32,
    context: Vec<u8>,
    rng: SystemRandom,
    metrics: TicketMetrics,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ticketer({} keys, lifetime {} s)",
            self.set.load().keys.len(),
            self.lifetime
        )
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn sealer(key: &TicketKey) -> Option<Sealer> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&key.0);
    let mut name = [0u8; NAME_LEN];
    prk.expand(&[b"name"], Len(NAME_LEN))
        .ok()?
        .fill(&mut name)
        .ok()?;
    let aead_key: UnboundKey = prk.expand(&[b"aes-256-gcm"], &AES_256_GCM).ok()?.into();
    Some(Sealer {
        name,
        key: LessSafeKey::new(aead_key),
    })
}

impl Ticketer {
    /// `keys` newest first, `encrypt` the index of the one that encrypts;
    /// `lifetime` what clients are told (seconds); `context` binds tickets to
    /// the TLS policy they were made under.
    pub fn new(
        keys: &[TicketKey],
        encrypt: usize,
        lifetime: u32,
        context: Vec<u8>,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let this = Self {
            set: ArcSwap::from_pointee(KeySet {
                keys: Vec::new(),
                encrypt: 0,
            }),
            lifetime,
            context,
            rng: SystemRandom::new(),
            metrics: TicketMetrics::new(registry)?,
        };
        this.replace(keys, encrypt);
        Ok(Arc::new(this))
    }

    /// Serves `keys` from the next handshake on: `keys[encrypt]` encrypts
    /// (the last one if out of range), all decrypt. The same keys again (a
    /// reload that left the file alone) change nothing.
    pub fn replace(&self, keys: &[TicketKey], encrypt: usize) {
        let keys: Vec<Sealer> = keys.iter().filter_map(sealer).collect();
        let encrypt = encrypt.min(keys.len().saturating_sub(1));
        let held = self.set.load();
        let names = |k: &[Sealer]| k.iter().map(|s| s.name).collect::<Vec<_>>();
        if !keys.is_empty() && held.encrypt == encrypt && names(&held.keys) == names(&keys) {
            return;
        }
        self.metrics
            .keys
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        self.metrics.changes.inc();
        self.set.store(Arc::new(KeySet { keys, encrypt }));
    }

    /// A fresh random key (for a source that has none to give yet).
    pub fn random_key(&self) -> Option<TicketKey> {
        let mut key = [0u8; 32];
        self.rng.fill(&mut key).ok()?;
        Some(TicketKey(key))
    }

    fn aad(&self, name: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(name.len() + self.context.len());
        aad.extend_from_slice(name);
        aad.extend_from_slice(&self.context);
        aad
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        !self.set.load().keys.is_empty()
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let set = self.set.load();
        let sealer = set.keys.get(set.encrypt)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&sealer.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let aad = self.aad(&sealer.name);
        let tag = sealer
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        self.metrics.issued.inc();
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN || cipher.len() > MAX_TICKET {
            self.metrics.invalid.inc();
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let set = self.set.load();
        let Some(sealer) = set.keys.iter().find(|s| s.name == name) else {
            self.metrics.unknown_key.inc();
            return None;
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut out = sealed.to_vec();
        let aad = self.aad(name);
        match sealer.key.open_in_place(nonce, Aad::from(&aad), &mut out) {
            Ok(plain) => {
                let len = plain.len();
                out.truncate(len);
                self.metrics.resumed.inc();
                Some(out)
            }
            Err(_) => {
                self.metrics.invalid.inc();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TicketKey {
        let mut k = [b; 32];
        k[0] = 0;
        TicketKey(k)
    }

    fn ticketer(keys: &[TicketKey], encrypt: usize, context: &[u8]) -> Arc<Ticketer> {
        Ticketer::new(keys, encrypt, 60, context.to_vec(), &Registry::new()).expect("ticketer")
    }

    #[test]
    fn the_newest_key_encrypts_and_every_key_decrypts() {
        let old = ticketer(&[key(1)], 0, b"");
        let made_old = old.encrypt(b"session").expect("sealed");
        let rotated = ticketer(&[key(2), key(1)], 0, b"");
        assert_eq!(rotated.decrypt(&made_old).as_deref(), Some(&b"session"[..]));
        let made_new = rotated.encrypt(b"next").expect("sealed");
        // The old edge does not hold the new key: a full handshake, not an error.
        assert_eq!(old.decrypt(&made_new), None);
        assert_eq!(
            &made_new[..NAME_LEN],
            &ticketer(&[key(2)], 0, b"").set.load().keys[0].name
        );
    }

    #[test]
    fn a_tampered_ticket_or_another_policy_does_not_open() {
        let t = ticketer(&[key(1)], 0, b"none");
        let mut made = t.encrypt(b"session").expect("sealed");
        assert_eq!(ticketer(&[key(1)], 0, b"require").decrypt(&made), None);
        let last = made.len() - 1;
        made[last] ^= 1;
        assert_eq!(t.decrypt(&made), None);
        for len in [0, 1, NAME_LEN, NAME_LEN + NONCE_LEN + TAG_LEN - 1] {
            assert_eq!(t.decrypt(&made[..len]), None);
        }
        assert_eq!(t.decrypt(&vec![0; MAX_TICKET + 1]), None);
    }

    #[test]
    fn encrypt_picks_the_named_index() {
        let t = ticketer(&[key(3), key(2), key(1)], 1, b"");
        let made = t.encrypt(b"s").expect("sealed");
        assert_eq!(&made[..NAME_LEN], &t.set.load().keys[1].name);
    }
}
