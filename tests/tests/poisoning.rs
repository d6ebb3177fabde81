//! Cache poisoning as an attacker tries it: a malformed authority, forwarding
//! headers an untrusted client makes up, and error pages with `max-age`. The
//! origin reflects what it was told; the next plain visitor must get the
//! origin's real answer, never the attacker's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edge_tests::scripted::{fetch, Reply, Scripted, Seen};
use edge_tests::{curl, h3_requests, raw_http, tls_args, Edge, EdgeConfig, Pki};

/// Headers a client may use to claim where it came from, each with a value
/// that would show up in a reflected page.
const CLAIMS: [(&str, &str); 12] = [
    ("forwarded", "for=6.6.6.6;host=evil.test;proto=https"),
    ("x-forwarded-prefix", "/evil-prefix"),
    ("x-forwarded-uri", "/evil-uri"),
    ("x-forwarded-host", "evil.test"),
    ("x-forwarded-proto", "evil"),
    ("x-forwarded-server", "evil.test"),
    ("x-forwarded-port", "6666"),
    ("x-real-ip", "6.6.6.6"),
    ("x-original-host", "evil.test"),
    ("x-original-url", "/evil-url"),
    ("x-rewrite-url", "/evil-url"),
    ("x-host", "evil.test"),
];

/// A page that reflects every forwarding header and Host, fresh for a minute.
fn reflecting(cache_control: &'static str) -> impl Fn(&Seen) -> Reply {
    move |seen| {
        let mut body = format!("host={}\n", seen.header("host").unwrap_or("-"));
        for (name, _) in CLAIMS {
            for v in seen.headers.get_all(name) {
                body.push_str(&format!(
                    "{name}={}\n",
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
        }
        Reply::ok(&[("cache-control", cache_control)], body)
    }
}

/// Edge with the cache on, an h1 pool to `origin`, and `/nocache` uncached;
/// `route_extra` is added to the catch-all route's TOML.
async fn edge(origin: &Scripted, top: &[(&str, &str)], route_extra: &str) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .cache_setting("enabled", "true");
    for (k, v) in top {
        config = config.top_setting(k, v);
    }
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let mut toml = config.to_toml(&pki);
    let catch_all = "\n[[routes]]\npath_prefix = \"/\"\npool = \"default\"\n";
    anyhow::ensure!(
        toml.contains(catch_all),
        "catch-all route rendered as expected"
    );
    let routes = format!(
        "\n[[routes]]\npath_prefix = \"/nocache\"\npool = \"default\"\ncache = false\n{catch_all}{route_extra}"
    );
    toml = toml.replace(catch_all, &routes);
    Edge::start_with_toml(dir, pki, &toml).await
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_host_is_refused_and_never_poisons_the_cache() -> anyhow::Result<()> {
    let origin = Scripted::start(reflecting("max-age=60")).await?;
    let edge = edge(&origin, &[], "").await?;
    let attack = "good.test:80\"><script>x</script>";
    let response = raw_http(
        edge.http()?,
        &format!("GET /page HTTP/1.1\r\nHost: {attack}\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-request-id:"),
        "edge's error page: {response}"
    );
    // The same over h2 (`:authority`) and h3 (Host beside `:authority`).
    let https = format!("https://localhost:{}/page", edge.https_addr.port());
    let h2 = |host: String| {
        let args = [
            tls_args(&edge),
            vec![
                "--http2".into(),
                "-H".into(),
                format!("host: {host}"),
                https.clone(),
            ],
        ]
        .concat();
        async move { curl(&args).await.map(|r| r.status) }
    };
    // The h2 library itself resets a stream whose `:authority` is not even URI
    // syntax (curl then fails: status 0); either way nothing is forwarded.
    let raw = h2(attack.to_owned()).await.unwrap_or(0);
    assert!(raw == 400 || raw == 0, "h2: {raw}");
    // An `:authority` that is URI syntax but not a valid host and port is edge's 400.
    assert_eq!(h2("good.test:0".to_owned()).await?, 400);
    let spec = serde_json::json!([{"path": "/page", "headers": [["host", attack]]}]);
    let h3 = &h3_requests(&edge, &spec).await?[0];
    // h3 checks Host against `:authority` itself and resets the stream
    // (H3_MESSAGE_ERROR); edge's own check answers 400. Neither forwards.
    assert!(h3["status"] == 400 || h3["reset"] == 0x10e, "h3: {h3}");
    assert_eq!(
        origin.count("/page"),
        0,
        "a refused request reached the origin"
    );

    let visitor = fetch(edge.http()?, "GET", "good.test", "/page", &[]).await?;
    assert_eq!(visitor.status, 200);
    assert_eq!(visitor.text(), CLEAN_PAGE, "the origin's real page");
    let again = fetch(edge.http()?, "GET", "good.test", "/page", &[]).await?;
    assert_eq!(again.text(), CLEAN_PAGE);
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_authority_share_one_key_and_one_host_upstream() -> anyhow::Result<()> {
    let origin = Scripted::start(reflecting("max-age=60")).await?;
    let edge = edge(&origin, &[], "").await?;
    for host in ["good.test", "GOOD.Test.", "good.test:80", "good.test.:80"] {
        let got = fetch(edge.http()?, "GET", host, "/one", &[]).await?;
        assert_eq!(
            (got.status, got.text()),
            (200, CLEAN_PAGE.to_owned()),
            "{host}"
        );
    }
    assert_eq!(origin.count("/one"), 1, "one entry for every spelling");
    let other_port = fetch(edge.http()?, "GET", "good.test:8080", "/one", &[]).await?;
    assert!(other_port.text().starts_with("host=good.test:8080\n"));
    for bad in [
        "good.test:0",
        "good.test:65536",
        "user@good.test",
        "good.test:80x",
    ] {
        let got = fetch(edge.http()?, "GET", bad, "/one", &[]).await?;
        assert_eq!(got.status, 400, "{bad}");
    }
    assert_eq!(origin.count("/one"), 2);
    Ok(())
}

/// What a plain request to `target` makes the origin reflect, for comparison.
const CLEAN_PAGE: &str = "host=good.test\n\
    forwarded=for=127.0.0.1;proto=http;host=good.test\n\
    x-forwarded-host=good.test\n\
    x-forwarded-proto=http\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_client_never_reach_the_origin() -> anyhow::Result<()>
{
    let origin = Scripted::start(reflecting("max-age=60")).await?;
    let edge = edge(&origin, &[], "").await?;
    for target in ["/cached", "/nocache/page"] {
        let attacker = fetch(edge.http()?, "GET", "good.test", target, &CLAIMS).await?;
        assert_eq!(attacker.status, 200);
        assert_eq!(
            attacker.text(),
            CLEAN_PAGE,
            "{target}: the attacker's own answer"
        );
        let seen = origin.seen();
        let last = seen.last().map(|s| s.headers.clone()).unwrap_or_default();
        for (name, _) in CLAIMS {
            for v in last.get_all(name) {
                let v = String::from_utf8_lossy(v.as_bytes());
                assert!(
                    !v.contains("evil") && !v.contains("6.6.6.6") && !v.contains("6666"),
                    "{target}: {name}: {v} reached the origin"
                );
            }
        }
        let visitor = fetch(edge.http()?, "GET", "good.test", target, &[]).await?;
        assert_eq!(
            visitor.text(),
            CLEAN_PAGE,
            "{target}: the next visitor's page"
        );
    }
    assert_eq!(
        origin.count("/cached"),
        1,
        "the visitor was served from cache"
    );
    assert_eq!(origin.count("/nocache/page"), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_headers_pass_and_forwarded_is_appended() -> anyhow::Result<()>
{
    let origin = Scripted::start(reflecting("no-store")).await?;
    let edge = edge(&origin, &[("trusted_proxies", "[\"127.0.0.0/8\"]")], "").await?;
    let claims = [("forwarded", "for=192.0.2.1"), ("x-real-ip", "192.0.2.1")];
    let got = fetch(edge.http()?, "GET", "good.test", "/nocache/x", &claims).await?;
    let page = got.text();
    assert!(
        page.contains("forwarded=for=192.0.2.1, for=127.0.0.1;proto=http;host=good.test\n"),
        "{page}"
    );
    assert!(page.contains("x-real-ip=192.0.2.1\n"), "{page}");
    Ok(())
}

/// An origin answering `status` with a minute's freshness, counting requests.
fn erring(status: u16, hits: Arc<AtomicUsize>) -> impl Fn(&Seen) -> Reply {
    move |_| {
        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::new(status, &[("cache-control", "max-age=60")], format!("#{n}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_with_max_age_are_not_stored_unless_the_route_lists_them() -> anyhow::Result<()>
{
    for status in [404u16, 500] {
        let hits = Arc::new(AtomicUsize::new(0));
        let origin = Scripted::start(erring(status, hits.clone())).await?;
        let edge = edge(&origin, &[], "").await?;
        for _ in 0..2 {
            let got = fetch(edge.http()?, "GET", "good.test", "/err", &[]).await?;
            assert_eq!(got.status, status);
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "{status} was stored by default"
        );
    }
    // An operator who wants 404s cached says so.
    let hits = Arc::new(AtomicUsize::new(0));
    let origin = Scripted::start(erring(404, hits.clone())).await?;
    let edge = edge(&origin, &[], "cache_statuses = [200, 404]\n").await?;
    for _ in 0..2 {
        let got = fetch(edge.http()?, "GET", "good.test", "/err", &[]).await?;
        assert_eq!((got.status, got.text()), (404, "#1".to_owned()));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    Ok(())
}
