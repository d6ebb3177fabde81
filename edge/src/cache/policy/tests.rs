use super::*;
use http::HeaderValue;

const NOW: u64 = 1_700_000_000;

fn h(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    m
}

fn date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn at(t: u64) -> Times {
    Times {
        request_time: t,
        response_time: t,
    }
}

fn store(req: &[(&str, &str)], status: u16, resp: &[(&str, &str)]) -> Result<(), NotStored> {
    storable(
        &Method::GET,
        &h(req),
        StatusCode::from_u16(status).expect("status"),
        &h(resp),
        false,
    )
}

#[test]
fn parses_directives_case_insensitively_with_quotes_and_lines() {
    let cc = CacheControl::parse(&h(&[
        (
            "cache-control",
            "Max-Age=\"60\", no-cache=\"set-cookie, x\"",
        ),
        (
            "cache-control",
            "s-maxage=5, stale-while-revalidate=30, PUBLIC",
        ),
    ]));
    assert_eq!(cc.max_age, Some(60));
    assert_eq!(cc.s_maxage, Some(5));
    assert_eq!(cc.stale_while_revalidate, Some(30));
    assert!(cc.no_cache && cc.public);
}

#[test]
fn first_duplicate_wins_and_invalid_numbers_mean_stale() {
    let cc = CacheControl::parse(&h(&[("cache-control", "max-age=10, max-age=99")]));
    assert_eq!(cc.max_age, Some(10));
    let cc = CacheControl::parse(&h(&[("cache-control", "max-age=-1")]));
    assert_eq!(cc.max_age, Some(0));
    let cc = CacheControl::parse(&h(&[("cache-control", "max-age=99999999999")]));
    assert_eq!(cc.max_age, Some(1 << 31));
}

#[test]
fn request_directives() {
    let cc = CacheControl::parse(&h(&[(
        "cache-control",
        "max-stale, min-fresh=5, only-if-cached, no-store",
    )]));
    assert_eq!(cc.max_stale, Some(None));
    assert_eq!(cc.min_fresh, Some(5));
    assert!(cc.only_if_cached && cc.no_store);
    let cc = CacheControl::parse(&h(&[("cache-control", "max-stale=7")]));
    assert_eq!(cc.max_stale, Some(Some(7)));
}

#[test]
fn pragma_no_cache_counts_only_without_cache_control() {
    assert!(CacheControl::parse(&h(&[("pragma", "no-cache")])).no_cache);
    assert!(
        !CacheControl::parse(&h(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=1")
        ]))
        .no_cache
    );
}

#[test]
fn storable_needs_get_a_known_status_and_a_reason_to_keep() {
    assert_eq!(store(&[], 200, &[("cache-control", "max-age=60")]), Ok(()));
    assert_eq!(store(&[], 200, &[("etag", "\"a\"")]), Ok(()));
    assert_eq!(store(&[], 200, &[]), Err(NotStored::Useless));
    assert_eq!(
        store(&[], 206, &[("cache-control", "max-age=60")]),
        Err(NotStored::Status)
    );
    // An error page may be stored when the origin says for how long...
    assert_eq!(store(&[], 500, &[("cache-control", "max-age=60")]), Ok(()));
    // ...never heuristically. A status this cache does not know is stored with
    // explicit freshness (RFC 9111 3), unless must-understand asks otherwise.
    assert_eq!(
        store(&[], 500, &[("last-modified", &date(NOW - 1000))]),
        Err(NotStored::Status)
    );
    assert_eq!(store(&[], 599, &[("cache-control", "max-age=60")]), Ok(()));
    assert_eq!(
        store(&[], 599, &[("last-modified", &date(NOW - 1000))]),
        Err(NotStored::Status)
    );
    assert_eq!(
        store(
            &[],
            599,
            &[("cache-control", "max-age=60, must-understand")]
        ),
        Err(NotStored::Status)
    );
    assert_eq!(
        store(&[], 304, &[("cache-control", "max-age=60")]),
        Err(NotStored::Status)
    );
    // 302 is understood but not heuristically cacheable: explicit freshness only.
    assert_eq!(
        store(&[], 302, &[("last-modified", &date(NOW - 1000))]),
        Err(NotStored::Status)
    );
    assert_eq!(store(&[], 302, &[("cache-control", "max-age=6")]), Ok(()));
    let post = storable(
        &Method::POST,
        &h(&[]),
        StatusCode::OK,
        &h(&[("cache-control", "max-age=60")]),
        false,
    );
    assert_eq!(post, Err(NotStored::Method));
}

