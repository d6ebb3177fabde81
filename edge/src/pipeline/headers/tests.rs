use super::*;

fn req(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri("/path?q=1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("valid request")
}

#[test]
fn keeps_a_well_formed_request_id_and_replaces_others() {
    let kept = request_id(req(&[("x-request-id", "abc-123_x.y:z")]).headers());
    assert_eq!(kept, "abc-123_x.y:z");
    for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
        let id = request_id(req(&[("x-request-id", bad)]).headers());
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "new ids are UUIDs");
    }
    let a = request_id(&HeaderMap::new());
    let b = request_id(&HeaderMap::new());
    assert_ne!(a, b);
}

/// One of each hop-by-hop field (RFC 9110 7.6.1 and the legacy ones).
const HOP_BY_HOP_FIELDS: [(&str, &str); 8] = [
    ("connection", "close"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("transfer-encoding", "chunked"),
    ("upgrade", "websocket"),
    ("proxy-authorization", "Basic x"),
    ("proxy-authenticate", "Basic"),
    ("te", "gzip"),
];

#[test]
fn strips_every_hop_by_hop_header_and_the_ones_connection_names() {
    let mut fields = vec![("connection", "close, X-Private"), ("x-private", "secret")];
    fields.extend(&HOP_BY_HOP_FIELDS[1..]);
    fields.push(("x-end-to-end", "stays"));
    let mut h = req(&fields).headers().clone();
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    assert_eq!(left, ["x-end-to-end"]);

    let mut trailers = req(&[("te", "trailers")]).headers().clone();
    strip_hop_by_hop(&mut trailers);
    assert_eq!(trailers["te"], "trailers");
}

#[test]
fn each_hop_by_hop_header_alone_is_stripped() {
    // strip_hop_by_hop skips a message with none: each one alone must be seen.
    for (name, value) in HOP_BY_HOP_FIELDS {
        let mut h = req(&[(name, value), ("x-end-to-end", "stays")])
            .headers()
            .clone();
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-end-to-end"], "{name}");
    }
    let mut none = req(&[("x-end-to-end", "stays"), ("accept", "*/*")])
        .headers()
        .clone();
    strip_hop_by_hop(&mut none);
    assert_eq!(none.len(), 2);
}

#[test]
fn forwarding_headers_trust_only_configured_proxies() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let id = HeaderValue::from_static("id-1");
    let host = HeaderValue::from_static("a.example");

    let mut untrusted = req(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "http"),
        ("via", "1.1 cdn"),
        ("expect", "100-continue"),
    ]);
    let peer = Peer {
        ip: "192.0.2.7".parse().expect("ip"),
        tls: true,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    to_upstream(&mut untrusted, &peer, &trusted, &id, &trace(), host.clone());
    let h = untrusted.headers();
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "a.example");
    assert_eq!(h["host"], "a.example");
    assert_eq!(h["x-request-id"], "id-1");
    assert_eq!(h["via"], "1.1 cdn, 1.1 edge");
    assert_eq!(untrusted.uri(), "/path?q=1");
    assert!(
        !h.contains_key("expect"),
        "100-continue is answered by the edge"
    );

    let mut via_proxy = req(&[("x-forwarded-for", "1.2.3.4")]);
    let peer = Peer {
        ip: "10.1.1.1".parse().expect("ip"),
        tls: false,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    to_upstream(&mut via_proxy, &peer, &trusted, &id, &trace(), host);
    assert_eq!(via_proxy.headers()["x-forwarded-for"], "1.2.3.4, 10.1.1.1");
}

