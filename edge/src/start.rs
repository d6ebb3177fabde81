//! Why the edge could not start: the one error of start-up (and of a refused
//! reload), below every module that can fail that way.

use std::net::SocketAddr;

use crate::tls;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({transport})")]
pub struct BindError {
    pub addr: SocketAddr,
    pub transport: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Certificates or TLS configuration.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// An upstream pool could not be built.
    #[error("pool {pool}")]
    Pool {
        pool: String,
        #[source]
        source: rustls::Error,
    },
    /// A DNS pool's first lookup failed.
    #[error("pool {pool}")]
    Discovery {
        pool: String,
        #[source]
        source: upstream::discovery::DiscoveryError,
    },
    /// Anything else that stops start-up, described.
    #[error("{0}")]
    Setup(String),
}