#[test]
fn no_store_private_and_vary_star_are_never_stored() {
    assert_eq!(
        store(&[], 200, &[("cache-control", "max-age=60, no-store")]),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        store(
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=60")]
        ),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        store(&[], 200, &[("cache-control", "private, max-age=60")]),
        Err(NotStored::Private)
    );
    assert_eq!(
        store(&[], 200, &[("cache-control", "private=\"x\", max-age=60")]),
        Err(NotStored::Private)
    );
    assert_eq!(
        store(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept, *")]
        ),
        Err(NotStored::VaryStar)
    );
    // must-understand overrides no-store for an understood status.
    assert_eq!(
        store(
            &[],
            200,
            &[("cache-control", "max-age=60, no-store, must-understand")]
        ),
        Ok(())
    );
}

#[test]
fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let auth = [("authorization", "Bearer x")];
    assert_eq!(
        store(&auth, 200, &[("cache-control", "max-age=60")]),
        Err(NotStored::Authorization)
    );
    assert_eq!(
        store(&auth, 200, &[("cache-control", "public, max-age=60")]),
        Ok(())
    );
    assert_eq!(
        store(&auth, 200, &[("cache-control", "s-maxage=60")]),
        Ok(())
    );
    assert_eq!(
        store(
            &auth,
            200,
            &[("cache-control", "max-age=60, must-revalidate")]
        ),
        Ok(())
    );
}

#[test]
fn set_cookie_only_where_the_route_allows() {
    let resp = h(&[("cache-control", "max-age=60"), ("set-cookie", "s=1")]);
    let ok = |allow| storable(&Method::GET, &h(&[]), StatusCode::OK, &resp, allow);
    assert_eq!(ok(false), Err(NotStored::SetCookie));
    assert_eq!(ok(true), Ok(()));
}

#[test]
fn freshness_prefers_s_maxage_then_max_age_then_expires() {
    let d = date(NOW);
    let resp = h(&[("cache-control", "max-age=10, s-maxage=20"), ("date", &d)]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 20);
    let resp = h(&[
        ("cache-control", "max-age=10"),
        ("expires", &date(NOW + 99)),
        ("date", &d),
    ]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 10);
    let resp = h(&[("expires", &date(NOW + 99)), ("date", &d)]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 99);
    let resp = h(&[("expires", "0"), ("date", &d)]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 0);
    let resp = h(&[("expires", &date(NOW - 5)), ("date", &d)]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 0);
}

#[test]
fn heuristic_is_a_tenth_of_last_modified_age_for_allowed_statuses() {
    let resp = h(&[("date", &date(NOW)), ("last-modified", &date(NOW - 1000))]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 100);
    assert_eq!(freshness_lifetime(404, &resp, NOW), 100);
    assert_eq!(freshness_lifetime(302, &resp, NOW), 0);
    let old = h(&[
        ("date", &date(NOW)),
        ("last-modified", &date(NOW - 100 * 86_400)),
    ]);
    assert_eq!(freshness_lifetime(200, &old, NOW), MAX_HEURISTIC);
    assert_eq!(freshness_lifetime(200, &h(&[]), NOW), 0);
}

#[test]
fn current_age_follows_rfc_9111_4_2_3() {
    // Age header plus the round trip, and time spent here.
    let resp = h(&[("date", &date(NOW)), ("age", "30")]);
    let t = Times {
        request_time: NOW - 2,
        response_time: NOW,
    };
    assert_eq!(current_age(&resp, t, NOW + 10), 30 + 2 + 10);
    // A Date in the past (clock skew or a slow hop) counts as apparent age.
    let resp = h(&[("date", &date(NOW - 50))]);
    assert_eq!(current_age(&resp, at(NOW), NOW), 50);
    // A Date in the future does not make it younger than zero.
    let resp = h(&[("date", &date(NOW + 50))]);
    assert_eq!(current_age(&resp, at(NOW), NOW + 1), 1);
}

#[test]
fn an_age_list_counts_by_its_first_member() {
    let age = |pairs: &[(&str, &str)]| current_age(&h(pairs), at(NOW), NOW);
    // One line holding a list: the first member (RFC 9111 5.1).
    assert_eq!(age(&[("age", "7200, 0")]), 7200);
    assert_eq!(age(&[("age", "7200,0")]), 7200);
    assert_eq!(age(&[("age", "0, 7200")]), 0);
    // Several lines are one list: the first line's value.
    assert_eq!(age(&[("age", "7200"), ("age", "0")]), 7200);
    assert_eq!(age(&[("age", "0"), ("age", "7200")]), 0);
    // An invalid first member is ignored, not read as old.
    assert_eq!(age(&[("age", "abc, 7200")]), 0);
    assert_eq!(age(&[("age", "-5")]), 0);
    assert_eq!(age(&[("age", "  30 ")]), 30);
}

fn judge(resp: &[(&str, &str)], req: &[(&str, &str)], later: u64) -> Use {
    let mut r = h(resp);
    r.insert("date", HeaderValue::from_str(&date(NOW)).expect("date"));
    decide(200, &r, at(NOW), &h(req), NOW + later)
}

