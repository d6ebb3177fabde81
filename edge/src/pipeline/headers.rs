//! Header work of the pipeline: request ids, the request's host, forwarding
//! headers and hop-by-hop stripping. Pure functions over header maps.

use std::net::IpAddr;

use http::header::{self, HeaderName, HOST};
use http::{HeaderMap, HeaderValue, Request, Uri, Version};
use ipnet::IpNet;

use crate::error::{ErrorKind, ProxyError};
use crate::text::push_ip;
pub use crate::wire::{strip_hop_by_hop, REQUEST_ID};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// RFC 8470 5.1: the request was (at some hop) received in TLS early data.
pub const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");
/// The client's id when it is well formed (1 to 128 of `A-Za-z0-9-_.:+/=`), else a new UUID.
///
/// Marked sensitive: HTTP/2 then sends it as a never-indexed literal, since a
/// value new on every request would only evict repeating fields from HPACK's
/// dynamic table (on the client's connection and on the shared upstream one).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = headers
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            (1..=128).contains(&b.len())
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
        })
        .cloned()
        .unwrap_or_else(|| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            // A hyphenated UUID is ASCII hex and dashes: always a valid header value.
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
        });
    id.set_sensitive(true);
    id
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

/// The request's framing as edge judges it, so the origin never sees a body
/// framed differently from what edge read: `Transfer-Encoding` other than
/// exactly `chunked` (`gzip, chunked`, `chunked, chunked`, `identity`), both
/// `Transfer-Encoding` and `Content-Length`, or a repeated or non-numeric
/// `Content-Length` is 400 (RFC 9112 6.1, 6.3).
pub fn framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let bad = |why| Err(ProxyError::new(ErrorKind::BadRequest, why));
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    let te_first = te.next();
    let cl_first = cl.next();
    if let Some(v) = te_first {
        if te.next().is_some() || !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return bad("Transfer-Encoding other than chunked");
        }
        if cl_first.is_some() {
            return bad("both Transfer-Encoding and Content-Length");
        }
    }
    if let Some(v) = cl_first {
        let digits = !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
        if cl.next().is_some() || !digits {
            return bad("invalid or repeated Content-Length");
        }
    }
    Ok(())
}

/// What the pipeline knows of the connection a request arrived on.
#[derive(Clone, Debug)]
pub struct Peer {
    pub ip: IpAddr,
    pub tls: bool,
    /// The TLS server name the connection asked for, when it named one.
    pub sni: Option<crate::tls::Sni>,
    /// The client certificate rustls verified (`[tls.client_auth]`), as the
    /// upstream header's value (`tls::client_cert_value`).
    pub client_cert: Option<HeaderValue>,
    /// This request arrived in TLS 1.3 early data (0-RTT), which an attacker
    /// can replay: set per request by the listener (`tls.early_data`).
    pub early_data: bool,
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then
/// the nearest address in `X-Forwarded-For` (right to left) that is not itself a
/// trusted proxy. A chain of nothing but trusted proxies gives its first entry;
/// an unparsable entry stops the walk at the last good address.
pub fn client_ip(h: &HeaderMap, peer: &Peer, trusted: &[IpNet]) -> IpAddr {
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

/// Forwarding headers edge owns: an untrusted peer's are removed, so neither
/// the origin nor the cache ever sees (or reflects) what a client claims about
/// where it came from. Every `x-forwarded-*` is in this set too (by prefix).
const FORWARDING: [HeaderName; 7] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-client-ip"),
];

fn is_forwarding(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-forwarded-") || FORWARDING.contains(name)
}

/// With `[tls.client_auth]` the client certificate header is edge's: whatever
/// the request carried is removed, and the connection's verified certificate,
/// if it has one, is what the upstream gets.
pub fn set_client_cert(h: &mut HeaderMap, name: &HeaderName, cert: Option<&HeaderValue>) {
    h.remove(name);
    if let Some(v) = cert {
        h.insert(name.clone(), v.clone());
    }
}

/// Turns a client request into the upstream request: hop-by-hop headers out,
/// forwarding headers owned by edge (an untrusted peer's removed, edge's own
/// in; a trusted proxy's kept and appended to), origin-form target, Host set
/// to the canonical authority. The one place for cached and uncached routes.
pub fn to_upstream<B>(
    req: &mut Request<B>,
    peer: &Peer,
    trusted: &[IpNet],
    id: &HeaderValue,
    trace: &super::trace::Trace,
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
    trace.set_upstream(h);
    let prior_for = trusted_peer.then(|| joined(h, &X_FORWARDED_FOR));
    let prior_forwarded = trusted_peer.then(|| joined(h, &header::FORWARDED));
    if !trusted_peer {
        // Collects nothing (and allocates nothing) for a clean request.
        let claimed: Vec<HeaderName> = h.keys().filter(|n| is_forwarding(n)).cloned().collect();
        for name in claimed {
            h.remove(name);
        }
    }
    let proto = if peer.tls { "https" } else { "http" };
    let mut ip = String::with_capacity(15);
    push_ip(&mut ip, peer.ip);
    let forwarded = forwarded_element(&ip, proto, &host);
    set_joined(h, X_FORWARDED_FOR, prior_for.flatten(), ip);
    set_joined(h, header::FORWARDED, prior_forwarded.flatten(), forwarded);
    if !(trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_HOST)) {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    h.insert(HOST, host);
    append_via(h, version);
    mark_early_data(h, peer.early_data);
}

/// RFC 8470 5.1: a request edge forwards before its client's handshake is
/// complete carries `Early-Data: 1`. One the client sent is kept as it is: an
/// intermediary MUST NOT remove it, and it can only make the origin more
/// careful (answer 425, which edge passes back), never less.
fn mark_early_data(h: &mut HeaderMap, early: bool) {
    if early {
        h.insert(EARLY_DATA, HeaderValue::from_static("1"));
    }
}

/// Every line of `name`, joined with `, `; `None` when there is none.
fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for line in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(line);
            }
            None => out = Some(line.to_owned()),
        }
    }
    out
}

/// Sets `name` to `prior, own` (or `own`).
fn set_joined(h: &mut HeaderMap, name: HeaderName, prior: Option<String>, own: String) {
    let value = match prior {
        Some(mut p) => {
            p.push_str(", ");
            p.push_str(&own);
            p
        }
        None => own,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

/// This hop's RFC 7239 element: `for=...;proto=...;host=...`, with the IPv6
/// node and any host with a port quoted (`:` is not a token character).
/// `ip` is the address as `push_ip` wrote it (IPv6 is the one with a `:`).
fn forwarded_element(ip: &str, proto: &str, host: &HeaderValue) -> String {
    let host = host.to_str().unwrap_or_default();
    let mut out = String::with_capacity(30 + ip.len() + host.len());
    out.push_str("for=");
    if ip.contains(':') {
        out.push_str("\"[");
        out.push_str(ip);
        out.push_str("]\"");
    } else {
        out.push_str(ip);
    }
    out.push_str(";proto=");
    out.push_str(proto);
    out.push_str(";host=");
    if host.contains(':') {
        out.push('"');
        out.push_str(host);
        out.push('"');
    } else {
        out.push_str(host);
    }
    out
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

/// The value of cookie `name` in the request's `Cookie` fields (the first one).
pub fn cookie<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    h.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}