const CLAIMS: [(&str, &str); 11] = [
    ("forwarded", "for=6.6.6.6;host=evil.test"),
    ("x-forwarded-prefix", "/evil"),
    ("x-forwarded-uri", "/admin"),
    ("x-forwarded-server", "evil"),
    ("x-forwarded-port", "1"),
    ("x-real-ip", "6.6.6.6"),
    ("x-original-host", "evil.test"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-host", "evil.test"),
    ("x-forwarded-host", "evil.test"),
];

#[test]
fn an_untrusted_peers_forwarding_claims_are_replaced_by_edges_own() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let id = HeaderValue::from_static("id-1");
    let mut r = req(&CLAIMS);
    let peer = Peer {
        ip: "2001:db8::7".parse().expect("ip"),
        tls: true,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    to_upstream(
        &mut r,
        &peer,
        &trusted,
        &id,
        &trace(),
        HeaderValue::from_static("a.example:8443"),
    );
    let h = r.headers();
    for (name, _) in CLAIMS {
        let kept = h.get_all(name).iter().any(|v| {
            v.as_bytes()
                .windows(4)
                .any(|w| w == b"evil" || w == b"6.6." || w == b"/adm")
        });
        assert!(!kept, "{name} reached upstream: {:?}", h.get(name));
    }
    assert_eq!(
        h["forwarded"],
        "for=\"[2001:db8::7]\";proto=https;host=\"a.example:8443\""
    );
    assert_eq!(h["x-forwarded-host"], "a.example:8443");
    assert!(!h.contains_key("x-real-ip") && !h.contains_key("x-forwarded-prefix"));
}

#[test]
fn a_trusted_proxys_forwarding_headers_pass_and_forwarded_is_appended() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let id = HeaderValue::from_static("id-1");
    let mut r = req(&[("forwarded", "for=192.0.2.1"), ("x-real-ip", "192.0.2.1")]);
    let peer = Peer {
        ip: "10.0.0.9".parse().expect("ip"),
        tls: false,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    to_upstream(
        &mut r,
        &peer,
        &trusted,
        &id,
        &trace(),
        HeaderValue::from_static("a.example"),
    );
    let h = r.headers();
    assert_eq!(
        h["forwarded"],
        "for=192.0.2.1, for=10.0.0.9;proto=http;host=a.example"
    );
    assert_eq!(h["x-real-ip"], "192.0.2.1");
}

#[test]
fn framing_other_than_one_chunked_or_one_length_is_refused() {
    for ok in [
        vec![],
        vec![("transfer-encoding", "chunked")],
        vec![("transfer-encoding", "Chunked")],
        vec![("content-length", "0")],
        vec![("content-length", "42")],
    ] {
        assert!(framing(req(&ok).headers()).is_ok(), "{ok:?}");
    }
    for bad in [
        vec![("transfer-encoding", "gzip, chunked")],
        vec![("transfer-encoding", "chunked, chunked")],
        vec![("transfer-encoding", ",chunked")],
        vec![("transfer-encoding", "identity")],
        vec![
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ],
        vec![("transfer-encoding", "chunked"), ("content-length", "3")],
        vec![("content-length", "3"), ("content-length", "3")],
        vec![("content-length", "3, 3")],
        vec![("content-length", "+3")],
        vec![("content-length", "")],
    ] {
        let e = framing(req(&bad).headers()).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::BadRequest, "{bad:?}");
    }
}

#[test]
fn header_limits_count_fields_and_bytes_like_rfc_9113() {
    let h = req(&[("a", "1"), ("b", "22")]).headers().clone();
    // (1 + 1 + 32) + (1 + 2 + 32) = 69
    assert!(within_limits(&h, 2, 69).is_ok());
    assert_eq!(
        within_limits(&h, 2, 68).expect_err("bytes").kind,
        ErrorKind::HeadersTooLarge
    );
    assert_eq!(
        within_limits(&h, 1, 1000).expect_err("fields").kind,
        ErrorKind::HeadersTooLarge
    );
}

#[test]
fn client_ip_believes_only_trusted_proxies() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let peer = |ip: &str| Peer {
        ip: ip.parse().expect("ip"),
        tls: false,
        sni: None,
        client_cert: None,
        early_data: false,
    };
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    let spoofed = req(&[("x-forwarded-for", "127.2.0.1")]);
    assert_eq!(
        client_ip(spoofed.headers(), &peer("127.1.0.1"), &trusted),
        ip("127.1.0.1"),
        "an untrusted peer's X-Forwarded-For is ignored"
    );
    // Through two trusted proxies: the first untrusted address from the right.
    let chain = req(&[
        ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
        ("x-forwarded-for", "10.0.0.2"),
    ]);
    assert_eq!(
        client_ip(chain.headers(), &peer("10.0.0.1"), &trusted),
        ip("1.2.3.4")
    );
    let all_trusted = req(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
    assert_eq!(
        client_ip(all_trusted.headers(), &peer("10.0.0.1"), &trusted),
        ip("10.0.0.3")
    );
    let garbage = req(&[("x-forwarded-for", "nonsense, 10.0.0.2")]);
    assert_eq!(
        client_ip(garbage.headers(), &peer("10.0.0.1"), &trusted),
        ip("10.0.0.2")
    );
    let none = req(&[]);
    assert_eq!(
        client_ip(none.headers(), &peer("10.0.0.1"), &trusted),
        ip("10.0.0.1")
    );
}

fn trace() -> crate::pipeline::trace::Trace {
    crate::pipeline::trace::Trace::of(&http::HeaderMap::new())
}

#[test]
fn early_data_is_marked_for_the_origin_and_a_clients_mark_is_kept() {
    let host = HeaderValue::from_static("a.example");
    let id = HeaderValue::from_static("id-1");
    let peer = |early_data| Peer {
        ip: "192.0.2.7".parse().expect("ip"),
        tls: true,
        sni: None,
        client_cert: None,
        early_data,
    };
    let mut early = req(&[]);
    to_upstream(&mut early, &peer(true), &[], &id, &trace(), host.clone());
    assert_eq!(early.headers()["early-data"], "1");

    let mut after = req(&[]);
    to_upstream(&mut after, &peer(false), &[], &id, &trace(), host.clone());
    assert!(!after.headers().contains_key("early-data"));

    // RFC 8470 5.1: an intermediary must not remove it; it can only make the
    // origin more careful.
    let mut claimed = req(&[("early-data", "1")]);
    to_upstream(&mut claimed, &peer(false), &[], &id, &trace(), host);
    assert_eq!(claimed.headers()["early-data"], "1");
}
