//! Harness for edge's integration tests.
//!
//! Each test starts the real `edge` binary on port 0 with certificates generated at
//! test time, an in-process origin on a free loopback port, and real clients (curl,
//! gtlsclient, Python HTTP/3 clients). Waits are conditions polled with a deadline;
//! every process is killed when the test drops it.

pub mod clients;
pub mod dns;
pub mod edge;
pub mod load;
pub mod origin;
pub mod origin_process;
pub mod pebble;
pub mod pki;
pub mod powerdns;
pub mod process;
pub mod prometheus;
pub mod raw_origin;
pub mod redis;
pub mod scripted;

pub use clients::{
    curl, curl_timeout, curl_transfer, gtlsclient, h3_requests, h3_requests_as, h3_requests_sni,
    h3_requests_streaming, h3_requests_with, python_json, raw_http, s_client, tls_args,
    CurlResponse, H3Response, Streaming, PYTHON_TIMEOUT, REQUEST_TIMEOUT,
};
pub use dns::{DnsPool, Dnsmasq};
pub use edge::{
    assert_check_refuses, assert_one_line_naming, parse_listening, run_edge, toml_path, toml_str,
    workspace_root, Edge, EdgeConfig, PoolConfig, RouteConfig,
};
pub use load::{errors, served_by, Answers, KeepAlive, Load, Reply};
pub use origin::{echo_header, echo_headers, Origin, OriginOptions, OriginTls};
pub use origin_process::{OriginLog, OriginProcess};
pub use pebble::Pebble;
pub use pki::{LeafFiles, Pki};
pub use process::{eventually, poll_until, wait_for, wait_until};
pub use raw_origin::RawOrigin;

/// An origin with `options`, and edge in front of it with the config `configure`
/// makes from the default one (all listeners, pool `default` → the origin).
pub async fn start_pair(
    options: OriginOptions,
    configure: impl FnOnce(EdgeConfig) -> EdgeConfig,
) -> anyhow::Result<(Origin, Edge)> {
    let origin = Origin::start_with(options).await?;
    let edge = Edge::start(&configure(EdgeConfig::new(origin.url()))).await?;
    Ok((origin, edge))
}

/// [`start_pair`] with the default origin and config.
pub async fn start_default() -> anyhow::Result<(Origin, Edge)> {
    start_pair(OriginOptions::default(), |config| config).await
}
