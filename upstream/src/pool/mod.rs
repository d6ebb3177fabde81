//! A pool: its endpoints, how one is chosen, and how a request survives one
//! endpoint's failure (retry elsewhere when provably safe, within a budget).
//!
//! Long (past 800 lines): choosing (`choose`, `pick`, locality) and sending
//! (`send_tries`, retries, the budget) share the members and the tried set;
//! `choose`/`pick` are the part to move into a `choose.rs` of their own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};

use crate::backend::{Backend, Failed, Replay};
use crate::balance::{pick_p2c, pick_round_robin, Policy};
use crate::body::UpstreamBody;
use crate::breaker::{Admit, BreakerConfig, State};
use crate::budget::RetryBudget;
use crate::clock::now_ms;
use crate::conn::{tls_connector, Connector};
use crate::discovery::Resolution;
use crate::endpoint::EndpointAddr;
use crate::error::{Blame, Error};
use crate::hash_ring::{self, Maglev};
use crate::health::HealthCheck;
use crate::locality::{self, Locality, RegionId, RttObserver, Served};
use crate::quic::QuicClient;
use crate::wrr::SmoothWrr;
use crate::BoxError;

mod attempt;
mod config;
mod hedge;
mod prewarm;
mod upgrade;

use attempt::{is_sick_answer, may_eject, Attempt, InFlight, Tried};
pub use config::{DnsStatus, EndpointStatus, PoolConfig, PoolStatus};
use hedge::Hedging;
pub use hedge::{HedgeAfter, HedgeConfig, LatencyWindow};

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
    /// HTTP/3 over QUIC, one shared QUIC connection per https endpoint; when
    /// QUIC cannot connect (UDP blocked, no QUIC listener) the request goes over
    /// TCP as `H2` would, and the endpoint stays on TCP for
    /// [`QUIC_BROKEN_FOR`](crate::QUIC_BROKEN_FOR).
    H3,
}

/// A set of endpoints serving one backend, with pooled connections to each.
pub struct Pool<B> {
    name: String,
    members: ArcSwap<Members<B>>,
    protocol: Protocol,
    breaker: BreakerConfig,
    /// HTTP/1.1 connections per endpoint at most.
    max_connections: usize,
    /// The discovery feeds, when endpoints come from DNS (kept for their status):
    /// one for the whole pool, or one per region.
    dns: Mutex<Vec<tokio::sync::watch::Receiver<Resolution>>>,
    /// A regional pool's endpoints by region, as configured or last discovered;
    /// `members` is rebuilt from it whenever one region's set changes.
    by_region: Mutex<BTreeMap<RegionId, Vec<(EndpointAddr, u32)>>>,
    overprovisioning: geo::spillover::Overprovisioning,
    /// Told the round trip of every passing health probe, by region.
    observer: OnceLock<Arc<dyn RttObserver>>,
    /// Dropped with the pool, which ends the task following discovery.
    _alive: tokio::sync::watch::Sender<()>,
    connector: Connector,
    response_timeout: Duration,
    request_timeout: Option<Duration>,
    min_available_share: f64,
    health_check: Option<HealthCheck>,
    policy: Policy,
    /// Whether a request's [`HashKey`] places it even when the policy is not Maglev.
    hash_keys: bool,
    next: AtomicUsize,
    max_retries: u32,
    retry_statuses: Vec<StatusCode>,
    budget: RetryBudget,
    max_requests: usize,
    in_flight: Arc<AtomicUsize>,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    /// Set when slow tries of replayable requests are hedged.
    hedging: Option<Hedging>,
}

/// The endpoint set requests go to, swapped whole when discovery changes it.
/// Requests in flight keep the snapshot they started with, so a removed endpoint
/// finishes them (drains) and closes its connections when the last one ends.
struct Members<B> {
    backends: Vec<Arc<Backend<B>>>,
    /// Smooth weighted round robin over `backends` (weights from config or SRV).
    wrr: Mutex<SmoothWrr>,
    /// The consistent-hash table, built for `Policy::Maglev` pools and for pools
    /// told to place requests by their [`HashKey`] (`PoolConfig::hash_keys`).
    maglev: Option<Maglev>,
    /// Each backend's region, in a regional pool (empty otherwise).
    region: Vec<RegionId>,
    /// The regions present, ascending.
    regions: Vec<RegionId>,
}