#[test]
fn fresh_then_stale() {
    assert_eq!(
        judge(&[("cache-control", "max-age=10")], &[], 9),
        Use::Fresh
    );
    assert_eq!(
        judge(&[("cache-control", "max-age=10")], &[], 10),
        Use::Revalidate
    );
}

#[test]
fn no_cache_always_revalidates() {
    assert_eq!(
        judge(&[("cache-control", "max-age=10, no-cache")], &[], 0),
        Use::Revalidate
    );
    assert_eq!(
        judge(
            &[("cache-control", "max-age=10")],
            &[("cache-control", "no-cache")],
            0
        ),
        Use::Revalidate
    );
    assert_eq!(
        judge(
            &[("cache-control", "max-age=10")],
            &[("pragma", "no-cache")],
            0
        ),
        Use::Revalidate
    );
}

#[test]
fn request_max_age_and_min_fresh() {
    let resp = [("cache-control", "max-age=100")];
    assert_eq!(
        judge(&resp, &[("cache-control", "max-age=5")], 4),
        Use::Fresh
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "max-age=5")], 6),
        Use::Revalidate
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "max-age=0")], 1),
        Use::Revalidate
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "min-fresh=50")], 40),
        Use::Fresh
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "min-fresh=50")], 60),
        Use::Revalidate
    );
}

#[test]
fn max_stale_accepts_stale_unless_the_origin_forbids() {
    let resp = [("cache-control", "max-age=10")];
    assert_eq!(
        judge(&resp, &[("cache-control", "max-stale")], 1000),
        Use::Stale
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "max-stale=5")], 14),
        Use::Stale
    );
    assert_eq!(
        judge(&resp, &[("cache-control", "max-stale=5")], 16),
        Use::Revalidate
    );
    for strict in [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
    ] {
        assert_eq!(
            judge(
                &[("cache-control", strict)],
                &[("cache-control", "max-stale")],
                20
            ),
            Use::Revalidate,
            "{strict}"
        );
    }
}

#[test]
fn stale_while_revalidate_window() {
    let resp = [("cache-control", "max-age=1, stale-while-revalidate=10")];
    assert_eq!(judge(&resp, &[], 0), Use::Fresh);
    assert_eq!(judge(&resp, &[], 5), Use::StaleWhileRevalidate);
    assert_eq!(judge(&resp, &[], 12), Use::Revalidate);
    let strict = [(
        "cache-control",
        "max-age=1, stale-while-revalidate=10, must-revalidate",
    )];
    assert_eq!(judge(&strict, &[], 5), Use::Revalidate);
}

#[test]
fn stale_if_error_window_from_response_or_request() {
    let d = date(NOW);
    let resp = h(&[
        ("cache-control", "max-age=1, stale-if-error=60"),
        ("date", &d),
    ]);
    assert!(stale_if_error(200, &resp, at(NOW), &h(&[]), NOW + 30));
    assert!(!stale_if_error(200, &resp, at(NOW), &h(&[]), NOW + 100));
    let plain = h(&[("cache-control", "max-age=1"), ("date", &d)]);
    assert!(!stale_if_error(200, &plain, at(NOW), &h(&[]), NOW + 30));
    assert!(stale_if_error(
        200,
        &plain,
        at(NOW),
        &h(&[("cache-control", "stale-if-error=60")]),
        NOW + 30
    ));
    let strict = h(&[
        (
            "cache-control",
            "max-age=1, stale-if-error=60, must-revalidate",
        ),
        ("date", &d),
    ]);
    assert!(!stale_if_error(200, &strict, at(NOW), &h(&[]), NOW + 30));
}

#[test]
fn retention_covers_fresh_and_stale_allowances_within_the_cap() {
    let d = date(NOW);
    let resp = h(&[
        ("cache-control", "max-age=10, stale-while-revalidate=20"),
        ("date", &d),
    ]);
    assert_eq!(retention(200, &resp, at(NOW), NOW, 0, 1000), 30);
    assert_eq!(retention(200, &resp, at(NOW), NOW, 0, 15), 15);
    let validated = h(&[
        ("cache-control", "max-age=10"),
        ("etag", "\"x\""),
        ("date", &d),
    ]);
    assert_eq!(retention(200, &validated, at(NOW), NOW, 3600, 86_400), 3610);
}

#[test]
fn vary_names_and_values() {
    assert_eq!(
        vary_names(&h(&[("vary", "Accept-Encoding, accept"), ("vary", "X-A")])),
        Some(vec![
            "accept".to_owned(),
            "accept-encoding".to_owned(),
            "x-a".to_owned()
        ])
    );
    assert_eq!(vary_names(&h(&[("vary", "*")])), None);
    let req = h(&[
        ("accept-encoding", "gzip,  br"),
        ("accept-encoding", "zstd"),
    ]);
    assert_eq!(
        vary_value(&req, "accept-encoding").as_deref(),
        Some("gzip,br,zstd")
    );
    assert_eq!(vary_value(&req, "accept"), None);
}

