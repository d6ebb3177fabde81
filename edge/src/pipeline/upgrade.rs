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
//! What it must not do: offer an upgrade for a request with a body, on any
//! version but HTTP/1.1, or for a protocol not configured (those go on as plain
//! HTTP with `Upgrade` stripped, as every hop-by-hop field); cache it; or try it
//! again elsewhere once it was sent.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use super::admit::Admitted;
use super::headers;
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
}

/// `Some` when `req` offers an upgrade edge passes on: HTTP/1.1, `GET`, no
/// body (no `Content-Length` but 0, no `Transfer-Encoding`), `Connection`
/// naming `upgrade`, and one `Upgrade` field naming one configured protocol.
pub fn offered(cfg: &Upgrade, req: &Request<Body>) -> Option<Offer> {
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
    })
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
}

impl Tunnel {
    /// Puts back the fields that make a 101 an upgrade (`respond` strips every
    /// hop-by-hop field from the backend's answer first).
    /// A 101 has no body: a `Content-Length` on it would only confuse the client.
    pub fn restore(&self, h: &mut HeaderMap) {
        h.remove(CONTENT_LENGTH);
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
    headers::to_upstream(
        &mut req,
        cx.peer,
        &proxy.trusted,
        &cx.id,
        admitted.host.value,
    );
    let h = req.headers_mut();
    // `to_upstream` took every hop-by-hop field out; these two are this hop's
    // own. TE would need naming in Connection too, and a tunnel has no use for it.
    h.remove(TE);
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, offer.value);
    let mut resp = match Box::pin(route.pool.upgrade(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            metrics.upgrade(&offer.protocol, "failed");
            return Err(ProxyError::from(e));
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        metrics.upgrade(&offer.protocol, "declined");
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
    resp.extensions_mut().insert(Tunnel {
        protocol: offer.protocol,
        upstream,
        idle_timeout: proxy.upgrade.idle_timeout,
        upgrade,
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
}