impl<B> Members<B> {
    fn new(
        backends: Vec<Arc<Backend<B>>>,
        weights: &[u32],
        policy: Policy,
        hash_keys: bool,
        region: Vec<RegionId>,
    ) -> Self {
        let mut regions = region.clone();
        regions.sort_unstable();
        regions.dedup();
        let maglev = (policy == Policy::Maglev || hash_keys).then(|| {
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
            region,
            regions,
        }
    }
}

/// The key a consistent-hash pool places a request by, set by the caller as a
/// request extension (e.g. a hash of the client address or a session id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey(pub u64);

/// Request extension: send the request to the endpoint with this stable id (see
/// [`ServedBy`]) while it is available — healthy, breaker not open, still a
/// member, and (in a regional pool) in the request's first-choice region or in a
/// region that is not spilling over (healthy share at or above the threshold).
/// When it is not, the pool's balancer chooses as if there were no preference. Only the
/// first try honours it; retries go elsewhere as usual, and when that first try
/// could not connect, the next one is not charged to the retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefer(pub u64);

/// Response extension on every upstream answer: the endpoint that answered and
/// how many tries the request took. The id is a hash of the endpoint's address,
/// so it is the same on every edge and across restarts, and it names no address
/// by itself (what a client may see); the address is for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedBy {
    pub id: u64,
    pub endpoint: Arc<str>,
    /// Tries the request took, this one included (1: no retry).
    pub tries: u32,
}

/// The stable id of the endpoint with this address label.
pub(crate) fn endpoint_id(label: &str) -> u64 {
    crate::hash_ring::key(label.as_bytes())
}

