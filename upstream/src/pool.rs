//! A pool: its endpoints, how one is chosen, and how a request survives one
//! endpoint's failure (retry elsewhere when provably safe, within a budget).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use rustls::pki_types::CertificateDer;

use crate::backend::{Backend, Failed, Replay};
use crate::balance::{pick_p2c, pick_round_robin, Policy};
use crate::body::UpstreamBody;
use crate::breaker::{Admit, BreakerConfig, State};
use crate::budget::RetryBudget;
use crate::clock::now_ms;
use crate::conn::Connector;
use crate::discovery::Resolution;
use crate::endpoint::EndpointAddr;
use crate::error::Error;
use crate::hash_ring::{self, Maglev};
use crate::health::HealthCheck;
use crate::wrr::SmoothWrr;
use crate::BoxError;

/// What a request body must be to travel upstream. `Default` is the empty body,
/// used to rebuild a body-less request for the one retry on a fresh connection.
pub trait ReqBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Send + Unpin + 'static
{
}
impl<T> ReqBody for T where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Send + Unpin + 'static
{
}

/// The protocol spoken to a pool's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, a pool of idle keep-alive connections per endpoint.
    H1,
    /// HTTP/2 (h2c prior knowledge, or h2 by ALPN over TLS), one shared connection per endpoint.
    H2,
}

/// A pool's settings, independent of any config file format.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub endpoints: Vec<EndpointAddr>,
    /// Weights of `endpoints`, for `Policy::WeightedRoundRobin` and `Policy::Maglev`
    /// (missing entries weigh 1).
    pub weights: Vec<u32>,
    pub protocol: Protocol,
    /// TCP plus TLS.
    pub connect_timeout: Duration,
    /// Until the response head, per try.
    pub response_timeout: Duration,
    /// Pooled connections idle this long are closed: keep it below the backend's keep-alive.
    pub idle_timeout: Duration,
    /// Certificates trusted for https endpoints in addition to the public web roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub policy: Policy,
    /// Further tries after the first, each on another endpoint when there is one.
    pub max_retries: u32,
    /// Retries may add at most this share of the pool's requests...
    pub retry_budget: f64,
    /// ...plus this many a second.
    pub retry_min_per_sec: u32,
    /// Responses that count as failures worth another try for safe, body-less requests.
    pub retry_statuses: Vec<StatusCode>,
    pub breaker: BreakerConfig,
    /// Requests in flight at most; past it requests fail at once (503) instead of queuing.
    pub max_requests: usize,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
    /// Connects under way at most (all endpoints); past it, fail fast.
    pub max_pending_connects: usize,
    /// Error answers (500, 502, 503, 504) count as failures toward an endpoint's
    /// breaker, but never eject endpoints below this share of the pool.
    pub min_available_share: f64,
    /// The whole request, all tries together, until the response head.
    pub request_timeout: Option<Duration>,
}

impl PoolConfig {
    /// A pool with every setting at its default: h2, 1 s connect, 30 s response,
    /// 90 s idle, least-request balancing, 2 retries within a 20% budget, breakers
    /// opening after 5 consecutive failures.
    pub fn new(name: &str, endpoints: Vec<EndpointAddr>) -> Self {
        Self {
            name: name.to_owned(),
            weights: vec![1; endpoints.len()],
            endpoints,
            protocol: Protocol::H2,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            extra_roots: Vec::new(),
            policy: Policy::LeastRequest,
            max_retries: 2,
            retry_budget: 0.2,
            retry_min_per_sec: 3,
            retry_statuses: Vec::new(),
            breaker: BreakerConfig::default(),
            max_requests: 10_000,
            health_check: None,
            max_pending_connects: 1024,
            min_available_share: 0.5,
            request_timeout: None,
        }
    }
}

/// A set of endpoints serving one backend, with pooled connections to each.
pub struct Pool<B> {
    name: String,
    members: ArcSwap<Members<B>>,
    protocol: Protocol,
    breaker: BreakerConfig,
    /// The discovery feed, when endpoints come from DNS (kept for its status).
    dns: Mutex<Option<tokio::sync::watch::Receiver<Resolution>>>,
    /// Dropped with the pool, which ends the task following discovery.
    _alive: tokio::sync::watch::Sender<()>,
    connector: Connector,
    response_timeout: Duration,
    request_timeout: Option<Duration>,
    min_available_share: f64,
    health_check: Option<HealthCheck>,
    policy: Policy,
    next: AtomicUsize,
    max_retries: u32,
    retry_statuses: Vec<StatusCode>,
    budget: RetryBudget,
    max_requests: usize,
    in_flight: Arc<AtomicUsize>,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
}

