//! edge: an HTTP/3-first edge reverse proxy.
//!
//! The map (see DESIGN.md): `listener` turns h1/h2/h3 into `http::Request<Body>`;
//! `pipeline` decides and forwards through `upstream` pools; `error` is the one
//! place failures become responses; `config` is the only code that knows TOML.

pub mod access_log;
pub mod acme;
pub mod body;
pub mod cache;
pub mod cert_time;
pub mod chain;
pub mod config;
pub mod error;
pub mod forecast;
pub mod listener;
pub mod local_ca;
pub mod locality;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod shared;
pub mod start;
pub mod text;
pub mod tls;
pub mod wire;

#[cfg(test)]
mod layering;

pub use start::StartError as Error;
