//! Header work of the pipeline: request ids, the request's host, forwarding
//! headers and hop-by-hop stripping. Pure functions over header maps.

use std::net::IpAddr;

use http::header::{self, HeaderName, HOST};
use http::{HeaderMap, HeaderValue, Request, Uri, Version};
use ipnet::IpNet;

use crate::error::{ErrorKind, ProxyError};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 7.6.1 plus the legacy ones) removed in both directions.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// The client's id when it is well formed (1 to 128 of `A-Za-z0-9-_.:+/=`), else a new UUID.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        let ok = (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c));
        if ok {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is ASCII hex and dashes: always a valid header value.
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The configured header limits, the same on h1, h2 and h3, so every protocol
/// answers an oversized request with the same 431 page carrying the request id.
/// Size is counted as RFC 9113 and RFC 9114 do: name + value + 32 per field.
/// (The protocol libraries keep a looser limit of their own as a hard backstop.)
pub fn within_limits(
    headers: &HeaderMap,
    max_fields: usize,
    max_bytes: usize,
) -> Result<(), ProxyError> {
    if headers.len() > max_fields {
        return Err(ProxyError::new(
            ErrorKind::HeadersTooLarge,
            "too many header fields",
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    if bytes > max_bytes {
        return Err(ProxyError::new(
            ErrorKind::HeadersTooLarge,
            "header section too large",
        ));
    }
    Ok(())
}

/// The request's host as sent (for Host and X-Forwarded-Host) and normalised (for
/// routing). Missing, repeated-and-different, or conflicting with the authority: 400.
pub fn host(req: &Request<impl Sized>) -> Result<(HeaderValue, String), ProxyError> {
    let bad = |why: &str| ProxyError::new(ErrorKind::BadRequest, why);
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if let Some(first) = header {
        if hosts.any(|other| other != first) {
            return Err(bad("conflicting Host headers"));
        }
    }
    let authority = req.uri().authority();
    let value = match (header, authority) {
        (Some(h), Some(a)) => {
            let h_str = h.to_str().map_err(|_| bad("Host is not valid text"))?;
            if !h_str.eq_ignore_ascii_case(a.as_str()) {
                return Err(bad("Host header and request authority differ"));
            }
            h.clone()
        }
        (Some(h), None) => h.clone(),
        (None, Some(a)) => {
            HeaderValue::from_str(a.as_str()).map_err(|_| bad("request authority is not valid"))?
        }
        (None, None) => return Err(bad("missing Host header")),
    };
    let text = value.to_str().map_err(|_| bad("Host is not valid text"))?;
    if text.is_empty() || text.contains('@') {
        return Err(bad("Host must be a host name"));
    }
    let normalized = crate::config::normalize_host(text);
    Ok((value, normalized))
}

/// Removes hop-by-hop headers: Connection, every header it names, the fixed list,
/// and TE unless it is exactly `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

/// What the pipeline knows of the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    pub tls: bool,
    /// The TLS server name the connection asked for, when it named one.
    pub sni: Option<crate::tls::Sni>,
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then
/// the nearest address in `X-Forwarded-For` (right to left) that is not itself a
/// trusted proxy. A chain of nothing but trusted proxies gives its first entry;
/// an unparsable entry stops the walk at the last good address.
pub fn client_ip(h: &HeaderMap, peer: Peer, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip) {
        return peer.ip;
    }
    let mut client = peer.ip;
    let lines: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// Turns a client request into the upstream request: hop-by-hop headers out,
/// forwarding headers in, origin-form target, Host set to the client's host.
pub fn to_upstream<B>(
    req: &mut Request<B>,
    peer: Peer,
    trusted: &[IpNet],
    id: &HeaderValue,
    host: HeaderValue,
) {
    let version = req.version();
    let trusted_peer = trusted.iter().any(|n| n.contains(&peer.ip));
    let pq = req.uri().path_and_query().cloned();
    *req.uri_mut() = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    // The client's 100-continue is answered here (hyper sends 100 when the body
    // is first read); the upstream client would not wait for a 100 of its own.
    h.remove(header::EXPECT);
    h.insert(REQUEST_ID, id.clone());
    forwarded_for(h, peer.ip, trusted_peer);
    if !(trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if peer.tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_HOST)) {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    h.insert(HOST, host);
    append_via(h, version);
}

fn forwarded_for(h: &mut HeaderMap, ip: IpAddr, trusted_peer: bool) {
    let mut value = String::new();
    if trusted_peer {
        for prior in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            value.push_str(prior);
            value.push_str(", ");
        }
    }
    value.push_str(&ip.to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// Adds this hop to `Via`, naming the protocol version it was received with.
pub fn append_via(h: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_09 => "0.9 edge",
        Version::HTTP_10 => "1.0 edge",
        Version::HTTP_2 => "2 edge",
        Version::HTTP_3 => "3 edge",
        _ => "1.1 edge",
    };
    let prior: Vec<&str> = h
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        HeaderValue::from_static(hop)
    } else {
        match HeaderValue::from_str(&format!("{}, {hop}", prior.join(", "))) {
            Ok(v) => v,
            Err(_) => HeaderValue::from_static(hop),
        }
    };
    h.insert(header::VIA, value);
}

#[cfg(test)]
mod tests;