/// The endpoint set requests go to, swapped whole when discovery changes it.
/// Requests in flight keep the snapshot they started with, so a removed endpoint
/// finishes them (drains) and closes its connections when the last one ends.
struct Members<B> {
    backends: Vec<Arc<Backend<B>>>,
    /// Smooth weighted round robin over `backends` (weights from config or SRV).
    wrr: Mutex<SmoothWrr>,
    /// The consistent-hash table, built only for `Policy::Maglev` pools.
    maglev: Option<Maglev>,
}

impl<B> Members<B> {
    fn new(backends: Vec<Arc<Backend<B>>>, weights: &[u32], policy: Policy) -> Self {
        let maglev = (policy == Policy::Maglev).then(|| {
            let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
            Maglev::new(&names, weights, hash_ring::DEFAULT_TABLE_SIZE)
                .or_else(|_| Maglev::new(&names, weights, hash_ring::MAX_TABLE_SIZE))
        });
        let maglev = match maglev {
            Some(Ok(table)) => Some(table),
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot build the consistent-hash table; picking by least request");
                None
            }
            None => None,
        };
        Self {
            backends,
            wrr: Mutex::new(SmoothWrr::new(weights)),
            maglev,
        }
    }
}

/// The key a consistent-hash pool places a request by, set by the caller as a
/// request extension (e.g. a hash of the client address or a session id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey(pub u64);

/// Discovery's health, for metrics.
#[derive(Clone, Debug)]
pub struct DnsStatus {
    /// Consecutive failed lookups (0 while DNS answers).
    pub failures: u64,
    /// Age of the set in use: time since the last good answer.
    pub last_success_age: Duration,
    /// Lookups so far, and how many of them failed.
    pub lookups: u64,
    pub failed_lookups: u64,
}

/// One endpoint's state, for metrics.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// Passing active health checks (always true without them).
    pub healthy: bool,
    /// Times its breaker opened.
    pub ejections: u64,
    pub breaker: State,
    pub in_flight: u32,
    pub ewma: Duration,
}

/// A pool's counters and its endpoints' state, for metrics.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub retries: u64,
    pub budget_exhausted: u64,
    pub dns: Option<DnsStatus>,
    pub endpoints: Vec<EndpointStatus>,
}

