//! Byte ranges (RFC 9110 14) answered from a stored complete response, as pure
//! functions: parse `Range` against the stored length, honour `If-Range`, and
//! cut the stored response down to a 206 or a 416.
//!
//! Only a single range is answered here; several ranges would need a
//! multipart/byteranges body, so such requests go to the origin untouched.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, RANGE};
use http::{HeaderMap, Request, Response, StatusCode};
use upstream::Pool;

use super::flow::respond;
use super::metrics::Outcome;
use super::policy::{self, CacheControl, Use};
use super::{unix_now, Cache, Layer};
use crate::body::Body;
use crate::error::ProxyError;

impl Cache {
    /// A GET with `Range`: cut from a stored complete 200 that may answer
    /// as it is (fresh, or stale as the request allows); anything else goes to
    /// the origin as asked and is not stored (a 206 is never taken for the
    /// whole representation).
    pub(super) async fn ranged(
        self: &Arc<Self>,
        pool: &Arc<Pool<Body>>,
        key: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let found = self.lookup(key, req.headers()).await;
        let Some((entry, layer)) = found.entry.filter(|(e, _)| e.status == StatusCode::OK) else {
            return self.pass(pool, key, req).await;
        };
        let now = unix_now();
        let qcc = CacheControl::parse(req.headers());
        let (outcome, status) = match (entry.freshness().decide(entry.times, &qcc, now), layer) {
            (Use::Fresh, Layer::L1) => (Outcome::HitL1, "edge; hit; detail=l1"),
            (Use::Fresh, Layer::L2) => (Outcome::HitL2, "edge; hit; detail=l2"),
            (Use::Stale, _) => (Outcome::Stale, "edge; hit; detail=stale"),
            _ => return self.pass(pool, key, req).await,
        };
        let mut lines = req.headers().get_all(RANGE).iter();
        let ask = match (lines.next(), lines.next()) {
            (Some(_), _) if !if_range_holds(req.headers(), &entry.headers) => Ask::Ignore,
            (Some(v), None) => parse(v.as_bytes(), entry.body.len() as u64),
            _ => Ask::Several,
        };
        if ask == Ask::Several {
            return self.pass(pool, key, req).await;
        }
        self.metrics.outcome(outcome);
        let resp = respond(&entry, req.headers(), req.method(), now, status);
        if resp.status() != StatusCode::OK {
            // The client's own validator matched: its 304 comes before ranges.
            return Ok(resp);
        }
        Ok(cut(resp, &entry.body, ask))
    }
}

/// What a `Range` field asks of a representation of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// One satisfiable range: first and last byte, inclusive.
    Bytes(u64, u64),
    /// Syntactically fine, but no byte of it exists (416).
    Unsatisfiable,
    /// More than one range: left to the origin.
    Several,
    /// Not a bytes range this server understands: ignored (RFC 9110 14.2),
    /// the whole representation answers.
    Ignore,
}

