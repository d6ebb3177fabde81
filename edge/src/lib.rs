//! edge: an HTTP/3-first edge reverse proxy.
//!
//! The map (see DESIGN.md): `listener` turns h1/h2/h3 into `http::Request<Body>`;
//! `pipeline` decides and forwards through `upstream` pools; `error` is the one
//! place failures become responses; `config` is the only code that knows TOML.

pub mod body;
pub mod cache;
pub mod cert_time;
pub mod config;
pub mod error;
pub mod listener;
pub mod local_ca;
pub mod locality;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod tls;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] listener::BindError),
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