impl<B: ReqBody> Pool<B> {
    /// Builds a pool; fails only when an extra root certificate is unusable.
    pub fn new(cfg: PoolConfig) -> Result<Self, rustls::Error> {
        // Discovery may bring https endpoints later, so TLS is always ready.
        let tls = Some(tls_connector(&cfg)?);
        let backends = cfg
            .endpoints
            .iter()
            .map(|addr| Arc::new(Backend::new(addr.clone(), cfg.protocol, cfg.breaker)))
            .collect();
        let weights: Vec<u32> = (0..cfg.endpoints.len())
            .map(|i| cfg.weights.get(i).copied().unwrap_or(1))
            .collect();
        Ok(Self {
            name: cfg.name,
            members: ArcSwap::from_pointee(Members::new(backends, &weights, cfg.policy)),
            protocol: cfg.protocol,
            breaker: cfg.breaker,
            dns: Mutex::new(None),
            _alive: tokio::sync::watch::channel(()).0,
            connector: Connector {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                tls,
                max_pending: cfg.max_pending_connects,
                pending: AtomicUsize::new(0),
            },
            request_timeout: cfg.request_timeout,
            min_available_share: cfg.min_available_share,
            response_timeout: cfg.response_timeout,
            health_check: cfg.health_check,
            policy: cfg.policy,
            next: AtomicUsize::new(0),
            max_retries: cfg.max_retries,
            retry_statuses: cfg.retry_statuses,
            budget: RetryBudget::new(cfg.retry_budget, cfg.retry_min_per_sec, now_ms()),
            max_requests: cfg.max_requests,
            in_flight: Arc::default(),
            retries: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether requests should carry a [`HashKey`] (consistent-hash pools).
    pub fn wants_hash_key(&self) -> bool {
        self.policy == Policy::Maglev
    }

    /// Replaces the endpoint set. Endpoints that stay keep their connections,
    /// breaker and latency estimate; new ones start fresh.
    pub fn set_endpoints(&self, endpoints: &[(EndpointAddr, u32)]) {
        let current = self.members.load();
        let backends: Vec<_> = endpoints
            .iter()
            .map(|(addr, _)| {
                current
                    .backends
                    .iter()
                    .find(|b| b.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Backend::new(addr.clone(), self.protocol, self.breaker))
                    })
            })
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        self.members
            .store(Arc::new(Members::new(backends, &weights, self.policy)));
    }

    /// Takes endpoints from DNS discovery from now on: the current answer at
    /// once, then every change, until the pool is dropped. SRV answers use their
    /// lowest priority only (the others are backups, RFC 2782).
    pub fn follow(self: &Arc<Self>, mut rx: tokio::sync::watch::Receiver<Resolution>) {
        self.apply(&rx.borrow_and_update());
        *self.dns.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx.clone());
        let pool = Arc::downgrade(self);
        let mut alive = self._alive.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = alive.changed() => return,
                }
                let Some(pool) = pool.upgrade() else { return };
                let resolution = rx.borrow_and_update().clone();
                pool.apply(&resolution);
            }
        });
    }

    /// Probes every endpoint each interval, until the pool is dropped. Does
    /// nothing when the pool has no health check configured.
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(check) = self.health_check.clone() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let mut alive = self._alive.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = alive.changed() => return,
                }
                let Some(pool) = pool.upgrade() else { return };
                let members = pool.members.load_full();
                let probes = members
                    .backends
                    .iter()
                    .map(|b| b.probe(&pool.connector, &check));
                futures_util::future::join_all(probes).await;
            }
        });
    }

    fn apply(&self, resolution: &Resolution) {
        let best = resolution.endpoints.iter().map(|d| d.priority).min();
        let endpoints: Vec<_> = resolution
            .endpoints
            .iter()
            .filter(|d| Some(d.priority) == best)
            .map(|d| (d.addr.clone(), d.weight))
            .collect();
        self.set_endpoints(&endpoints);
    }

    /// Sends `req`, trying again elsewhere when that is provably safe: when
    /// nothing was sent (no connection, or hyper handed the request back), or when
    /// a body-less safe request failed before its response (reset, timeout, or a
    /// status in `retry_statuses`). Each further try goes to an endpoint not tried
    /// yet, or (after a reset, never after a timeout or a status) a fresh
    /// connection to a tried one when none is left; each spends from the budget.
    pub async fn send(&self, req: Request<B>) -> Result<Response<UpstreamBody>, Error> {
        let _admitted = self.admit()?;
        match self.request_timeout {
            None => self.send_tries(req).await,
            Some(after) => tokio::time::timeout(after, self.send_tries(req))
                .await
                .unwrap_or(Err(Error::Deadline { after })),
        }
    }

    async fn send_tries(&self, req: Request<B>) -> Result<Response<UpstreamBody>, Error> {
        self.budget.deposit();
        let replay = Replay::capture(&req);
        let safe_replay = replay.as_ref().filter(|r| r.idempotent);
        let mut tried = Tried::default();
        let mut req = req;
        let members = self.members.load_full();
        let key = req
            .extensions()
            .get::<HashKey>()
            .map_or_else(|| fastrand::u64(..), |k| k.0);
        loop {
            let Some((i, admit)) = self.choose(&members, &tried, key) else {
                return Err(Error::NoEndpoints {
                    pool: self.name.clone(),
                });
            };
            let backend = &members.backends[i];
            let fresh = tried.contains(i);
            tried.push(i);
            let mut attempt = Attempt::new(backend, admit);
            let result = backend
                .exchange(
                    &self.connector,
                    req,
                    fresh,
                    self.response_timeout,
                    replay.as_ref(),
                )
                .await;
            // A timeout is worth another try only on another endpoint: the same
            // slow one would just get the request twice.
            let (error, again, elsewhere_only) = match result {
                Ok(resp) => {
                    if is_sick_answer(resp.status()) {
                        // A reachable endpoint answering errors: eject it unless
                        // that would leave less than the minimum share available.
                        attempt.answered_with_error(self.may_eject(&members));
                    } else {
                        attempt.succeeded();
                    }
                    match safe_replay {
                        Some(r) if self.retry_statuses.contains(&resp.status()) => {
                            let error = Error::Status {
                                endpoint: backend.addr.to_string(),
                                status: resp.status(),
                            };
                            if !self.has_untried(&members, &tried) || !self.may_retry(&tried) {
                                return Ok(resp);
                            }
                            (error, r.rebuild(), true)
                        }
                        _ => return Ok(resp),
                    }
                }
                Err(Failed::Unsent(req, error)) => {
                    attempt.failed_if(error.is_connect());
                    (error, *req, false)
                }
                Err(Failed::Sent { error, reused }) => {
                    // A stale pooled connection is not the endpoint's fault; a timeout is.
                    let timeout = matches!(error, Error::Timeout { .. });
                    attempt.failed_if(!reused || timeout);
                    match safe_replay {
                        Some(r) => (error, r.rebuild(), timeout),
                        None => return Err(error),
                    }
                }
            };
            if (elsewhere_only && !self.has_untried(&members, &tried)) || !self.may_retry(&tried) {
                return Err(error);
            }
            tracing::debug!(pool = %self.name, error = %error, "trying again on another connection");
            req = again;
        }
    }

    /// Whether one more endpoint may be ejected for error answers: at least
    /// `min_available_share` of the pool must stay in rotation (closed breakers;
    /// a half-open endpoint is still suspect and does not count).
    fn may_eject(&self, members: &Members<B>) -> bool {
        let now = now_ms();
        let n = members.backends.len();
        let up = members
            .backends
            .iter()
            .filter(|b| b.breaker().state(now) == State::Closed)
            .count();
        may_eject(up, n, self.min_available_share)
    }

    /// Whether an endpoint not tried yet could take a request now.
    fn has_untried(&self, members: &Members<B>, tried: &Tried) -> bool {
        let now = now_ms();
        let available = available(members, now);
        (0..members.backends.len()).any(|i| !tried.contains(i) && available(i))
    }

    /// Whether another try is allowed: tries left, and budget left (counted).
    fn may_retry(&self, tried: &Tried) -> bool {
        if tried.len() > self.max_retries as usize {
            return false;
        }
        if !self.budget.withdraw(now_ms()) {
            self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Counts the request in flight, or refuses it when the pool is full.
    fn admit(&self) -> Result<InFlight, Error> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.in_flight.clone());
        if now >= self.max_requests {
            return Err(Error::Overloaded {
                pool: self.name.clone(),
                limit: self.max_requests,
            });
        }
        Ok(guard)
    }

    /// An endpoint whose breaker admits a request, preferring ones not tried yet.
    fn choose(&self, members: &Members<B>, tried: &Tried, key: u64) -> Option<(usize, Admit)> {
        let now = now_ms();
        let backends = &members.backends;
        let n = backends.len();
        let available = available(members, now);
        let untried = |i: usize| !tried.contains(i) && available(i);
        for _ in 0..3 {
            let i = self
                .pick(members, n, &untried, key)
                .or_else(|| self.pick(members, n, &available, key))?;
            match backends[i].breaker().try_acquire(now) {
                Admit::No => continue,
                admit => return Some((i, admit)),
            }
        }
        None
    }

    fn pick(
        &self,
        members: &Members<B>,
        n: usize,
        ok: &impl Fn(usize) -> bool,
        key: u64,
    ) -> Option<usize> {
        if let Some(table) = &members.maglev {
            return table.pick(key, ok);
        }
        match self.policy {
            Policy::RoundRobin => {
                pick_round_robin(n, self.next.fetch_add(1, Ordering::Relaxed), ok)
            }
            Policy::WeightedRoundRobin => members
                .wrr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pick(ok),
            Policy::LeastRequest | Policy::Maglev => {
                let now = now_ms();
                let backends = &members.backends;
                pick_p2c(
                    n,
                    ok,
                    |i| backends[i].load.cost(now),
                    |m| fastrand::usize(..m),
                )
            }
        }
    }

    /// Counters, discovery health and per-endpoint state, for metrics.
    pub fn status(&self) -> PoolStatus {
        let now = now_ms();
        let dns = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|rx| {
                let r = rx.borrow();
                DnsStatus {
                    failures: r.failures,
                    last_success_age: r.refreshed_at.elapsed(),
                    lookups: r.lookups,
                    failed_lookups: r.failed_lookups,
                }
            });
        PoolStatus {
            retries: self.retries.load(Ordering::Relaxed),
            budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
            dns,
            endpoints: self
                .members
                .load()
                .backends
                .iter()
                .map(|b| EndpointStatus {
                    endpoint: b.addr.to_string(),
                    healthy: b.healthy.load(Ordering::Relaxed),
                    ejections: b.ejections.load(Ordering::Relaxed),
                    breaker: b.breaker().state(now),
                    in_flight: b.load.in_flight.load(Ordering::Relaxed),
                    ewma: b.load.ewma(now),
                })
                .collect(),
        }
    }
}

