//! The version tag in W3C `baggage` (<https://www.w3.org/TR/baggage/>): read
//! from a trusted peer's request, and set on the upstream request beside the
//! other members, which travel on as they came.

use http::header::{HeaderMap, HeaderValue};

const BAGGAGE: &str = "baggage";

/// The value of member `key` in the request's baggage (all `baggage` fields
/// together, first occurrence), without its properties.
pub(super) fn member<'h>(h: &'h HeaderMap, key: &str) -> Option<&'h str> {
    h.get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|m| {
            let (k, rest) = m.split_once('=')?;
            let value = rest.split(';').next().unwrap_or_default().trim();
            (k.trim() == key).then_some(value)
        })
}

/// Sets member `key` to `value`: every other member kept in order, any
/// `key` member replaced, the fields joined into one.
pub(super) fn set_member(h: &mut HeaderMap, key: &str, value: &str) {
    let mut out = String::new();
    for m in h
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let k = m.split_once('=').map_or(m, |(k, _)| k).trim();
        if k != key {
            out.push_str(m);
            out.push(',');
        }
    }
    out.push_str(key);
    out.push('=');
    out.push_str(value);
    // Key and value were checked with the config; what was kept came from a header.
    if let Ok(v) = HeaderValue::from_str(&out) {
        h.insert(BAGGAGE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(BAGGAGE, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn reads_a_member_across_fields_without_properties() {
        let h = headers(&["userId=alice, edge-version = v2;ttl=3", "edge-version=v9"]);
        assert_eq!(member(&h, "edge-version"), Some("v2"));
        assert_eq!(member(&h, "userId"), Some("alice"));
        assert_eq!(member(&h, "version"), None);
        assert_eq!(member(&headers(&["edge-version"]), "edge-version"), None);
        assert_eq!(member(&HeaderMap::new(), "edge-version"), None);
    }

    #[test]
    fn sets_a_member_keeping_the_others() {
        let mut h = headers(&["userId=alice;p=1, edge-version=v9", "span=x"]);
        set_member(&mut h, "edge-version", "v1");
        assert_eq!(h.get_all(BAGGAGE).iter().count(), 1);
        assert_eq!(h[BAGGAGE], "userId=alice;p=1,span=x,edge-version=v1");
        let mut empty = HeaderMap::new();
        set_member(&mut empty, "edge-version", "v2");
        assert_eq!(empty[BAGGAGE], "edge-version=v2");
    }
}
