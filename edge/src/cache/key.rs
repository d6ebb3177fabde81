//! Cache keys: `scheme://host:port/path?query` with the host lower-cased and the
//! port always written (so `Example.com` and `example.com:443` are one key and two
//! virtual hosts never share one). Redis sees only a fixed-length digest of a key,
//! so no request can inject a command or make an unbounded key.

use sha2::{Digest, Sha256};

/// Prefix of every Redis key the cache writes.
const REDIS_PREFIX: &str = "edge:cache:";
/// The Redis hash holding prefix purges (prefix → purge time in ms).
pub const BANS: &str = "edge:cache:bans";

/// The primary key of a request: `host` is the Host header as sent, `target` the
/// request's path and query.
pub fn primary(tls: bool, host: &str, target: &str) -> String {
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = split_port(&host, default_port);
    let target = if target.is_empty() { "/" } else { target };
    format!("{scheme}://{name}:{port}{target}")
}

/// Normalises an absolute URL (`https://Host/path?q`, as an operator types it
/// for purging or an origin sends in `Location`) to a key; `None` if it is not one.
pub fn from_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let tls = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let host = uri.authority()?.as_str();
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Some(primary(tls, host, target))
}

/// Like [`from_url`] but keeps a bare `https://host` (or a trailing path
/// fragment) as typed: a prefix to purge.
pub fn prefix_from_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let (host, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let mut key = primary(tls, host, "/");
    key.pop();
    key.push_str(target);
    Some(key)
}

fn split_port(host: &str, default: u16) -> (&str, u16) {
    if host.starts_with('[') {
        return match host.rsplit_once("]:") {
            Some((h, p)) => (&host[..h.len() + 1], p.parse().unwrap_or(default)),
            None => (host, default),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(default)),
        _ => (host, default),
    }
}

/// The Redis key for a cache key: a prefix and 64 hex digits.
pub fn redis_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(REDIS_PREFIX.len() + 64);
    out.push_str(REDIS_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The Redis key of the cross-edge fetch lock for a cache key.
pub fn lock_key(key: &str) -> String {
    let mut k = redis_key(key);
    k.insert_str(REDIS_PREFIX.len(), "lock:");
    k
}

/// The key of one variant of a response that varies on request headers.
/// `generation` is chosen when the variant list is first stored, so dropping the
/// list (purge, invalidation) orphans every variant at once.
pub fn variant(primary: &str, generation: u64, values: &[(String, Option<String>)]) -> String {
    let mut out = format!("{primary}\n#{generation:x}");
    for (name, value) in values {
        out.push('\n');
        out.push_str(name);
        match value {
            Some(v) => {
                out.push('=');
                out.push_str(v);
            }
            None => out.push('!'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_case_and_default_port_are_normalised() {
        assert_eq!(
            primary(true, "Example.COM", "/a?b"),
            "https://example.com:443/a?b"
        );
        assert_eq!(
            primary(true, "example.com:443", "/a?b"),
            "https://example.com:443/a?b"
        );
        assert_eq!(primary(false, "example.com", ""), "http://example.com:80/");
        assert_eq!(primary(false, "[::1]:8080", "/"), "http://[::1]:8080/");
        assert_ne!(
            primary(true, "a.example", "/"),
            primary(true, "b.example", "/")
        );
        assert_ne!(
            primary(true, "a.example", "/"),
            primary(false, "a.example", "/")
        );
    }

    #[test]
    fn urls_and_prefixes_normalise_like_requests() {
        assert_eq!(
            from_url("https://Example.com/x?y=1").as_deref(),
            Some("https://example.com:443/x?y=1")
        );
        assert_eq!(from_url("ftp://example.com/"), None);
        assert_eq!(
            prefix_from_url("http://Example.com:8080/static/").as_deref(),
            Some("http://example.com:8080/static/")
        );
        assert_eq!(
            prefix_from_url("https://example.com").as_deref(),
            Some("https://example.com:443")
        );
    }

    #[test]
    fn redis_keys_have_a_fixed_length_and_no_request_text() {
        let a = redis_key("https://example.com:443/\r\nFLUSHALL\r\n");
        let b = redis_key(&format!("https://example.com:443/{}", "x".repeat(100_000)));
        assert_eq!(a.len(), b.len());
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
        assert!(!a.contains("FLUSHALL"));
    }

    #[test]
    fn variants_differ_by_value_and_generation() {
        let gz = [("accept-encoding".to_owned(), Some("gzip".to_owned()))];
        let br = [("accept-encoding".to_owned(), Some("br".to_owned()))];
        let none = [("accept-encoding".to_owned(), None)];
        let p = "https://e:443/";
        assert_ne!(variant(p, 1, &gz), variant(p, 1, &br));
        assert_ne!(variant(p, 1, &gz), variant(p, 1, &none));
        assert_ne!(variant(p, 1, &gz), variant(p, 2, &gz));
        assert!(variant(p, 1, &gz).starts_with(p));
    }
}
