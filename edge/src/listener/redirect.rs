//! `http_mode = "redirect"`: the plaintext listener answers every request with a
//! 308 to the same host and path on https, so a client that typed `http://` ends
//! up on TLS without the request reaching a backend. ACME HTTP-01 challenge paths
//! are the exception: a CA validates them over plain HTTP, so they go on to the
//! pipeline.
//!
//! Must not: build the Location from anything but a Host that parses as an
//! authority (no header injection, no open redirect to another scheme).

use http::header::{CONTENT_LENGTH, HOST, LOCATION};
use http::{Request, Response, StatusCode};

use crate::body::Body;

/// The path prefix of ACME HTTP-01 challenges (RFC 8555 8.3).
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The 308 (or 400 without a usable Host) for `req`, or `None` to pass it on.
pub fn to_https<B>(req: &Request<B>, https_port: u16) -> Option<Response<Body>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if req.uri().path().starts_with(ACME_CHALLENGE) {
        return None;
    }
    let location = host_of(req).and_then(|host| {
        let target = match https_port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        };
        http::HeaderValue::try_from(target).ok()
    });
    let mut resp = Response::new(Body::full(bytes::Bytes::new()));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, http::HeaderValue::from_static("0"));
    match location {
        Some(l) => {
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(LOCATION, l);
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    Some(resp)
}

/// The answer to an ACME HTTP-01 validation request (RFC 8555 8.3): the key
/// authorization of an open order's token, else 404; `None` for other paths.
pub fn acme_answer<B>(
    challenges: &crate::acme::Challenges,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let token = req.uri().path().strip_prefix(ACME_CHALLENGE)?;
    let answer = challenges.http01(token);
    let status = match answer {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    };
    let answer = answer.unwrap_or_default();
    let len = http::HeaderValue::from(answer.len());
    let mut resp = Response::new(Body::full(bytes::Bytes::from(answer)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_LENGTH, len);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// The request's host without its port (HTTP/1.1 Host, else the h2 authority),
/// with IPv6 literals in brackets.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.headers().get(HOST) {
        Some(v) => v.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    let authority: http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, uri: &str, port: u16) -> (u16, Option<String>) {
        let req = Request::get(uri)
            .header(HOST, host)
            .body(())
            .unwrap_or_default();
        match to_https(&req, port) {
            Some(r) => (
                r.status().as_u16(),
                r.headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            ),
            None => (0, None),
        }
    }

    #[test]
    fn same_host_and_path_on_https() {
        assert_eq!(
            location("Example.test:8080", "/a/b?c=1", 443),
            (308, Some("https://example.test/a/b?c=1".to_owned()))
        );
        assert_eq!(
            location("[::1]:80", "/", 8443),
            (308, Some("https://[::1]:8443/".to_owned()))
        );
        assert_eq!(location("a b", "/", 443), (400, None));
        assert_eq!(location("user@evil.test", "/", 443), (400, None));
    }

    #[test]
    fn acme_challenges_pass_through() {
        assert_eq!(
            location("example.test", "/.well-known/acme-challenge/tok", 443),
            (0, None)
        );
    }
}
