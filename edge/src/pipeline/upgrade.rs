//! Phase `upgrade`: HTTP/1.1 protocol upgrades (WebSocket, RFC 6455) for the
//! protocols in `upgrade.protocols`. In place of `forward` for a request that
//! `admit` found to offer one: the request goes to the backend with its
//! `Upgrade` and `Connection: upgrade`, on a connection of its own.
//!
//! The client's connection becomes a tunnel only when the backend answered
//! `101 Switching Protocols` naming the offered protocol: then the response
//! carries a [`Tunnel`] for the listener, which copies bytes once the 101 is
//! written. Any other answer is an ordinary response and the client's
//! connection stays HTTP (the Pingora CVE-2026-2833 class: a proxy that tunnels
//! on the request's say-so lets a backend's 200 smuggle the next request).
//!
//! An HTTP/2 or HTTP/3 extended CONNECT for `websocket` (RFC 8441, RFC 9220;
//! edge announces SETTINGS_ENABLE_CONNECT_PROTOCOL on both when `websocket` is
//! configured) is bridged to the same HTTP/1.1 upgrade: the backend gets a
//! `GET` with a fresh `Sec-WebSocket-Key`, and its 101 becomes the client's
//! 200. Any other answer is passed on, except a 2xx: to such a client a 2xx is
//! the tunnel, so a backend that did not switch gets 502 instead.
//!
//! What it must not do: offer an upgrade for a request with a body, on
//! HTTP/1.0, or for a protocol not configured (those go on as plain HTTP with
//! `Upgrade` stripped, as every hop-by-hop field); cache it; or try it again
//! elsewhere once it was sent.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Proxy};
use crate::body::Body;
use crate::config::Upgrade;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Metrics;

/// An upgrade the client offered for a configured protocol.
pub struct Offer {
    /// The configured protocol name (the metrics label).
    protocol: String,
    /// The client's `Upgrade` field, sent on as it is.
    value: HeaderValue,
    /// An HTTP/2 or HTTP/3 extended CONNECT, bridged to an HTTP/1.1 upgrade.
    extended: bool,
}

