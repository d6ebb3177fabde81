//! Phase `admit`: what every request must pass before it is routed — its id,
//! the header limits and framing rules, one canonical authority the connection
//! vouches for, a normalised path, and the client's address as edge trusts it.
//! It reads and rewrites only the request; it never looks at routes or pools.
//! A request that arrived in TLS early data is judged first (`early_data`).

use std::net::IpAddr;
use std::time::Instant;

use http::{Method, Request};

use super::authority::{self, Authority};
use super::headers::{self, Peer};
use super::{path, Cx, Proxy, NO_BACKEND};
use crate::body::Body;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{Metrics, Proto};

/// What `admit` established about a request, for the phases after it.
pub struct Admitted {
    /// The canonical authority (routing host, and the value sent upstream).
    pub host: Authority,
    /// The client: the peer, or the address a trusted proxy in front of us
    /// names; never what an untrusted peer claims.
    pub client: IpAddr,
    /// A configured protocol upgrade the request offers (phase `upgrade`
    /// takes it instead of `forward`).
    pub upgrade: Option<super::upgrade::Offer>,
}

impl Cx<'_> {
    /// The context of a request that just arrived: its id comes first, so every
    /// answer from here on (even a refusal by `admit`) carries it. With `log`,
    /// the access log's record starts with what the request says of itself.
    pub fn new(peer: Peer, req: &Request<Body>, log: bool) -> Self {
        let id = headers::request_id(req.headers());
        let trace = super::trace::Trace::of(req.headers());
        // Header values and the URI are cheap clones (shared bytes): the line is
        // formatted only when it is written.
        let log = log.then(|| {
            let h = req.headers();
            Box::new(crate::access_log::Record {
                started: Some(std::time::SystemTime::now()),
                request_id: Some(id.clone()),
                trace_id: Some(trace.id),
                client: Some(peer.ip),
                protocol: match req.version() {
                    http::Version::HTTP_2 => "HTTP/2",
                    http::Version::HTTP_3 => "HTTP/3",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                tls: peer.tls,
                method: req.method().clone(),
                uri: req.uri().clone(),
                host: h.get(http::header::HOST).cloned(),
                user_agent: h.get(http::header::USER_AGENT).cloned(),
                ..Default::default()
            })
        });
        Self {
            started: Instant::now(),
            version: req.version(),
            id,
            trace,
            peer,
            backend: NO_BACKEND,
            placed: None,
            sticky: None,
            gray: None,
            compress: None,
            log,
            request_bytes: None,
            grpc: crate::error::is_grpc(req.headers()),
        }
    }
}

/// Header limits → framing → authority (421 when SNI does not cover it) →
/// path normalisation → client address → a protocol upgrade it offers.
pub async fn admit(
    proxy: &Proxy,
    cx: &Cx<'_>,
    req: &mut Request<Body>,
) -> Result<Admitted, ProxyError> {
    headers::within_limits(req.headers(), proxy.max_headers, proxy.max_header_bytes)?;
    headers::framing(req.headers())?;
    let host = authority::of(req, cx.peer.tls)?;
    // A host the connection's certificate does not vouch for was sent here by
    // mistake (a reused connection, a hostile SNI/Host split): RFC 9110 421.
    if cx.peer.sni.is_some_and(|sni| !sni.admits(&host.host)) {
        return Err(ProxyError::new(
            ErrorKind::MisdirectedRequest,
            "this host is not served on this connection",
        ));
    }
    path::normalize(req, proxy.path)?;
    // Read before `forward` rewrites X-Forwarded-For.
    let client = headers::client_ip(req.headers(), &cx.peer, &proxy.trusted);
    let upgrade = super::upgrade::offered(&proxy.upgrade, req);
    Ok(Admitted {
        host,
        client,
        upgrade,
    })
}

/// A request that arrived in TLS early data (0-RTT) may be a replay of one an
/// attacker captured: only a safe method (RFC 9110 9.2.1: GET, HEAD, OPTIONS;
/// no body, no effect) goes on, and `to_upstream` marks it `Early-Data: 1`.
/// Anything else is answered 425 here, before a route, a limit or a backend
/// sees it; the client sends it again once its handshake is done (RFC 8470 5.2).
pub fn early_data(cx: &Cx<'_>, metrics: &Metrics, req: &Request<Body>) -> Result<(), ProxyError> {
    if !cx.peer.early_data {
        return Ok(());
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let proto = Proto::of(req.version());
    if safe {
        metrics.early_data(proto, "accepted");
        return Ok(());
    }
    metrics.early_data(proto, "too_early");
    Err(ProxyError::new(
        ErrorKind::TooEarly,
        "an unsafe method in TLS early data",
    ))
}
