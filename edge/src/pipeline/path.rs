//! Path normalisation before routing (`client.normalize_path`), so the path a
//! route prefix is matched on is the path the origin is sent: `/public/../admin`
//! cannot pass a `/public` route and arrive as `/admin`. RFC 3986 6.2.2:
//! percent-encoded unreserved characters decoded (so `%2e%2e` is `..`), other
//! escapes upper-cased, dot segments removed (5.2.4), repeated slashes merged.
//! Encoded `/`, `\` and NUL are refused (or kept as escapes). The query is not
//! touched. Off, the target is forwarded byte for byte.

use http::uri::PathAndQuery;
use http::{Request, Uri};

use crate::config::EncodedSeparators;
use crate::error::{ErrorKind, ProxyError};

/// How the pipeline treats request paths, from `[client]`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub normalize: bool,
    pub separators: EncodedSeparators,
}

fn bad(why: &'static str) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, why)
}

/// Rewrites the request's path in place when normalising changes it.
pub fn normalize<B>(req: &mut Request<B>, policy: Policy) -> Result<(), ProxyError> {
    let Some(pq) = req.uri().path_and_query().filter(|_| policy.normalize) else {
        return Ok(());
    };
    let path = pq.path();
    // The common clean path costs one scan and no allocation.
    let clean = path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path.contains("/.");
    if clean || !path.starts_with('/') {
        return Ok(());
    }
    let mut text = normalized(path, policy.separators)?;
    if let Some(q) = pq.query() {
        text.push('?');
        text.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(text).map_err(|_| bad("invalid path"))?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad("invalid path"))?;
    Ok(())
}

/// The normalised form of an absolute path.
pub fn normalized(path: &str, separators: EncodedSeparators) -> Result<String, ProxyError> {
    let decoded = decode_unreserved(path, separators)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            // An empty segment is a repeated slash, or the trailing one.
            "" | "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(result)
}

/// Decodes escapes of unreserved characters, upper-cases the others, and
/// applies the policy to `%2F`, `%5C` and `%00`.
fn decode_unreserved(path: &str, separators: EncodedSeparators) -> Result<String, ProxyError> {
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: u8| char::from(c).to_digit(16);
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(bad("malformed percent-encoding in path"));
        };
        // Both digits are below 16, so the byte fits.
        let byte = u8::try_from(hi * 16 + lo).unwrap_or(0);
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte);
        } else if matches!(byte, b'/' | b'\\' | 0) && separators == EncodedSeparators::Reject {
            return Err(bad("encoded /, \\ or NUL in path"));
        } else {
            out.push(b'%');
            out.extend_from_slice(format!("{byte:02X}").as_bytes());
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| bad("path is not valid text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> String {
        normalized(path, EncodedSeparators::Reject).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn dot_segments_repeated_slashes_and_unreserved_escapes() {
        let cases = [
            ("/public/../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%20b%3f", "/a%20b%3F"),
            ("/a/.hidden/..x", "/a/.hidden/..x"),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw), want, "{raw}");
        }
    }

    #[test]
    fn encoded_separators_follow_the_policy() {
        for raw in ["/a%2Fb", "/a%2fb", "/a%5cb", "/a%00b", "/a%zz", "/a%2"] {
            let e = normalized(raw, EncodedSeparators::Reject).expect_err(raw);
            assert_eq!(e.kind, ErrorKind::BadRequest);
        }
        let kept = normalized("/a%2fb/../c", EncodedSeparators::Keep).ok();
        assert_eq!(kept.as_deref(), Some("/c"));
        let kept = normalized("/a%2fb", EncodedSeparators::Keep).ok();
        assert_eq!(kept.as_deref(), Some("/a%2Fb"));
    }

    #[test]
    fn the_request_keeps_its_query_and_authority() {
        let policy = Policy {
            normalize: true,
            separators: EncodedSeparators::Reject,
        };
        let mut req = Request::builder()
            .uri("https://a.example/x/../y?q=/../z")
            .body(())
            .unwrap_or_default();
        assert!(normalize(&mut req, policy).is_ok());
        assert_eq!(req.uri(), "https://a.example/y?q=/../z");
        let off = Policy {
            normalize: false,
            ..policy
        };
        let mut raw = Request::builder()
            .uri("/x/../y")
            .body(())
            .unwrap_or_default();
        assert!(normalize(&mut raw, off).is_ok());
        assert_eq!(raw.uri(), "/x/../y");
    }
}
