//! Backend pools: where a request goes once the pipeline has chosen a pool.
//!
//! A [`Pool`] owns a set of endpoints and, per endpoint, pooled connections: one
//! shared HTTP/2 connection (h2c or h2 over TLS) or a stack of idle HTTP/1.1
//! connections. Pooled connections are closed after `idle_timeout` so they never
//! outlive the backend's own keep-alive, and a request that fails on a reused
//! connection before any response byte is retried once on a fresh connection.
//!
//! This crate never parses client headers and knows nothing about listeners: the
//! pipeline hands it a finished upstream request and gets a response or a
//! classified [`Error`] back.

mod body;
mod clock;
mod conn;
mod endpoint;
mod error;
mod pool;

pub use body::UpstreamBody;
pub use endpoint::{EndpointAddr, ParseEndpointError};
pub use error::Error;
pub use pool::{Pool, PoolConfig, Protocol};

/// The error type request and response bodies carry through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