impl<B: ReqBody> Pool<B> {
    /// Builds a pool; fails only when an extra root certificate is unusable.
    pub fn new(cfg: PoolConfig) -> Result<Self, rustls::Error> {
        // Discovery may bring https endpoints later, so TLS is always ready.
        let tls = Some(tls_connector(&cfg, cfg.protocol)?);
        let tls_h1 = Some(tls_connector(&cfg, Protocol::H1)?);
        let quic = match cfg.protocol {
            Protocol::H3 => Some(QuicClient::new(&cfg)?),
            Protocol::H1 | Protocol::H2 => None,
        };
        let backends = cfg
            .endpoints
            .iter()
            .map(|addr| {
                Arc::new(Backend::new(
                    addr.clone(),
                    cfg.protocol,
                    cfg.breaker,
                    cfg.max_connections_per_endpoint,
                ))
            })
            .collect();
        let weights: Vec<u32> = (0..cfg.endpoints.len())
            .map(|i| cfg.weights.get(i).copied().unwrap_or(1))
            .collect();
        let mut by_region: BTreeMap<RegionId, Vec<(EndpointAddr, u32)>> = BTreeMap::new();
        for (i, &r) in cfg.regions.iter().enumerate() {
            if let Some(addr) = cfg.endpoints.get(i) {
                by_region
                    .entry(r)
                    .or_default()
                    .push((addr.clone(), weights[i]));
            }
        }
        let mut regions = cfg.regions.clone();
        regions.truncate(cfg.endpoints.len());
        Ok(Self {
            name: cfg.name,
            members: ArcSwap::from_pointee(Members::new(
                backends,
                &weights,
                cfg.policy,
                cfg.hash_keys,
                regions,
            )),
            protocol: cfg.protocol,
            breaker: cfg.breaker,
            max_connections: cfg.max_connections_per_endpoint,
            dns: Mutex::new(Vec::new()),
            by_region: Mutex::new(by_region),
            overprovisioning: cfg.overprovisioning,
            observer: OnceLock::new(),
            _alive: tokio::sync::watch::channel(()).0,
            connector: Connector {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                tls,
                tls_h1,
                max_pending: cfg.max_pending_connects,
                pending: AtomicUsize::new(0),
                queue: cfg.connection_queue,
                queue_timeout: cfg.connection_queue_timeout,
                quic,
            },
            request_timeout: cfg.request_timeout,
            min_available_share: cfg.min_available_share,
            response_timeout: cfg.response_timeout,
            health_check: cfg.health_check,
            policy: cfg.policy,
            hash_keys: cfg.hash_keys,
            next: AtomicUsize::new(0),
            max_retries: cfg.max_retries,
            retry_statuses: cfg.retry_statuses,
            budget: RetryBudget::new(cfg.retry_budget, cfg.retry_min_per_sec, now_ms()),
            max_requests: cfg.max_requests,
            in_flight: Arc::default(),
            retries: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
            hedging: cfg.hedge.map(Hedging::new),
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
        self.store_members(endpoints, Vec::new());
    }

    /// Replaces one region's endpoints in a regional pool; the other regions keep theirs.
    pub fn set_region_endpoints(&self, region: RegionId, endpoints: &[(EndpointAddr, u32)]) {
        let mut by_region = self.by_region.lock().unwrap_or_else(|p| p.into_inner());
        by_region.insert(region, endpoints.to_vec());
        let mut all = Vec::new();
        let mut regions = Vec::new();
        for (&r, set) in by_region.iter() {
            all.extend(set.iter().cloned());
            regions.extend(std::iter::repeat_n(r, set.len()));
        }
        self.store_members(&all, regions);
    }

    /// Whether endpoints are grouped by region (requests honour [`Locality`]).
    pub fn is_regional(&self) -> bool {
        !self.members.load().regions.is_empty()
    }

    /// Where the round trips of passing health probes go (once; later calls are ignored).
    pub fn observe_rtt(&self, observer: Arc<dyn RttObserver>) {
        let _ = self.observer.set(observer);
    }

    fn store_members(&self, endpoints: &[(EndpointAddr, u32)], regions: Vec<RegionId>) {
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
                        Arc::new(Backend::new(
                            addr.clone(),
                            self.protocol,
                            self.breaker,
                            self.max_connections,
                        ))
                    })
            })
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        self.members.store(Arc::new(Members::new(
            backends,
            &weights,
            self.policy,
            self.hash_keys,
            regions,
        )));
    }

    /// Takes endpoints from DNS discovery from now on: the current answer at
    /// once, then every change, until the pool is dropped. SRV answers use their
    /// lowest priority only (the others are backups, RFC 2782).
    pub fn follow(self: &Arc<Self>, rx: tokio::sync::watch::Receiver<Resolution>) {
        self.follow_in(None, rx);
    }

    /// Like [`Pool::follow`], for one region of a regional pool.
    pub fn follow_region(
        self: &Arc<Self>,
        region: RegionId,
        rx: tokio::sync::watch::Receiver<Resolution>,
    ) {
        self.follow_in(Some(region), rx);
    }

    fn follow_in(
        self: &Arc<Self>,
        region: Option<RegionId>,
        mut rx: tokio::sync::watch::Receiver<Resolution>,
    ) {
        self.apply(region, &rx.borrow_and_update());
        self.dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rx.clone());
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
                pool.apply(region, &resolution);
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
                let probes = members.backends.iter().map(|b| async {
                    let started = Instant::now();
                    b.probe(&pool.connector, &check)
                        .await
                        .then(|| started.elapsed())
                });
                let rtts = futures_util::future::join_all(probes).await;
                if let Some(observer) = pool.observer.get() {
                    for (i, rtt) in rtts.into_iter().enumerate() {
                        if let (Some(rtt), Some(&r)) = (rtt, members.region.get(i)) {
                            observer.observe(r, rtt);
                        }
                    }
                }
            }
        });
    }

    fn apply(&self, region: Option<RegionId>, resolution: &Resolution) {
        let best = resolution.endpoints.iter().map(|d| d.priority).min();
        let endpoints: Vec<_> = resolution
            .endpoints
            .iter()
            .filter(|d| Some(d.priority) == best)
            .map(|d| (d.addr.clone(), d.weight))
            .collect();
        match region {
            None => self.set_endpoints(&endpoints),
            Some(r) => self.set_region_endpoints(r, &endpoints),
        }
    }

    /// Sends `req`, trying again elsewhere when that is provably safe: when
    /// nothing was sent (no connection, or hyper handed the request back), or when
    /// a body-less safe request failed before its response (reset, timeout, or a
    /// status in `retry_statuses`). Each further try goes to an endpoint not tried
    /// yet, or (after a reset, never after a timeout or a status) a fresh
    /// connection to a tried one when none is left; each spends from the budget.
    /// In a hedging pool, a replayable try slow to answer gets a hedge beside it
    /// (see `hedge`), spending from the same tries and budget.
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
        let key = req.extensions().get::<HashKey>().map(|k| k.0);
        let regions = self.preference(&members, req.extensions().get::<Locality>());
        let mut prefer = req.extensions().get::<Prefer>().map(|p| p.0);
        // A request pinned to one endpoint (sticky) whose first try was never
        // sent (or, if safe, was broken off before any answer)
        // gets its next try free of the budget: a burst of pinned users meeting
        // a freshly dead endpoint must not drain it for everyone, and neither
        // put load on anyone.
        let mut pinned = prefer.is_some() || (key.is_some() && members.maglev.is_some());
        loop {
            let (i, admit) =
                self.choose_or_fail(&members, &tried, key, regions.as_deref(), prefer.take())?;
            let fresh = tried.contains(i);
            tried.push(i);
            let attempt = Attempt::new(&members.backends[i], admit);
            let (i, mut attempt, result) = match self.hedging.as_ref().zip(safe_replay) {
                Some((hedging, r)) => {
                    let choose =
                        |t: &Tried| self.choose(&members, t, key, regions.as_deref(), None);
                    let first = (i, attempt, fresh, req);
                    // Boxed: only hedging pools pay for the race's future.
                    Box::pin(hedging.race(self, &members, &mut tried, first, r, choose)).await
                }
                None => {
                    let result = members.backends[i]
                        .exchange(
                            &self.connector,
                            req,
                            fresh,
                            self.response_timeout,
                            replay.as_ref(),
                        )
                        .await;
                    (i, attempt, result)
                }
            };
            let backend = &members.backends[i];
            match &result {
                Ok(_) => {
                    if let Some(h) = &self.hedging {
                        h.observe(attempt.elapsed(), now_ms());
                    }
                }
                Err(failed) => attempt.failed(failed),
            }
            // A timeout is worth another try only on another endpoint: the same
            // slow one would just get the request twice.
            let (error, again, elsewhere_only) = match result {
                Ok(mut resp) => {
                    self.mark_served(&members, i, &tried, &mut resp);
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
                // Not the endpoint's fault, and no other endpoint would do better:
                // no breaker, no budget, no retry.
                Err(Failed::Unsent(_, error) | Failed::Sent { error, .. })
                    if error.blame() != Blame::Upstream =>
                {
                    return Err(error);
                }
                Err(Failed::Unsent(unsent, error)) => {
                    // Never sent (a failed connect, or a pooled connection
                    // hyper saw close before the request left): nobody was
                    // loaded, whatever the cause.
                    if pinned && self.has_untried(&members, &tried) {
                        pinned = false;
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(pool = %self.name, error = %error, "pinned endpoint unreachable; choosing another");
                        req = *unsent;
                        continue;
                    }
                    (error, *unsent, false)
                }
                Err(Failed::Sent { error, .. }) => {
                    let timeout = matches!(error, Error::Timeout { .. });
                    // A pinned endpoint that just died can leave a pooled
                    // connection edge has not seen close yet, or accept in the
                    // kernel a connection it never serves: a safe request sent
                    // on it is broken off before any answer. Like a failed
                    // connect, that loaded nobody: the next try is free.
                    if let Some(r) = safe_replay.filter(|_| pinned && !timeout) {
                        if self.has_untried(&members, &tried) {
                            pinned = false;
                            self.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(pool = %self.name, error = %error, "pinned endpoint's connection broke off; choosing another");
                            req = r.rebuild();
                            continue;
                        }
                    }
                    match safe_replay {
                        Some(r) => (error, r.rebuild(), timeout),
                        None => return Err(error),
                    }
                }
            };
            pinned = false;
            if (elsewhere_only && !self.has_untried(&members, &tried)) || !self.may_retry(&tried) {
                return Err(error);
            }
            tracing::debug!(pool = %self.name, error = %error, "trying again on another connection");
            req = again;
        }
    }

    /// Names the endpoint that answered (and its region) on the response.
    fn mark_served<T>(
        &self,
        members: &Members<B>,
        i: usize,
        tried: &Tried,
        resp: &mut Response<T>,
    ) {
        let backend = &members.backends[i];
        resp.extensions_mut().insert(ServedBy {
            id: backend.id,
            endpoint: backend.label.clone(),
            tries: u32::try_from(tried.len()).unwrap_or(u32::MAX),
        });
        if let Some(&region) = members.region.get(i) {
            resp.extensions_mut().insert(Served {
                endpoint: backend.label.clone(),
                region,
            });
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

    /// The regions of a regional pool in the order this request tries them: the
    /// one its spillover share drew, then the rest nearest first. `None` for a
    /// pool without regions.
    fn preference(
        &self,
        members: &Members<B>,
        locality: Option<&Locality>,
    ) -> Option<Vec<RegionId>> {
        if members.regions.is_empty() {
            return None;
        }
        let mut order: Vec<RegionId> = locality
            .map(|l| {
                l.order
                    .iter()
                    .copied()
                    .filter(|r| members.regions.binary_search(r).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        for &r in &members.regions {
            if !order.contains(&r) {
                order.push(r);
            }
        }
        let available = available(members, now_ms());
        let healthy = |r: RegionId| {
            let mut total = 0;
            let mut up = 0;
            for (i, _) in members.region.iter().enumerate().filter(|(_, &x)| x == r) {
                total += 1;
                up += usize::from(available(i));
            }
            (up, total)
        };
        Some(locality::preference(
            &order,
            healthy,
            self.overprovisioning,
            fastrand::f64(),
        ))
    }

    /// An endpoint whose breaker admits a request, preferring ones not tried yet,
    /// and in a regional pool, regions in the order of `regions`.
    /// [`Self::choose`], or the error a request gets when no endpoint can take it.
    fn choose_or_fail(
        &self,
        members: &Members<B>,
        tried: &Tried,
        key: Option<u64>,
        regions: Option<&[RegionId]>,
        prefer: Option<u64>,
    ) -> Result<(usize, Admit), Error> {
        self.choose(members, tried, key, regions, prefer)
            .ok_or_else(|| Error::NoEndpoints {
                pool: self.name.clone(),
            })
    }

    fn choose(
        &self,
        members: &Members<B>,
        tried: &Tried,
        key: Option<u64>,
        regions: Option<&[RegionId]>,
        prefer: Option<u64>,
    ) -> Option<(usize, Admit)> {
        let now = now_ms();
        let backends = &members.backends;
        let n = backends.len();
        let available = available(members, now);
        // A pin outside the region this request would go to first is kept while
        // its own region is not spilling over (its healthy share at or above the
        // threshold): stickiness wins over locality until that region is in trouble.
        let region_holds = |i: usize| {
            let (Some(order), Some(&r)) = (regions, members.region.get(i)) else {
                return regions.is_none();
            };
            if order.first() == Some(&r) {
                return true;
            }
            let (mut up, mut total) = (0, 0);
            for (j, _) in members.region.iter().enumerate().filter(|(_, &x)| x == r) {
                total += 1;
                up += usize::from(available(j));
            }
            geo::spillover::healthy_share(up, total) >= self.overprovisioning.threshold()
        };
        if let Some(id) = prefer {
            let preferred = (0..n)
                .find(|&i| backends[i].id == id)
                .filter(|&i| available(i) && region_holds(i));
            if let Some(i) = preferred {
                match backends[i].breaker().try_acquire(now) {
                    Admit::No => {}
                    admit => return Some((i, admit)),
                }
            }
        }
        let untried = |i: usize| !tried.contains(i) && available(i);
        let pick = |ok: &dyn Fn(usize) -> bool| match regions {
            None => self.pick(members, n, &ok, key),
            Some(order) => order.iter().find_map(|&r| {
                self.pick(members, n, &|i: usize| members.region[i] == r && ok(i), key)
            }),
        };
        for _ in 0..3 {
            let i = pick(&untried).or_else(|| pick(&available))?;
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
        key: Option<u64>,
    ) -> Option<usize> {
        if let Some(table) = &members.maglev {
            match key {
                Some(k) => return table.pick(k, ok),
                None if self.policy == Policy::Maglev => return table.pick(fastrand::u64(..), ok),
                None => {}
            }
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
        // Several feeds (one per region) report as one: the worst of each.
        let dns = self
            .dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|rx| {
                let r = rx.borrow();
                DnsStatus {
                    failures: r.failures,
                    last_success_age: r.refreshed_at.elapsed(),
                    lookups: r.lookups,
                    failed_lookups: r.failed_lookups,
                }
            })
            .reduce(|a, b| DnsStatus {
                failures: a.failures.max(b.failures),
                last_success_age: a.last_success_age.max(b.last_success_age),
                lookups: a.lookups + b.lookups,
                failed_lookups: a.failed_lookups + b.failed_lookups,
            });
        let (hedges_won, hedges_lost) = self.hedging.as_ref().map_or((0, 0), Hedging::counts);
        PoolStatus {
            hedges_won,
            hedges_lost,
            retries: self.retries.load(Ordering::Relaxed),
            h3_fallbacks: self
                .connector
                .quic
                .as_ref()
                .map_or(0, |q| q.fallbacks.load(Ordering::Relaxed)),
            budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
            dns,
            endpoints: self
                .members
                .load()
                .backends
                .iter()
                .map(|b| EndpointStatus {
                    endpoint: b.label.to_string(),
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
