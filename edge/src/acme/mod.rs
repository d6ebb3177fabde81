//! ACME (RFC 8555): orders the `[acme]` certificate with rustls-acme, answers
//! its challenges (TLS-ALPN-01 through the shared resolver, HTTP-01 through the
//! plaintext listener), stores it, and renews it ahead of expiry. A new
//! certificate is pinned first in the one resolver, so TCP and QUIC serve it
//! from their next handshake.
//!
//! Must not: drop the serving certificate when an order fails (the current one,
//! or the local CA's leaf before the first, keeps serving and the order is
//! retried with back-off), or order again at start while a stored certificate
//! is outside its renewal window.

mod replicas;
mod storage;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::{AcmeConfig, EventError, EventOk, ResolvesServerCertAcme, UseChallenge};
use tokio_util::sync::CancellationToken;

pub use replicas::Replicas;
pub use storage::Storage;

use crate::config::{self, AcmeChallenge};
use crate::tls::{self, CertResolver, Loaded};

/// An order that has not finished in this long is abandoned and retried.
const ORDER_DEADLINE: Duration = Duration::from_secs(600);
/// The first retry after a failed order; doubled each time up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// How often a replica waiting for another's order looks for its result.
const PEER_POLL: Duration = Duration::from_secs(1);
/// The ordering lock outlives the order's deadline by this much.
const LOCK_MARGIN: Duration = Duration::from_secs(60);

/// Where the renewal loop stands.
struct Progress {
    /// The serving ACME certificate's notAfter, if there is one.
    not_after: Option<i64>,
    /// Failed orders in a row.
    failures: u32,
    /// Another replica holds the ordering lock.
    peer_ordering: bool,
}

/// What to do when the certificate is due.
enum Turn {
    /// Serve a replica's newer certificate.
    Adopt(Loaded),
    /// Wait for the replica holding the lock.
    PeerOrdering,
    /// Order; `locked` when this edge holds the shared lock.
    Order { locked: bool },
}

/// The challenge answers of the order under way, if any: read by the TLS
/// resolver (TLS-ALPN-01) and the plaintext listener (HTTP-01).
#[derive(Debug, Default)]
pub struct Challenges {
    current: Mutex<Option<Arc<ResolvesServerCertAcme>>>,
}

impl Challenges {
    fn set(&self, order: Option<Arc<ResolvesServerCertAcme>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = order;
    }

    fn get(&self) -> Option<Arc<ResolvesServerCertAcme>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The key authorization for HTTP-01 `token`, while its order is open.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.get()?.get_http_01_key_auth(token)
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()?.resolve(hello)
    }
}

/// The ACME side of one edge: config, storage, metrics and the open challenges.
pub struct Manager {
    config: config::Acme,
    storage: Storage,
    pub challenges: Arc<Challenges>,
    orders: IntCounterVec,
    next_renewal: IntGauge,
    /// Other edges sharing the certificate, with `[redis]`.
    replicas: Option<Replicas>,
}

