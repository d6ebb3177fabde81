//! Response compression, part of `respond`: what the client accepts is read
//! from the request in `route` (the request itself is gone by `respond`), and
//! the answer is compressed on its way out, after the cache, so one stored
//! identity copy serves every encoding and a hit is compressed as a miss is.
//!
//! A response is compressed only when all hold: status 200, no
//! `Content-Encoding` or `Content-Range` from the origin, no
//! `Cache-Control: no-transform`, a media type the route lists, a known
//! length of at least `compress_min_bytes` (an unknown one, streamed, is
//! compressed), and a request that is neither HEAD nor a Range request. Such
//! a response gets `Vary: Accept-Encoding` whether or not this client asked
//! for an encoding, so a cache behind edge never hands one client's encoding
//! to another. Compressed, it loses `Content-Length` and `Accept-Ranges`, and
//! a strong `ETag` becomes weak (as nginx does): the bytes differ from the
//! origin's, the representation does not.

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;

use crate::body::encode::Encoded;
use crate::body::Body;
use crate::config::{Compress, Encoding};
use crate::metrics::Metrics;

/// What `respond` needs of the request to compress its answer.
pub struct Asked<'p> {
    pub policy: &'p Compress,
    /// The encoding to use, if the client accepts one the route offers.
    pub chosen: Option<Encoding>,
    /// HEAD or a Range request: never compressed (but still varies).
    pub as_is: bool,
}

/// Reads the request's `Accept-Encoding` against a compressing route.
pub fn asked<'p, B>(policy: &'p Compress, req: &Request<B>) -> Asked<'p> {
    let as_is = req.method() == Method::HEAD || req.headers().contains_key(RANGE);
    Asked {
        policy,
        chosen: negotiate(&policy.encodings, req.headers()),
        as_is,
    }
}

/// The accepted encoding with the highest q-value, ties going to the route's
/// order (RFC 9110 12.5.3): a coding's own q, else `*`'s, else not accepted;
/// `q=0` refuses. No `Accept-Encoding` at all asks for identity.
pub fn negotiate(offered: &[Encoding], headers: &HeaderMap) -> Option<Encoding> {
    let mut own = [None::<u16>; 3];
    let mut any = None::<u16>;
    let mut seen = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        seen = true;
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let mut q = Some(1000);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = qvalue(v.trim());
                    }
                }
            }
            let Some(q) = q else { continue };
            let slot = if coding == "*" {
                &mut any
            } else if coding.eq_ignore_ascii_case("x-gzip") {
                &mut own[Encoding::Gzip as usize]
            } else {
                match Encoding::ALL
                    .iter()
                    .find(|e| coding.eq_ignore_ascii_case(e.token()))
                {
                    Some(e) => &mut own[*e as usize],
                    None => continue,
                }
            };
            *slot = Some(q);
        }
    }
    if !seen {
        return None;
    }
    let mut best: Option<(Encoding, u16)> = None;
    for e in offered {
        let q = own[*e as usize].or(any).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*e, q));
        }
    }
    best.map(|(e, _)| e)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scaled = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(scaled),
        "1" if scaled == 0 => Some(1000),
        _ => None,
    }
}

/// Whether the route compresses this response (for some client).
fn compressible(policy: &Compress, resp: &Response<Body>) -> bool {
    let h = resp.headers();
    if resp.status() != StatusCode::OK
        || h.contains_key(CONTENT_ENCODING)
        || h.contains_key(CONTENT_RANGE)
        || no_transform(h)
    {
        return false;
    }
    let Some(ct) = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if !policy.compresses(ct) {
        return false;
    }
    let len = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| resp.body().size_hint().exact());
    len.is_none_or(|n| n >= policy.min_bytes)
}

fn no_transform(h: &HeaderMap) -> bool {
    h.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is already there.
fn vary_accept_encoding(h: &mut HeaderMap) {
    let listed = h.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !listed {
        h.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The response as the client gets it: compressed when the rules allow.
pub fn apply(asked: &Asked<'_>, metrics: &Metrics, resp: Response<Body>) -> Response<Body> {
    if !compressible(asked.policy, &resp) {
        return resp;
    }
    let (mut head, body) = resp.into_parts();
    let h = &mut head.headers;
    vary_accept_encoding(h);
    let Some(encoding) = asked.chosen.filter(|_| !asked.as_is) else {
        return Response::from_parts(head, body);
    };
    h.remove(CONTENT_LENGTH);
    h.remove(ACCEPT_RANGES);
    h.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    if let Some(tag) = h.get(ETAG) {
        if tag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(ETAG, v);
            }
        }
    }
    let tally = metrics.compressed(encoding);
    let body = Body::boxed(Encoded::new(body, encoding, Some(tally)));
    Response::from_parts(head, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    fn pick(offered: &[Encoding], accept: &[&str]) -> Option<Encoding> {
        let mut h = HeaderMap::new();
        for a in accept {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(a).expect("value"));
        }
        negotiate(offered, &h)
    }

    #[test]
    fn the_highest_q_wins_and_ties_go_to_the_route_order() {
        assert_eq!(
            pick(&ALL, &["gzip, deflate, br, zstd"]),
            Some(Encoding::Zstd)
        );
        assert_eq!(pick(&ALL, &["gzip, br"]), Some(Encoding::Br));
        assert_eq!(pick(&ALL, &["gzip;q=1, br;q=0.5"]), Some(Encoding::Gzip));
        assert_eq!(pick(&ALL, &["gzip", "br;q=0.9"]), Some(Encoding::Gzip));
        assert_eq!(
            pick(&[Encoding::Gzip, Encoding::Br], &["br, gzip"]),
            Some(Encoding::Gzip)
        );
        assert_eq!(pick(&ALL, &["X-GZIP"]), Some(Encoding::Gzip));
    }

    #[test]
    fn star_identity_and_refusals() {
        assert_eq!(pick(&ALL, &["*"]), Some(Encoding::Zstd));
        assert_eq!(pick(&ALL, &["*;q=0.5, zstd;q=0"]), Some(Encoding::Br));
        assert_eq!(pick(&ALL, &["identity"]), None);
        assert_eq!(pick(&ALL, &["identity;q=0"]), None);
        assert_eq!(pick(&ALL, &["gzip;q=0"]), None);
        assert_eq!(pick(&ALL, &[""]), None);
        assert_eq!(pick(&ALL, &[]), None);
        assert_eq!(pick(&ALL, &["deflate"]), None);
        assert_eq!(pick(&[Encoding::Gzip], &["br, zstd"]), None);
    }

    #[test]
    fn malformed_q_values_drop_the_item() {
        assert_eq!(qvalue("0.001"), Some(1));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue("0.1234"), None);
        assert_eq!(qvalue("2"), None);
        assert_eq!(qvalue("x"), None);
        assert_eq!(pick(&ALL, &["zstd;q=2, gzip"]), Some(Encoding::Gzip));
    }
}