/// Parses one `Range` value against a representation of `len` bytes.
pub fn parse(value: &[u8], len: u64) -> Ask {
    let Ok(text) = std::str::from_utf8(value) else {
        return Ask::Ignore;
    };
    let Some((unit, set)) = text.split_once('=') else {
        return Ask::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ask::Ignore;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match specs.as_slice() {
        [one] => spec(one, len),
        [] => Ask::Ignore,
        _ => Ask::Several,
    }
}

/// One `int-range` or `suffix-range`.
fn spec(text: &str, len: u64) -> Ask {
    let Some((first, last)) = text.split_once('-') else {
        return Ask::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // suffix-range: the last N bytes.
        return match digits(last) {
            Some(0) => Ask::Unsatisfiable,
            Some(_) if len == 0 => Ask::Unsatisfiable,
            Some(n) => Ask::Bytes(len.saturating_sub(n), len - 1),
            None => Ask::Ignore,
        };
    }
    let Some(first) = digits(first) else {
        return Ask::Ignore;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match digits(last) {
            Some(l) if l >= first => l,
            _ => return Ask::Ignore,
        }
    };
    if first >= len {
        return Ask::Unsatisfiable;
    }
    Ask::Bytes(first, last.min(len - 1))
}

/// 1*DIGIT; `None` for anything else (or a value past u64).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether `If-Range` lets the range apply to the stored response: an entity
/// tag must equal the stored strong ETag (a weak one never matches); a date
/// must equal the stored Last-Modified (RFC 9110 13.1.5). Absent: it applies.
pub fn if_range_holds(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(cond) = req.get(http::header::IF_RANGE) else {
        return true;
    };
    let cond = cond.as_bytes();
    if cond.starts_with(b"\"") || cond.starts_with(b"W/") {
        return match stored.get(ETAG) {
            Some(tag) => !cond.starts_with(b"W/") && tag.as_bytes() == cond,
            None => false,
        };
    }
    let asked = HeaderValue::from_bytes(cond).ok();
    let asked = asked.as_ref().and_then(policy::http_date);
    let modified = stored.get(LAST_MODIFIED).and_then(policy::http_date);
    matches!((asked, modified), (Some(a), Some(m)) if a == m)
}

/// Cuts a full answer from the store (`resp`, whose body is `body`) down to
/// what `ask` wants. `Several` and `Ignore` leave it whole.
pub fn cut(mut resp: Response<Body>, body: &Bytes, ask: Ask) -> Response<Body> {
    let len = body.len() as u64;
    match ask {
        Ask::Bytes(first, last) => {
            let part = body.slice(first as usize..=last as usize);
            let h = resp.headers_mut();
            h.insert(CONTENT_LENGTH, HeaderValue::from(part.len()));
            h.insert(
                CONTENT_RANGE,
                content_range(&format!("{first}-{last}"), len),
            );
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            *resp.body_mut() = Body::full(part);
            resp
        }
        Ask::Unsatisfiable => {
            let h = resp.headers_mut();
            h.insert(CONTENT_LENGTH, HeaderValue::from(0));
            h.insert(CONTENT_RANGE, content_range("*", len));
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            *resp.body_mut() = Body::Empty;
            resp
        }
        Ask::Several | Ask::Ignore => resp,
    }
}

fn content_range(what: &str, len: u64) -> HeaderValue {
    // Digits, `*`, `-` and `/` only: always a valid header value.
    HeaderValue::from_str(&format!("bytes {what}/{len}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[test]
    fn single_ranges_of_every_form() {
        assert_eq!(parse(b"bytes=0-1", 11), Ask::Bytes(0, 1));
        assert_eq!(parse(b"bytes=1-", 11), Ask::Bytes(1, 10));
        assert_eq!(parse(b"bytes=-1", 11), Ask::Bytes(10, 10));
        assert_eq!(parse(b"bytes=-100", 11), Ask::Bytes(0, 10));
        assert_eq!(parse(b"bytes=5-100", 11), Ask::Bytes(5, 10));
        assert_eq!(parse(b"Bytes = 2-3 ", 11), Ask::Bytes(2, 3));
        assert_eq!(parse(b"bytes=0-0,", 11), Ask::Bytes(0, 0));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(parse(b"bytes=11-", 11), Ask::Unsatisfiable);
        assert_eq!(parse(b"bytes=20-30", 11), Ask::Unsatisfiable);
        assert_eq!(parse(b"bytes=-0", 11), Ask::Unsatisfiable);
        assert_eq!(parse(b"bytes=0-", 0), Ask::Unsatisfiable);
        assert_eq!(parse(b"bytes=-5", 0), Ask::Unsatisfiable);
    }

    #[test]
    fn several_ranges_go_upstream_and_nonsense_is_ignored() {
        assert_eq!(parse(b"bytes=0-1,4-5", 11), Ask::Several);
        for bad in [
            &b"items=0-1"[..],
            b"bytes=",
            b"bytes=a-b",
            b"bytes=3-1",
            b"bytes=1",
            b"bytes=--1",
            b"bytes=+1-2",
            b"bytes 0-1",
            b"bytes=99999999999999999999999-",
            b"bytes=\xff-1",
        ] {
            assert_eq!(
                parse(bad, 11),
                Ask::Ignore,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn if_range_needs_the_same_strong_etag_or_date() {
        let lm = "Tue, 01 Dec 2026 10:00:00 GMT";
        let stored = h(&[("etag", "\"v1\""), ("last-modified", lm)]);
        assert!(if_range_holds(&h(&[]), &stored));
        assert!(if_range_holds(&h(&[("if-range", "\"v1\"")]), &stored));
        assert!(!if_range_holds(&h(&[("if-range", "\"v2\"")]), &stored));
        assert!(!if_range_holds(&h(&[("if-range", "W/\"v1\"")]), &stored));
        assert!(if_range_holds(&h(&[("if-range", lm)]), &stored));
        let other = "Tue, 01 Dec 2026 10:00:01 GMT";
        assert!(!if_range_holds(&h(&[("if-range", other)]), &stored));
        assert!(!if_range_holds(&h(&[("if-range", "nonsense")]), &stored));
        // A weak stored ETag never satisfies If-Range.
        let weak = h(&[("etag", "W/\"v1\"")]);
        assert!(!if_range_holds(&h(&[("if-range", "W/\"v1\"")]), &weak));
        assert!(!if_range_holds(&h(&[("if-range", "\"v1\"")]), &h(&[])));
    }

    fn full(body: &'static str) -> Response<Body> {
        let mut resp = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        resp
    }

    async fn text(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn cutting_gives_206_416_or_the_whole() {
        let body = Bytes::from_static(b"01234567890");
        let part = cut(full("01234567890"), &body, Ask::Bytes(2, 4));
        assert_eq!(part.status(), 206);
        assert_eq!(part.headers()[CONTENT_RANGE], "bytes 2-4/11");
        assert_eq!(part.headers()[CONTENT_LENGTH], "3");
        assert_eq!(text(part).await, "234");

        let none = cut(full("01234567890"), &body, Ask::Unsatisfiable);
        assert_eq!(none.status(), 416);
        assert_eq!(none.headers()[CONTENT_RANGE], "bytes */11");
        assert_eq!(text(none).await, "");

        let whole = cut(full("01234567890"), &body, Ask::Ignore);
        assert_eq!(whole.status(), 200);
        assert!(!whole.headers().contains_key(CONTENT_RANGE));
        assert_eq!(text(whole).await, "01234567890");
    }
}