impl Manager {
    pub fn new(
        config: config::Acme,
        redis: Option<Arc<crate::shared::Redis>>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let orders = IntCounterVec::new(
            Opts::new(
                "proxy_acme_orders_total",
                "ACME orders finished, by result (ok, error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(orders.clone()))?;
        for result in ["ok", "error"] {
            orders.with_label_values(&[result]).inc_by(0);
        }
        let next_renewal = IntGauge::new(
            "proxy_acme_next_order_timestamp_seconds",
            "When the next ACME order (renewal or retry) starts, Unix seconds",
        )?;
        registry.register(Box::new(next_renewal.clone()))?;
        let storage = Storage::new(&config);
        Ok(Self {
            replicas: redis.map(|r| Replicas::new(r, &storage.id)),
            storage,
            config,
            challenges: Arc::new(Challenges::default()),
            orders,
            next_renewal,
        })
    }

    /// The name the ACME certificate goes by in logs and metrics.
    fn cert_name(&self) -> String {
        let first = self.config.domains.first().map_or("", String::as_str);
        format!("acme:{first}")
    }

    /// The stored certificate, when there is one for these domains that parses
    /// (blocking: read at start, before serving).
    pub fn stored(&self) -> Option<Loaded> {
        let path = &self.storage.cert;
        let pem = match Storage::read(path) {
            Ok(Some(pem)) => pem,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("acme: cannot read {}: {e}; ordering anew", path.display());
                return None;
            }
        };
        match Loaded::from_pem_bundle(&pem, &self.cert_name()) {
            Ok(l) if l.covers_all(&self.config.domains) => Some(l),
            Ok(_) => {
                tracing::warn!(
                    "acme: {} does not cover {:?}; ordering anew",
                    path.display(),
                    self.config.domains
                );
                None
            }
            Err(e) => {
                let chain = crate::chain::error_chain(&e);
                tracing::warn!("acme: {}: {e}{chain}; ordering anew", path.display());
                None
            }
        }
    }

    /// Orders whenever the serving certificate is due (now, when there is none)
    /// and pins each new one in `resolver`; `on_new` hears of each (metrics).
    /// With Redis, a replica's newer certificate is taken instead, and only
    /// the replica holding the lock orders. Returns when `stop` is cancelled.
    pub async fn run(
        self: Arc<Self>,
        resolver: &CertResolver,
        not_after: Option<i64>,
        on_new: impl Fn(),
        stop: CancellationToken,
    ) {
        let mut p = Progress {
            not_after,
            failures: 0,
            peer_ordering: false,
        };
        loop {
            let wait = self.wait(&p);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            p.peer_ordering = false;
            let locked = match self.coordinate(p.not_after).await {
                Turn::Adopt(loaded) => {
                    p.not_after = loaded.not_after();
                    p.failures = 0;
                    let generation = resolver.pin_first(loaded);
                    on_new();
                    tracing::info!("acme: serving the certificate another edge ordered (generation {generation})");
                    continue;
                }
                Turn::PeerOrdering => {
                    p.peer_ordering = true;
                    continue;
                }
                Turn::Order { locked } => locked,
            };
            let result = tokio::select! {
                r = tokio::time::timeout(ORDER_DEADLINE, self.order()) => r
                    .unwrap_or_else(|_| Err(format!("not done within {ORDER_DEADLINE:?}"))),
                () = stop.cancelled() => return,
            };
            self.challenges.set(None);
            self.finish(result, &mut p, resolver, &on_new).await;
            if let (true, Some(r)) = (locked, &self.replicas) {
                r.unlock().await;
            }
        }
    }

    /// Counts an order; a new certificate is shared, pinned and announced, a
    /// failure leaves the serving one and backs off.
    async fn finish(
        &self,
        result: Result<Vec<u8>, String>,
        p: &mut Progress,
        resolver: &CertResolver,
        on_new: &impl Fn(),
    ) {
        match result.and_then(|pem| self.parse(&pem).map(|l| (l, pem))) {
            Ok((loaded, pem)) => {
                self.orders.with_label_values(&["ok"]).inc();
                p.failures = 0;
                p.not_after = loaded.not_after();
                self.publish(&pem, p.not_after).await;
                let generation = resolver.pin_first(loaded);
                on_new();
                tracing::info!(
                    "acme: new certificate for {:?} serving (generation {generation})",
                    self.config.domains
                );
            }
            Err(e) => {
                self.orders.with_label_values(&["error"]).inc();
                p.failures = p.failures.saturating_add(1);
                tracing::warn!(
                    "acme: order for {:?} failed ({} in a row): {e}; \
                     the current certificate keeps serving",
                    self.config.domains,
                    p.failures
                );
            }
        }
    }

    /// How long until the next step, set in the gauge and logged.
    fn wait(&self, p: &Progress) -> Duration {
        let wait = if p.peer_ordering {
            PEER_POLL.mul_f64(0.5 + fastrand::f64())
        } else if p.failures > 0 {
            retry_after(p.failures, fastrand::f64())
        } else {
            let due = p.not_after.map_or(i64::MIN, |at| {
                renew_at(at, self.config.renew_before, fastrand::f64())
            });
            Duration::from_secs(u64::try_from(due.saturating_sub(unix_now())).unwrap_or(0))
        };
        let secs = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
        self.next_renewal.set(unix_now().saturating_add(secs));
        if !wait.is_zero() && !p.peer_ordering {
            tracing::info!("acme: next order in {}", humantime::format_duration(wait));
        }
        wait
    }

    /// Whether this edge orders now: without Redis (or while it does not
    /// answer) always; with it, only when no replica has a newer certificate
    /// that is not due, and the lock is this edge's.
    async fn coordinate(&self, current: Option<i64>) -> Turn {
        let Some(replicas) = &self.replicas else {
            return Turn::Order { locked: false };
        };
        if let Some(Some(pem)) = replicas.cert().await {
            match self.parse(&pem) {
                Ok(l) if self.newer_and_not_due(&l, current) => {
                    self.keep_on_disk(pem).await;
                    return Turn::Adopt(l);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("acme: the certificate in Redis is unusable: {e}"),
            }
        }
        match replicas.lock(ORDER_DEADLINE + LOCK_MARGIN).await {
            Some(true) => Turn::Order { locked: true },
            Some(false) => {
                tracing::info!("acme: another edge is ordering; waiting for its certificate");
                Turn::PeerOrdering
            }
            None => {
                tracing::warn!("acme: Redis did not answer; ordering without the shared lock");
                Turn::Order { locked: false }
            }
        }
    }

    fn newer_and_not_due(&self, l: &Loaded, current: Option<i64>) -> bool {
        let Some(at) = l.not_after() else {
            return false;
        };
        at > current.unwrap_or(i64::MIN) && renew_at(at, self.config.renew_before, 0.0) > unix_now()
    }

    /// Stores a replica's certificate on disk too, for a restart without Redis.
    async fn keep_on_disk(&self, pem: Vec<u8>) {
        let path = self.storage.cert.clone();
        if let Err(e) = blocking(move || Storage::write(&path, &pem)).await {
            tracing::warn!("acme: cannot store the certificate: {e}");
        }
    }

    /// Hands a new certificate to the other replicas (with Redis).
    async fn publish(&self, pem: &[u8], not_after: Option<i64>) {
        let Some(replicas) = &self.replicas else {
            return;
        };
        let left = not_after.map_or(0, |at| at.saturating_sub(unix_now()));
        let ttl = Duration::from_secs(u64::try_from(left).unwrap_or(0));
        if !replicas.publish(pem, ttl).await {
            tracing::warn!(
                "acme: the new certificate could not be put in Redis; other edges order their own"
            );
        }
    }

    fn parse(&self, pem: &[u8]) -> Result<Loaded, String> {
        let loaded = Loaded::from_pem_bundle(pem, &self.cert_name()).map_err(|e| e.to_string())?;
        if loaded.covers_all(&self.config.domains) {
            Ok(loaded)
        } else {
            Err("the issued certificate does not cover every domain".to_owned())
        }
    }

    /// One order, start to end: the certificate and key as PEM, stored.
    async fn order(&self) -> Result<Vec<u8>, String> {
        let client = client_config(&self.config)?;
        let issued = Arc::new(Mutex::new(None));
        let cache = OrderCache {
            storage: self.storage.clone(),
            issued: issued.clone(),
        };
        let challenge = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
            AcmeChallenge::Http01 => UseChallenge::Http01,
        };
        let mut state = AcmeConfig::new_with_client_config(&self.config.domains, client)
            .directory(&self.config.directory)
            .contact(&self.config.contact)
            .challenge_type(challenge)
            .cache(cache)
            .state();
        self.challenges.set(Some(state.resolver()));
        tracing::info!(
            "acme: ordering a certificate for {:?} from {}",
            self.config.domains,
            self.config.directory
        );
        while let Some(event) = state.next().await {
            match event {
                Ok(EventOk::CertCacheStore) | Err(EventError::CertCacheStore(_)) => {
                    if let Err(EventError::CertCacheStore(e)) = &event {
                        tracing::warn!(
                            "acme: cannot store the certificate in {}: {e}; a restart orders again",
                            self.storage.cert.display()
                        );
                    }
                    let pem = issued.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return pem.ok_or_else(|| "the issued certificate went missing".to_owned());
                }
                Ok(
                    EventOk::DeployedNewCert
                    | EventOk::DeployedCachedCert
                    | EventOk::AccountCacheStore,
                ) => {}
                Err(EventError::AccountCacheStore(e)) => tracing::warn!(
                    "acme: cannot store the account key in {}: {e}",
                    self.storage.account.display()
                ),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the order stopped without a certificate".to_owned())
    }
}

/// The TLS client for the directory: the configured CA file's roots, else the
/// public Web PKI roots.
fn client_config(acme: &config::Acme) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &acme.ca {
        Some(path) => {
            let certs = tls::load_roots(path).map_err(|e| e.to_string())?;
            let (_, ignored) = roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(format!(
                    "{}: no usable CA certificate ({ignored} ignored)",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// rustls-acme's storage for one order: it never finds a certificate (when to
/// order is `Manager::run`'s decision), keeps the account key in `Storage`, and
/// hands the issued certificate back through `issued` as it stores it.
struct OrderCache {
    storage: Storage,
    issued: Arc<Mutex<Option<Vec<u8>>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

#[async_trait::async_trait]
impl rustls_acme::CertCache for OrderCache {
    type EC = std::io::Error;
    async fn load_cert(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, Self::EC> {
        Ok(None)
    }
    async fn store_cert(&self, _: &[String], _: &str, cert: &[u8]) -> Result<(), Self::EC> {
        *self.issued.lock().unwrap_or_else(|p| p.into_inner()) = Some(cert.to_vec());
        let (path, cert) = (self.storage.cert.clone(), cert.to_vec());
        blocking(move || Storage::write(&path, &cert)).await
    }
}

#[async_trait::async_trait]
impl rustls_acme::AccountCache for OrderCache {
    type EA = std::io::Error;
    async fn load_account(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, Self::EA> {
        let path = self.storage.account.clone();
        blocking(move || Storage::read(&path)).await
    }
    async fn store_account(&self, _: &[String], _: &str, key: &[u8]) -> Result<(), Self::EA> {
        let (path, key) = (self.storage.account.clone(), key.to_vec());
        blocking(move || Storage::write(&path, &key)).await
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When a certificate valid until `not_after` is renewed: `renew_before`
/// ahead, and up to a tenth of that earlier by `jitter` (0..1), so replicas
/// that got theirs together do not all renew in the same second.
pub fn renew_at(not_after: i64, renew_before: Duration, jitter: f64) -> i64 {
    let before = renew_before.as_secs_f64() * (1.0 + jitter.clamp(0.0, 1.0) / 10.0);
    not_after.saturating_sub(before as i64)
}

/// The wait before retrying after `failures` failed orders in a row: doubling
/// from `RETRY_MIN` to `RETRY_MAX`, each within ±25% by `jitter` (0..1).
pub fn retry_after(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX);
    base.mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_ahead_of_expiry_within_a_tenth_of_jitter() {
        let day = Duration::from_secs(86_400);
        let end = 100 * 86_400;
        assert_eq!(renew_at(end, day * 30, 0.0), 70 * 86_400);
        assert_eq!(renew_at(end, day * 30, 1.0), 67 * 86_400);
        let mid = renew_at(end, day * 30, 0.5);
        assert!(mid < 70 * 86_400 && mid > 67 * 86_400);
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_after(1, 0.5), RETRY_MIN);
        assert_eq!(retry_after(2, 0.5), RETRY_MIN * 2);
        assert_eq!(retry_after(5, 0.5), RETRY_MIN * 16);
        assert_eq!(retry_after(40, 0.5), RETRY_MAX);
        assert_eq!(retry_after(1, 0.0), RETRY_MIN.mul_f64(0.75));
        assert_eq!(retry_after(1, 1.0), RETRY_MIN.mul_f64(1.25));
    }
}
