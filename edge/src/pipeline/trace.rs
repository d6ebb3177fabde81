//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>). A request with a
//! valid `traceparent` is continued: same trace id and flags, edge's own span
//! id as the parent the origin sees, `tracestate` passed on as it came. One
//! without (or with a malformed one) starts a trace: a new trace id, sampled,
//! and any `tracestate` dropped (it belongs to the broken parent). The trace id
//! is in the access log and on edge's error pages.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::text::{push_hex32, put_hex};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Sampled (the only flag defined in version 00).
const SAMPLED: u8 = 0x01;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub id: u128,
    /// Edge's span: the `parent-id` the origin gets.
    pub span: u64,
    pub flags: u8,
    /// The client's trace was continued (else edge started this one).
    pub continued: bool,
}

impl Trace {
    /// The request's trace: its own continued, or a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parsed = match (values.next(), values.next()) {
            // Two traceparent fields are malformed (the field is not a list).
            (Some(v), None) => parse(v.as_bytes()),
            _ => None,
        };
        let span = nonzero(fastrand::u64(..));
        match parsed {
            Some((id, flags)) => Self {
                id,
                span,
                flags,
                continued: true,
            },
            None => Self {
                id: nonzero(fastrand::u128(..)),
                span,
                flags: SAMPLED,
                continued: false,
            },
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn id_hex(&self) -> String {
        let mut hex = String::with_capacity(32);
        push_hex32(&mut hex, self.id);
        hex
    }

    /// Sets the upstream request's `traceparent` (version 00, edge's span as
    /// the parent); a started trace takes no `tracestate`.
    pub fn set_upstream(&self, h: &mut HeaderMap) {
        // `00-{id:032x}-{span:016x}-{flags:02x}`, written without `format!`
        // (which cost about 3,400 instructions per request).
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        put_hex(&mut value[3..35], self.id);
        put_hex(&mut value[36..52], u128::from(self.span));
        put_hex(&mut value[53..], u128::from(self.flags));
        if let Ok(mut v) = HeaderValue::from_bytes(&value) {
            // New on every request: never indexed in HPACK (see `request_id`).
            v.set_sensitive(true);
            h.insert(TRACEPARENT.clone(), v);
        }
        if !self.continued {
            h.remove(&TRACESTATE);
        }
    }
}

fn nonzero<T: PartialEq + From<u8>>(v: T) -> T {
    if v == T::from(0) {
        T::from(1)
    } else {
        v
    }
}

/// `version-traceid-parentid-flags`: the trace id and flags of a valid value.
/// A version above 00 is read as 00 where it can be (the spec's forward
/// compatibility: the first four fields, then `-` or the end); `ff` is invalid.
fn parse(v: &[u8]) -> Option<(u128, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])?;
    match version {
        0 if v.len() != 55 => return None,
        0xff => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let id = hex(&v[3..35])?;
    let parent = hex(&v[36..52])?;
    let flags = u8::try_from(hex(&v[53..55])?).ok()?;
    (id != 0 && parent != 0).then_some((id, flags))
}

/// Lower-case hex only, as the spec requires.
fn hex(s: &[u8]) -> Option<u128> {
    if !s
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_continued_with_edge_as_the_new_parent() {
        let t = Trace::of(&with(&[VALID]));
        assert!(t.continued);
        assert_eq!(t.id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        let mut h = with(&[VALID]);
        h.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        t.set_upstream(&mut h);
        let sent = h.get(&TRACEPARENT).expect("set").to_str().expect("ascii");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "edge's span is the parent: {sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_eq!(h.get(&TRACESTATE).expect("kept"), "congo=t61rcWkgMzE");
        // Unsampled stays unsampled; a future version with more fields is read.
        let unsampled = Trace::of(&with(&[&VALID.replace("-01", "-00")]));
        assert_eq!((unsampled.continued, unsampled.flags), (true, 0));
        let future = Trace::of(&with(&[&format!(
            "cc{}-what-the-future-holds",
            &VALID[2..]
        )]));
        assert!(future.continued);
    }

    #[test]
    fn the_upstream_traceparent_is_the_three_fields_in_fixed_width_hex() {
        for (id, span, flags) in [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                1,
            ),
            (1, 1, 0),
            (u128::MAX, u64::MAX, 0xff),
        ] {
            let t = Trace {
                id,
                span,
                flags,
                continued: true,
            };
            let mut h = HeaderMap::new();
            t.set_upstream(&mut h);
            assert_eq!(
                h.get(&TRACEPARENT).expect("set").to_str().expect("ascii"),
                format!("00-{id:032x}-{span:016x}-{flags:02x}")
            );
        }
    }

    #[test]
    fn a_malformed_parent_starts_a_new_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let t = Trace::of(&with(&[bad]));
            assert!(!t.continued, "{bad:?} was continued");
            assert_ne!(t.id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let mut h = with(&[bad]);
            h.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            t.set_upstream(&mut h);
            assert!(h.get(&TRACESTATE).is_none(), "{bad:?}");
        }
        assert!(!Trace::of(&with(&[VALID, VALID])).continued, "two fields");
        let fresh = Trace::of(&HeaderMap::new());
        assert!(!fresh.continued);
        assert_ne!(fresh.id, 0);
        assert_eq!(fresh.flags, 1);
        assert_ne!(Trace::of(&HeaderMap::new()).id, fresh.id);
    }
}