/// Whether endpoint `i` may take a request now: its breaker admits one and it is
/// healthy. With no healthy endpoint at all, health is ignored (panic mode): a
/// broken health endpoint must not take the whole pool down.
fn available<B: ReqBody>(members: &Members<B>, now: u64) -> impl Fn(usize) -> bool + '_ {
    let backends = &members.backends;
    let any_healthy = backends.iter().any(|b| b.healthy.load(Ordering::Relaxed));
    move |i| {
        let b = &backends[i];
        (!any_healthy || b.healthy.load(Ordering::Relaxed)) && b.breaker().available(now)
    }
}

/// Answers that mean the endpoint is sick (as opposed to the request being wrong).
fn is_sick_answer(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// With `up` of `n` endpoints available, whether ejecting one more keeps at least
/// `min_share` of the pool available.
fn may_eject(up: usize, n: usize, min_share: f64) -> bool {
    let keep = (min_share.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    up.saturating_sub(1) >= keep.max(1)
}

/// A request counted against `max_requests` until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The endpoints a request has been tried on, in order (at most a few).
#[derive(Default)]
struct Tried {
    list: [usize; 8],
    len: usize,
}

impl Tried {
    fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }

    fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// One try's bookkeeping on its endpoint: the outcome feeds the breaker and the
/// latency estimate; a half-open probe abandoned midway is released on drop.
struct Attempt<'a, B: ReqBody> {
    backend: &'a Backend<B>,
    probe: bool,
    started: Instant,
    settled: bool,
}

impl<'a, B: ReqBody> Attempt<'a, B> {
    fn new(backend: &'a Backend<B>, admit: Admit) -> Self {
        Self {
            backend,
            probe: admit == Admit::Probe,
            started: Instant::now(),
            settled: false,
        }
    }

    fn succeeded(&mut self) {
        self.settled = true;
        self.backend.load.observe(self.started.elapsed(), now_ms());
        self.backend.breaker().on_success();
    }

    /// An error answer: a failure that opens the breaker only when `ejectable`.
    fn answered_with_error(&mut self, ejectable: bool) {
        self.settled = true;
        self.backend.load.observe(self.started.elapsed(), now_ms());
        let opened = self
            .backend
            .breaker()
            .on_failure_unless_last(now_ms(), ejectable);
        if opened {
            self.backend.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.backend.addr, "circuit breaker opened: endpoint answering errors");
        }
    }

    /// Records a failure when `counts`; otherwise only releases a probe.
    fn failed_if(&mut self, counts: bool) {
        self.settled = true;
        if !counts {
            if self.probe {
                self.backend.breaker().release_probe();
            }
            return;
        }
        // Failures are the breaker's business; the latency estimate learns only
        // from answers, so a restarted endpoint wins its traffic back at once.
        if self.backend.breaker().on_failure(now_ms()) {
            self.backend.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.backend.addr, "circuit breaker opened");
        }
    }
}

impl<B: ReqBody> Drop for Attempt<'_, B> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.backend.breaker().release_probe();
        }
    }
}

fn tls_connector(cfg: &PoolConfig) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match cfg.protocol {
        Protocol::H2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::H1 => vec![b"http/1.1".to_vec()],
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_keeps_the_minimum_share_available() {
        // Half of 4 must stay: with all 4 up one may go, then another, not a third.
        assert!(may_eject(4, 4, 0.5));
        assert!(may_eject(3, 4, 0.5));
        assert!(!may_eject(2, 4, 0.5));
        // Never the last one, whatever the share.
        assert!(!may_eject(1, 3, 0.0));
        assert!(may_eject(3, 3, 0.5));
        assert!(!may_eject(2, 3, 0.5), "ceil(1.5) = 2 must stay");
    }

    #[test]
    fn only_server_failures_mean_a_sick_endpoint() {
        for s in [500, 502, 503, 504] {
            assert!(
                is_sick_answer(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
        for s in [200, 404, 429, 501, 505] {
            assert!(
                !is_sick_answer(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
    }
}