#[test]
fn unsafe_methods_invalidate() {
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        assert!(invalidates(&m));
    }
    for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
        assert!(!invalidates(&m));
    }
}

#[test]
fn cdn_cache_control_alone_governs_when_valid() {
    let d = date(NOW);
    let far = date(NOW + 10_000);
    let fresh = |resp: &[(&str, &str)]| freshness_lifetime(200, &h(resp), NOW);
    // It overrides Cache-Control and Expires both ways.
    assert_eq!(
        fresh(&[
            ("date", &d),
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=3600")
        ]),
        3600
    );
    assert_eq!(
        fresh(&[
            ("date", &d),
            ("cache-control", "max-age=3600"),
            ("cdn-cache-control", "max-age=1")
        ]),
        1
    );
    assert_eq!(
        fresh(&[
            ("date", &d),
            ("expires", &far),
            ("cdn-cache-control", "max-age=0")
        ]),
        0
    );
    // Unknown members are ignored; huge values are capped, not overflowed.
    assert_eq!(
        fresh(&[("cdn-cache-control", "foobar, max-age=3600")]),
        3600
    );
    assert_eq!(
        fresh(&[("cdn-cache-control", "max-age=99999999999")]),
        1 << 31
    );
    // Its own no-store, private and no-cache apply; Cache-Control's no-store does not.
    let stored = |resp: &[(&str, &str)]| store(&[], 200, resp);
    assert_eq!(
        stored(&[
            ("cache-control", "max-age=10000"),
            ("cdn-cache-control", "no-store")
        ]),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        stored(&[
            ("cache-control", "max-age=10000"),
            ("cdn-cache-control", "private")
        ]),
        Err(NotStored::Private)
    );
    assert_eq!(
        stored(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=10000")
        ]),
        Ok(())
    );
    let no_cache = Freshness::of(
        200,
        &h(&[("cdn-cache-control", "no-cache, max-age=100")]),
        NOW,
    );
    assert_eq!(
        no_cache.decide(at(NOW), &CacheControl::default(), NOW),
        Use::Revalidate
    );
}

#[test]
fn an_invalid_cdn_cache_control_is_ignored_whole() {
    let fresh = |resp: &[(&str, &str)]| freshness_lifetime(200, &h(resp), NOW);
    for bad in [
        "max-age=10000, &&&&&",
        "max-age=\"10000\"",
        "max-age =100",
        "MaX-aGe=3600",
        "no-store=1",
    ] {
        assert_eq!(
            fresh(&[("cache-control", "max-age=5"), ("cdn-cache-control", bad)]),
            5,
            "{bad:?} must be ignored"
        );
    }
    assert_eq!(
        store(
            &[],
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=10000, &&&&&")
            ]
        ),
        Err(NotStored::NoStore)
    );
}

#[test]
fn two_expires_fields_mean_already_expired() {
    let d = date(NOW);
    let far = date(NOW + 10_000);
    let resp = h(&[("date", &d), ("expires", &far), ("expires", &far)]);
    assert_eq!(freshness_lifetime(200, &resp, NOW), 0);
    let one = h(&[("date", &d), ("expires", &far)]);
    assert_eq!(freshness_lifetime(200, &one, NOW), 10_000);
}

#[test]
fn surrogate_control_governs_without_cdn_cache_control() {
    let d = date(NOW);
    let far = date(NOW + 10_000);
    let fresh = |resp: &[(&str, &str)]| freshness_lifetime(200, &h(resp), NOW);
    assert_eq!(
        fresh(&[
            ("cache-control", "max-age=3600"),
            ("surrogate-control", "max-age=1")
        ]),
        1
    );
    assert_eq!(
        fresh(&[
            ("date", &d),
            ("expires", &far),
            ("surrogate-control", "max-age=0")
        ]),
        0
    );
    // Aimed at another surrogate: not ours; aimed at us: ours.
    assert_eq!(fresh(&[("surrogate-control", "max-age=3600;other")]), 0);
    assert_eq!(fresh(&[("surrogate-control", "max-age=3600;edge")]), 3600);
    // CDN-Cache-Control, when valid, wins.
    assert_eq!(
        fresh(&[
            ("surrogate-control", "max-age=1"),
            ("cdn-cache-control", "max-age=60")
        ]),
        60
    );
    assert_eq!(
        store(
            &[],
            200,
            &[
                ("cache-control", "max-age=10000"),
                ("surrogate-control", "no-store")
            ]
        ),
        Err(NotStored::NoStore)
    );
}
