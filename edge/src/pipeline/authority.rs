//! The request's authority, validated and canonicalised once. Everything
//! after admission — routing, the cache key, `Host` upstream, `X-Forwarded-Host`
//! and `Forwarded: host=` — uses the one canonical value, so what the cache is
//! keyed on is exactly what the origin is told (no key/Host split to poison).

use http::header::HOST;
use http::{HeaderValue, Request};

use crate::error::{ErrorKind, ProxyError};

/// Longest host name accepted (DNS names are at most 253 octets).
const MAX_HOST: usize = 253;

/// A canonical authority: `host` or `host:port`, host lower-case without a
/// trailing dot, port numeric and dropped when it is the scheme's default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The canonical `host[:port]`, as sent upstream.
    pub value: HeaderValue,
    /// The host alone, for routing.
    pub host: String,
}

fn bad(why: &'static str) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, why)
}

/// The request's canonical authority from `Host` (h1) or the request target's
/// authority (h2 `:authority`, h3, h1 absolute-form). Missing, malformed,
/// repeated-and-different, or Host and authority naming different places: 400.
pub fn of(req: &Request<impl Sized>, tls: bool) -> Result<Authority, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if let Some(first) = header {
        if hosts.any(|other| other != first) {
            return Err(bad("conflicting Host headers"));
        }
    }
    let from_header = header.map(|h| canonical(h.as_bytes(), tls)).transpose()?;
    let from_target = req
        .uri()
        .authority()
        .map(|a| canonical(a.as_str().as_bytes(), tls))
        .transpose()?;
    match (from_header, from_target) {
        (Some(h), Some(a)) if h != a => Err(bad("Host header and request authority differ")),
        (Some(h), _) => Ok(h),
        (None, Some(a)) => Ok(a),
        (None, None) => Err(bad("missing Host header")),
    }
}

/// Validates one `host[:port]` (RFC 3986 3.2.2 with the reg-name limited to
/// what DNS names and edge's routes use: letters, digits, `-`, `.`, `_`, `~`).
pub fn canonical(raw: &[u8], tls: bool) -> Result<Authority, ProxyError> {
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = split(raw)?;
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?).filter(|p| *p != default_port),
    };
    let host = if host.first() == Some(&b'[') {
        ipv6_literal(host)?
    } else {
        reg_name(host)?
    };
    let text = match port {
        Some(p) => {
            let mut t = String::with_capacity(host.len() + 6);
            t.push_str(&host);
            t.push(':');
            t.push_str(itoa::Buffer::new().format(p));
            t
        }
        None => host.clone(),
    };
    // Only validated ASCII reaches here, so the value is always a valid header.
    let value = HeaderValue::from_str(&text).map_err(|_| bad("invalid authority"))?;
    Ok(Authority { value, host })
}

/// `host` and the optional port text after the last `:` (outside brackets).
fn split(raw: &[u8]) -> Result<(&[u8], Option<&[u8]>), ProxyError> {
    if raw.first() == Some(&b'[') {
        let end = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or_else(|| bad("unclosed IPv6 literal in authority"))?;
        let (host, rest) = raw.split_at(end + 1);
        return match rest {
            [] => Ok((host, None)),
            [b':', port @ ..] => Ok((host, Some(port))),
            _ => Err(bad("invalid authority after IPv6 literal")),
        };
    }
    match raw.iter().rposition(|&b| b == b':') {
        Some(i) => Ok((&raw[..i], Some(&raw[i + 1..]))),
        None => Ok((raw, None)),
    }
}

fn parse_port(p: &[u8]) -> Result<u16, ProxyError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(bad("authority port must be a number"));
    }
    let n: u32 = p.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad("authority port must be 1-65535")),
    }
}

fn ipv6_literal(host: &[u8]) -> Result<String, ProxyError> {
    let inner = &host[1..host.len() - 1];
    let text = std::str::from_utf8(inner).map_err(|_| bad("invalid IPv6 literal"))?;
    let ip: std::net::Ipv6Addr = text.parse().map_err(|_| bad("invalid IPv6 literal"))?;
    Ok(format!("[{ip}]"))
}

fn reg_name(host: &[u8]) -> Result<String, ProxyError> {
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(bad("Host must be a host name"));
    }
    let ok = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !ok || host.starts_with(b".") || host.windows(2).any(|w| w == b"..") {
        return Err(bad("Host must be a host name"));
    }
    let mut out = String::with_capacity(host.len());
    out.extend(host.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str, tls: bool) -> (String, String) {
        let a = canonical(raw.as_bytes(), tls).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        (a.value.to_str().unwrap_or_default().to_owned(), a.host)
    }

    #[test]
    fn canonical_forms() {
        let cases = [
            ("Good.Test", false, "good.test", "good.test"),
            ("good.test.", false, "good.test", "good.test"),
            ("good.test:80", false, "good.test", "good.test"),
            ("good.test:443", true, "good.test", "good.test"),
            ("good.test:443", false, "good.test:443", "good.test"),
            ("good.test:08080", false, "good.test:8080", "good.test"),
            ("GOOD.test.:8443", true, "good.test:8443", "good.test"),
            ("127.0.0.1:8080", false, "127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8080", false, "[::1]:8080", "[::1]"),
            ("[0:0::1]", true, "[::1]", "[::1]"),
            ("under_score", true, "under_score", "under_score"),
        ];
        for (raw, tls, value, host) in cases {
            assert_eq!(ok(raw, tls), (value.to_owned(), host.to_owned()), "{raw}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        for raw in [
            "good.test:80\"><script>x</script>",
            "good.test:",
            "good.test:0",
            "good.test:65536",
            "good.test:99999999999",
            "good.test:+80",
            "user@good.test",
            "good test",
            "good.test/x",
            "good.test\\x",
            "\"good.test\"",
            "<good.test>",
            "",
            ".",
            "..good",
            "a..b",
            "[::1",
            "[::1]x",
            "[nothex]",
            "a:b:c",
            "good.test%2f",
        ] {
            let e = canonical(raw.as_bytes(), false).expect_err(raw);
            assert_eq!(e.kind, ErrorKind::BadRequest, "{raw}");
        }
        assert!(canonical(&[b'a'; 254], false).is_err());
    }

    #[test]
    fn host_header_and_target_authority_must_agree_canonically() {
        let req = |host: Option<&str>, uri: &str| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(HOST, h);
            }
            b.body(()).unwrap_or_default()
        };
        let a = of(&req(Some("Good.Test:443"), "https://good.test/x"), true);
        assert_eq!(
            a.ok().map(|a| a.value),
            Some(HeaderValue::from_static("good.test"))
        );
        assert!(of(&req(Some("good.test"), "https://evil.test/x"), true).is_err());
        assert!(of(&req(None, "/x"), true).is_err());
        let only_target = of(&req(None, "https://good.test:8443/x"), true);
        assert_eq!(
            only_target.ok().map(|a| a.host),
            Some("good.test".to_owned())
        );
    }
}
