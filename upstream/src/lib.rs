//! Backend pools: where a request goes once the pipeline has chosen a pool.
//!
//! A [`Pool`] owns a set of endpoints and, per endpoint, pooled connections: one
//! shared HTTP/2 connection (h2c or h2 over TLS), one shared QUIC connection
//! (HTTP/3, falling back to TCP when QUIC fails) or a stack of idle HTTP/1.1
//! connections. Pooled connections are closed after `idle_timeout` so they never
//! outlive the backend's own keep-alive.
//!
//! Sending a request: `balance` picks an endpoint whose `breaker` admits it
//! (least-request on peak-EWMA latency by default); when a try fails and sending
//! again is provably safe, the pool tries another endpoint (or a fresh
//! connection) while the retry `budget` allows. Decision logic (balance, breaker,
//! budget) is pure and takes `now`; `pool` and `backend` drive it.
//!
//! This crate never parses client headers and knows nothing about listeners: the
//! pipeline hands it a finished upstream request and gets a response or a
//! classified [`Error`] back.

mod backend;
pub mod balance;
mod body;
pub mod breaker;
mod budget;
mod clock;
mod conn;
pub mod discovery;
mod endpoint;
mod error;
pub mod h3_read;
pub mod hash_ring;
pub mod health;
mod interim;
pub mod locality;
mod pool;
mod quic;
pub mod wrr;

pub use balance::Policy;
pub use body::UpstreamBody;
pub use breaker::BreakerConfig;
pub use endpoint::{EndpointAddr, ParseEndpointError};
pub use error::{Blame, Error};
pub use health::HealthCheck;
pub use interim::Interim;
pub use locality::{Locality, RegionId, RttObserver, Served};
pub use pool::{
    DnsStatus, EndpointStatus, HashKey, HedgeAfter, HedgeConfig, LatencyWindow, Pool, PoolConfig,
    PoolStatus, Prefer, Protocol, ReqBody, ServedBy,
};
pub use quic::QUIC_BROKEN_FOR;

/// The error type request and response bodies carry through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