/// `Some` when `req` offers an upgrade edge passes on: HTTP/1.1, `GET`, no
/// body (no `Content-Length` but 0, no `Transfer-Encoding`), `Connection`
/// naming `upgrade`, and one `Upgrade` field naming one configured protocol.
pub fn offered(cfg: &Upgrade, req: &Request<Body>) -> Option<Offer> {
    if matches!(req.version(), Version::HTTP_2 | Version::HTTP_3) {
        return extended_connect(cfg, req);
    }
    let h = req.headers();
    let mut lines = h.get_all(UPGRADE).iter();
    let value = lines.next()?;
    if lines.next().is_some() || req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let declared_body = h.contains_key(TRANSFER_ENCODING)
        || h.get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if declared_body || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    if !has_token(h, CONNECTION, "upgrade") {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    if text.contains(',') {
        return None;
    }
    let name = text.split('/').next().unwrap_or_default().trim();
    let protocol = cfg.allows(name)?.to_owned();
    Some(Offer {
        protocol,
        value: value.clone(),
        extended: false,
    })
}

/// An HTTP/2 or HTTP/3 `CONNECT` with `:protocol = websocket` (RFC 8441,
/// RFC 9220; the HTTP/3 listener names it in hyper's extension too), when
/// `websocket` is configured: the only protocol edge can bridge to HTTP/1.1.
fn extended_connect(cfg: &Upgrade, req: &Request<Body>) -> Option<Offer> {
    let named = req.extensions().get::<hyper::ext::Protocol>()?;
    if req.method() != Method::CONNECT || !named.as_str().eq_ignore_ascii_case("websocket") {
        return None;
    }
    let protocol = cfg.allows("websocket")?.to_owned();
    Some(Offer {
        protocol,
        value: HeaderValue::from_static("websocket"),
        extended: true,
    })
}

const SEC_WEBSOCKET_KEY: http::HeaderName = http::HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: http::HeaderName =
    http::HeaderName::from_static("sec-websocket-accept");
const SEC_WEBSOCKET_VERSION: http::HeaderName =
    http::HeaderName::from_static("sec-websocket-version");

/// A fresh `Sec-WebSocket-Key`: 16 random bytes (a v4 UUID's), base64.
fn websocket_key() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut out = Vec::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    // Base64 is ASCII: always a valid header value.
    HeaderValue::from_bytes(&out)
        .unwrap_or_else(|_| HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="))
}

/// Whether a comma-separated field names `token` (case-insensitive).
fn has_token(h: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// An upgrade the backend agreed to, on its 101 response, for the listener:
/// it writes the 101, then joins the client's connection to `upstream`.
#[derive(Clone)]
pub struct Tunnel {
    /// The configured protocol name (the metrics label).
    pub protocol: String,
    /// The backend's side, once its connection hands the socket over.
    pub upstream: hyper::upgrade::OnUpgrade,
    /// A tunnel with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// The backend's `Upgrade` field, for the client's 101.
    upgrade: HeaderValue,
    /// Bridged from an extended CONNECT (h2 or h3): the client gets a 200.
    extended: bool,
}

impl Tunnel {
    /// Puts back the fields that make a 101 an upgrade (`respond` strips every
    /// hop-by-hop field from the backend's answer first).
    /// A 101 has no body: a `Content-Length` on it would only confuse the client.
    pub fn restore(&self, h: &mut HeaderMap) {
        h.remove(CONTENT_LENGTH);
        if self.extended {
            return;
        }
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, self.upgrade.clone());
    }
}

/// Sends the upgrade request through the route's pool and hands back the
/// backend's answer: a 101 with a [`Tunnel`], or an ordinary response.
pub async fn upgrade(
    proxy: &Proxy,
    cx: &Cx<'_>,
    metrics: &Metrics,
    admitted: Admitted,
    route: &Route<'_>,
    offer: Offer,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    cx.to_upstream(proxy, admitted.host.value, &mut req);
    let h = req.headers_mut();
    // `to_upstream` took every hop-by-hop field out; these two are this hop's
    // own. TE would need naming in Connection too, and a tunnel has no use for it.
    h.remove(TE);
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, offer.value);
    if offer.extended {
        h.insert(SEC_WEBSOCKET_KEY, websocket_key());
        h.entry(SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
        *req.method_mut() = Method::GET;
        *req.version_mut() = Version::HTTP_11;
    }
    let mut resp = match Box::pin(route.pool.upgrade(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            metrics.upgrade(&offer.protocol, "failed");
            return Err(ProxyError::from(e));
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        metrics.upgrade(&offer.protocol, "declined");
        if offer.extended && resp.status().is_success() {
            return Err(ProxyError::new(
                ErrorKind::UpstreamFailed,
                "the backend answered a WebSocket upgrade without switching protocols",
            ));
        }
        return Ok(resp.map(Body::Upstream));
    }
    let agreed = resp.headers().get(UPGRADE).cloned().filter(|v| {
        let name = v.to_str().unwrap_or_default().split('/').next();
        name.is_some_and(|n| n.trim().eq_ignore_ascii_case(&offer.protocol))
    });
    let Some(upgrade) = agreed else {
        metrics.upgrade(&offer.protocol, "refused");
        return Err(ProxyError::new(
            ErrorKind::UpstreamFailed,
            "the backend switched to a protocol the client did not offer",
        ));
    };
    let upstream = hyper::upgrade::on(&mut resp);
    metrics.upgrade(&offer.protocol, "switched");
    if offer.extended {
        // RFC 8441 5: the key and accept are HTTP/1.1's; a 200 opens the stream.
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().remove(SEC_WEBSOCKET_ACCEPT);
    }
    resp.extensions_mut().insert(Tunnel {
        protocol: offer.protocol,
        upstream,
        idle_timeout: proxy.upgrade.idle_timeout,
        upgrade,
        extended: offer.extended,
    });
    Ok(resp.map(Body::Upstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(Method::GET).uri("/ws");
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(Body::default()).expect("request")
    }

    #[test]
    fn offers_only_a_configured_protocol_without_a_body() {
        let cfg = Upgrade::default();
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        let offer = offered(&cfg, &req(&ws)).expect("offered");
        assert_eq!(offer.protocol, "websocket");
        let mut with = ws.to_vec();
        with.push(("content-length", "5"));
        assert!(offered(&cfg, &req(&with)).is_none(), "a body");
        let mut chunked = ws.to_vec();
        chunked.push(("transfer-encoding", "chunked"));
        assert!(offered(&cfg, &req(&chunked)).is_none(), "a chunked body");
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert!(offered(&cfg, &req(&h2c)).is_none(), "not configured");
        let two = [("connection", "upgrade"), ("upgrade", "websocket, h2c")];
        assert!(offered(&cfg, &req(&two)).is_none(), "two protocols");
        let no_conn = [("upgrade", "websocket")];
        assert!(
            offered(&cfg, &req(&no_conn)).is_none(),
            "no Connection: upgrade"
        );
        let mut post = req(&ws);
        *post.method_mut() = Method::POST;
        assert!(offered(&cfg, &post).is_none(), "not GET");
        let mut h10 = req(&ws);
        *h10.version_mut() = Version::HTTP_10;
        assert!(offered(&cfg, &h10).is_none(), "HTTP/1.0");
        let off = Upgrade {
            protocols: Vec::new(),
            ..Upgrade::default()
        };
        assert!(offered(&off, &req(&ws)).is_none(), "upgrades off");
    }

    #[test]
    fn an_extended_connect_for_websocket_is_offered_on_h2_and_h3() {
        let cfg = Upgrade::default();
        let mut connect = req(&[("sec-websocket-version", "13")]);
        *connect.method_mut() = Method::CONNECT;
        *connect.version_mut() = Version::HTTP_2;
        assert!(offered(&cfg, &connect).is_none(), "no :protocol");
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let offer = offered(&cfg, &connect).expect("offered");
        assert!(offer.extended);
        let mut other = req(&[]);
        *other.method_mut() = Method::CONNECT;
        *other.version_mut() = Version::HTTP_2;
        other
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("connect-udp"));
        assert!(offered(&cfg, &other).is_none(), "only websocket is bridged");
        *connect.version_mut() = Version::HTTP_3;
        assert!(
            offered(&cfg, &connect).is_some_and(|o| o.extended),
            "RFC 9220"
        );
    }

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        let a = websocket_key();
        let b = websocket_key();
        assert_ne!(a, b);
        let a = a.to_str().expect("ascii");
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="), "{a}");
    }
}
