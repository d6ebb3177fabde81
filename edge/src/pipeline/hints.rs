//! 103 Early Hints (RFC 8297), part of phase `route`: a listener puts an
//! [`upstream::Interim`] on each request whose client can take interim
//! responses; the route's `early_hints` keeps it there for the pool to hand
//! the backend's 1xx to, or takes it off. What a client is sent of each is
//! decided here, [`early_hint`], whichever listener writes it.

use http::{Request, Response, StatusCode};

use crate::body::Body;
use crate::config::EarlyHints;

/// Takes the listener's sink off a request the route passes no hints on for.
pub(super) fn by_route(policy: EarlyHints, req: &mut Request<Body>) {
    if !policy.passes(req.version()) {
        req.extensions_mut().remove::<upstream::Interim>();
    }
}

/// The most field bytes (names and values) a 103 passed on may carry: real
/// ones hold a few Link fields; with at most 8 hints a request (the
/// listeners' limit) this bounds what one request makes a connection hold.
pub const MAX_HINT_BYTES: usize = 8 * 1024;

/// What a client gets of a backend's interim response: a 103 with its
/// hop-by-hop fields removed; any other 1xx is dropped (100 Continue is
/// edge's own to send, 101 only ever answers an upgrade, 102 is obsolete),
/// and so is a 103 past [`MAX_HINT_BYTES`].
pub fn early_hint(mut res: Response<()>) -> Option<Response<()>> {
    if res.status() != StatusCode::EARLY_HINTS {
        return None;
    }
    crate::wire::strip_hop_by_hop(res.headers_mut());
    let bytes: usize = res
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    (bytes <= MAX_HINT_BYTES).then_some(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_103_passes_and_without_hop_by_hop_fields() {
        let mut hint = Response::new(());
        *hint.status_mut() = StatusCode::EARLY_HINTS;
        hint.headers_mut()
            .insert("link", HeaderValue::from_static("</a.css>; rel=preload"));
        hint.headers_mut()
            .insert("connection", HeaderValue::from_static("x-private"));
        hint.headers_mut()
            .insert("x-private", HeaderValue::from_static("1"));
        let passed = early_hint(hint).expect("a 103 passes");
        assert!(passed.headers().contains_key("link"));
        assert!(!passed.headers().contains_key("connection"));
        assert!(!passed.headers().contains_key("x-private"));
        let mut other = Response::new(());
        *other.status_mut() = StatusCode::PROCESSING;
        assert!(early_hint(other).is_none());
        let mut big = Response::new(());
        *big.status_mut() = StatusCode::EARLY_HINTS;
        let value = "x".repeat(MAX_HINT_BYTES);
        big.headers_mut()
            .insert("link", HeaderValue::try_from(value).expect("a valid value"));
        assert!(early_hint(big).is_none(), "past the size bound");
    }
}
