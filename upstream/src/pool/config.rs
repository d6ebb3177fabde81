//! A pool's settings (independent of any file format) and the status it reports.

use std::time::Duration;

use http::StatusCode;
use rustls::pki_types::CertificateDer;

use geo::spillover::Overprovisioning;

use super::{HedgeConfig, Protocol};
use crate::balance::Policy;
use crate::breaker::{BreakerConfig, State};
use crate::endpoint::EndpointAddr;
use crate::health::HealthCheck;
use crate::locality::RegionId;

/// A pool's settings, independent of any config file format.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub endpoints: Vec<EndpointAddr>,
    /// Weights of `endpoints`, for `Policy::WeightedRoundRobin` and `Policy::Maglev`
    /// (missing entries weigh 1).
    pub weights: Vec<u32>,
    pub protocol: Protocol,
    /// TCP plus TLS (or, for h3, the QUIC handshake: past it the request goes over TCP).
    pub connect_timeout: Duration,
    /// Until the response head, per try.
    pub response_timeout: Duration,
    /// Pooled connections idle this long are closed: keep it below the backend's keep-alive.
    pub idle_timeout: Duration,
    /// Certificates trusted for https endpoints in addition to the public web roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub policy: Policy,
    /// Place a request carrying a [`crate::HashKey`] by consistent hashing even
    /// when `policy` is not Maglev (sticky sessions keyed by a header or the
    /// client address); requests without one are balanced by `policy`.
    pub hash_keys: bool,
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
    /// Each endpoint's region, in a pool spread over regions (empty otherwise);
    /// see [`crate::locality`].
    pub regions: Vec<RegionId>,
    /// How much of a region may fail before its traffic spills to the next.
    pub overprovisioning: Overprovisioning,
    /// HTTP/1.1 connections open to one endpoint at most (idle and busy).
    pub max_connections_per_endpoint: usize,
    /// Requests that may wait for a connection of an endpoint at that cap...
    pub connection_queue: usize,
    /// ...each for at most this long; then 503 (local overload, not the endpoint's fault).
    pub connection_queue_timeout: Duration,
    /// Hedge slow tries of body-less idempotent requests (off when None).
    pub hedge: Option<HedgeConfig>,
}

impl PoolConfig {
    /// A pool with every setting at its default: h2, 1 s connect, 30 s response,
    /// 90 s idle, least-request balancing, 2 retries within a 20% budget, breakers
    /// opening after 5 consecutive failures; at most 1024 HTTP/1.1 connections per
    /// endpoint, with up to 1024 requests waiting at most 1 s for one.
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
            hash_keys: false,
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
            regions: Vec::new(),
            overprovisioning: Overprovisioning::default(),
            max_connections_per_endpoint: 1024,
            connection_queue: 1024,
            connection_queue_timeout: Duration::from_secs(1),
            hedge: None,
        }
    }
}

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
    /// Times QUIC to an endpoint of an h3 pool failed while TCP worked, so its
    /// requests moved to TCP (h2) for [`crate::QUIC_BROKEN_FOR`].
    pub h3_fallbacks: u64,
    /// Hedges sent that answered first, and hedges sent that did not (cancelled or failed).
    pub hedges_won: u64,
    pub hedges_lost: u64,
    pub budget_exhausted: u64,
    pub dns: Option<DnsStatus>,
    pub endpoints: Vec<EndpointStatus>,
}
