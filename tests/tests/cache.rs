//! The layered cache against real processes: edge binaries sharing a real
//! `redis-server`, and a programmable origin that counts what reaches it.
//! Every wait is a condition with a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use bytes::Bytes;
use edge_tests::redis::Redis;
use edge_tests::scripted::{self, fetch, get, Got, Reply, ReplyBody, Scripted};
use edge_tests::{eventually, toml_str, Edge, EdgeConfig};
use http_body_util::BodyExt as _;

const DEADLINE: Duration = Duration::from_secs(10);

/// Edge over `origin` with the cache on; L2 on `redis` when given.
async fn edge(
    origin: &Scripted,
    redis: Option<&Redis>,
    settings: &[(&str, &str)],
) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .cache_setting("enabled", "true");
    if let Some(r) = redis {
        config = config
            .cache_setting("redis", &toml_str(&r.url()))
            .cache_setting("redis_breaker_cooldown", "\"200ms\"");
    }
    for (k, v) in settings {
        config = config.cache_setting(k, v);
    }
    let e = Edge::start(&config).await?;
    if redis.is_some() {
        e.redis_connected(DEADLINE).await?;
    }
    Ok(e)
}

/// A counter whose value each origin answer carries (`#1`, `#2`, ...).
fn numbered(headers: &'static [(&'static str, &'static str)]) -> impl Fn(&scripted::Seen) -> Reply {
    let n = AtomicUsize::new(0);
    move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(headers, format!("#{i}"))
    }
}

/// Cache entries in Redis (not locks, not purge records).
async fn redis_entries(redis: &Redis) -> anyhow::Result<usize> {
    let keys = redis.keys().await?;
    Ok(keys
        .iter()
        .filter(|k| !k.starts_with("edge:cache:lock:") && *k != "edge:cache:bans")
        .filter(|k| k.starts_with("edge:cache:"))
        .count())
}

async fn redis_has_entries(redis: &Redis) -> anyhow::Result<Option<()>> {
    Ok((redis_entries(redis).await? > 0).then_some(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_l1_hit_then_l2_hit_on_another_edge() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let a = edge(&origin, Some(&redis), &[]).await?;

    let first = get(a.http()?, "/obj", &[]).await?;
    assert_eq!((first.status, first.text().as_str()), (200, "#1"));
    assert_eq!(first.cache_status(), "edge; fwd=miss; stored");
    eventually("the entry in L1", DEADLINE, || async {
        let again = get(a.http()?, "/obj", &[]).await?;
        Ok((again.cache_status() == "edge; hit; detail=l1").then_some(again))
    })
    .await
    .map(|g| assert_eq!(g.text(), "#1"))?;
    assert!(get(a.http()?, "/obj", &[]).await?.header("age").is_some());
    eventually("the entry in redis", DEADLINE, || redis_has_entries(&redis)).await?;

    // A second edge starts with an empty L1: the entry comes from Redis.
    let b = edge(&origin, Some(&redis), &[]).await?;
    let from_l2 = get(b.http()?, "/obj", &[]).await?;
    assert_eq!(from_l2.cache_status(), "edge; hit; detail=l2");
    assert_eq!(from_l2.text(), "#1");
    let then_l1 = get(b.http()?, "/obj", &[]).await?;
    assert_eq!(then_l1.cache_status(), "edge; hit; detail=l1");
    assert_eq!(origin.count("/obj"), 1, "the origin was asked once in all");

    let metrics = fetch(a.admin()?, "GET", "localhost", "/metrics", &[])
        .await?
        .text();
    for series in [
        "proxy_cache_requests_total{result=\"hit_l1\"}",
        "proxy_cache_stored_bytes{layer=\"l1\"}",
        "proxy_redis_breaker_open 0",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    Ok(())
}

/// `shared`, fresh for a minute, sent 300 ms after the request arrives.
fn slow_shared_answer() -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tx.send(Bytes::from_static(b"shared")).await;
    });
    Reply {
        status: http::StatusCode::OK,
        headers: vec![("cache-control".into(), "max-age=60".into())],
        body: ReplyBody::Channel(rx),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_misses_make_one_origin_request() -> anyhow::Result<()> {
    // The answer takes a while, so the other 99 arrive while it is in flight.
    let origin = Scripted::start(|_| slow_shared_answer()).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        set.spawn(async move { get(addr, "/cold", &[]).await });
    }
    while let Some(r) = set.join_next().await {
        let got = r??;
        assert_eq!((got.status, got.text().as_str()), (200, "shared"));
    }
    assert_eq!(origin.count("/cold"), 1);
    Ok(())
}

/// A path, what the origin answers there, and the first client's request headers.
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_two_edges_make_one_origin_request() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = Scripted::start(|_| slow_shared_answer()).await?;
    let a = edge(&origin, Some(&redis), &[]).await?;
    let b = edge(&origin, Some(&redis), &[]).await?;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { a.http()? } else { b.http()? };
        set.spawn(async move { get(addr, "/both", &[]).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r??.text(), "shared");
    }
    assert_eq!(origin.count("/both"), 1, "one fetch for both edges");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_no_store_set_cookie_and_authorization_are_not_shared() -> anyhow::Result<()> {
    let origin = Scripted::start(|_| Reply::ok(&[], "unused")).await?;
    let e = edge(&origin, None, &[]).await?;
    let cases: [Case; 4] = [
        ("/private", &[("cache-control", "private, max-age=60")], &[]),
        (
            "/no-store",
            &[("cache-control", "no-store, max-age=60")],
            &[],
        ),
        (
            "/cookie",
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=alice"),
            ],
            &[],
        ),
        (
            "/auth",
            &[("cache-control", "max-age=60")],
            &[("authorization", "Bearer alice")],
        ),
    ];
    for (path, headers, first_client) in cases {
        origin.set(numbered(headers));
        let alice = get(e.http()?, path, first_client).await?;
        assert_eq!(alice.text(), "#1", "{path}");
        let bob = get(e.http()?, path, &[]).await?;
        assert_eq!(
            bob.text(),
            "#2",
            "{path}: the second client got the first one's answer"
        );
        assert!(bob.header("set-cookie") != Some("session=alice") || path == "/cookie");
        assert_eq!(origin.count(path), 2, "{path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart_and_hosts_never_share() -> anyhow::Result<()> {
    let origin = Scripted::start(|s| {
        let enc = s.header("accept-encoding").unwrap_or("none").to_owned();
        let host = s.header("host").unwrap_or("").to_owned();
        Reply::ok(
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            format!("{host} {enc}"),
        )
    })
    .await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    for round in 0..2 {
        for enc in ["gzip", "br"] {
            let got = get(addr, "/v", &[("accept-encoding", enc)]).await?;
            assert_eq!(got.text(), format!("localhost {enc}"), "round {round}");
        }
        let plain = get(addr, "/v", &[]).await?;
        assert_eq!(plain.text(), "localhost none");
        for host in ["a.example", "B.example"] {
            let got = fetch(addr, "GET", host, "/v", &[("accept-encoding", "gzip")]).await?;
            // The origin is told the canonical (lower-case) host.
            assert_eq!(got.text(), format!("{} gzip", host.to_ascii_lowercase()));
        }
    }
    assert_eq!(origin.count("/v"), 5, "each variant and host fetched once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_only_if_cached_and_request_no_cache() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    let cold = get(addr, "/cold", &[("cache-control", "only-if-cached")]).await?;
    assert_eq!(cold.status, 504);
    assert_eq!(origin.count("/cold"), 0);
    assert_eq!(get(addr, "/h", &[]).await?.text(), "#1");
    let head = fetch(addr, "HEAD", "localhost", "/h", &[]).await?;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.cache_status(), "edge; hit; detail=l1");
    assert_eq!(head.header("content-length"), Some("2"));
    let cached = get(addr, "/h", &[("cache-control", "only-if-cached")]).await?;
    assert_eq!(cached.text(), "#1");
    let forced = get(addr, "/h", &[("cache-control", "no-cache")]).await?;
    assert_eq!(forced.text(), "#2", "no-cache goes to the origin");
    assert_eq!(
        get(addr, "/h", &[]).await?.text(),
        "#2",
        "and its answer is stored"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_headers_do_not_reach_the_origin() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let e = edge(&origin, None, &[]).await?;
    get(
        e.http()?,
        "/page",
        &[
            ("x-original-url", "/admin"),
            ("x-forwarded-scheme", "nothttps"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await?;
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-original-url"), None);
    assert_eq!(seen[0].header("x-forwarded-scheme"), None);
    assert_eq!(seen[0].header("x-forwarded-host"), Some("localhost"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entry_is_revalidated_and_a_304_refreshes_it() -> anyhow::Result<()> {
    let origin = Scripted::start(|s| {
        let headers = [("cache-control", "max-age=1"), ("etag", "\"v1\"")];
        if s.header("if-none-match") == Some("\"v1\"") {
            Reply::new(304, &headers, Bytes::new())
        } else {
            Reply::ok(&headers, "body v1")
        }
    })
    .await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/r", &[]).await?.text(), "body v1");
    let revalidated = eventually("a revalidation", DEADLINE, || async {
        let g = get(addr, "/r", &[]).await?;
        Ok(g.cache_status().contains("fwd-status=304").then_some(g))
    })
    .await?;
    assert_eq!(
        (revalidated.status, revalidated.text().as_str()),
        (200, "body v1")
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    let hit = get(addr, "/r", &[]).await?;
    assert_eq!(
        hit.cache_status(),
        "edge; hit; detail=l1",
        "the 304 refreshed the entry"
    );
    // The client's own validator is answered here.
    let not_modified = get(addr, "/r", &[("if-none-match", "\"v1\"")]).await?;
    assert_eq!(not_modified.status, 304);

    // Stale again (seen without origin traffic: only-if-cached gets 504), then
    // many clients at once: one conditional request between them.
    eventually("the entry to go stale", DEADLINE, || async {
        let g = get(addr, "/r", &[("cache-control", "only-if-cached")]).await?;
        Ok((g.status == 504).then_some(()))
    })
    .await?;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        set.spawn(async move { get(addr, "/r", &[]).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r??.text(), "body v1");
    }
    let conditional = origin
        .seen()
        .iter()
        .filter(|s| s.header("if-none-match").is_some())
        .count();
    assert_eq!(conditional, 2, "one revalidation per expiry");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_for_another_representation_is_not_merged() -> anyhow::Result<()> {
    let n = AtomicUsize::new(0);
    let origin = Scripted::start(move |s| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        if first {
            Reply::ok(&[("cache-control", "max-age=1"), ("etag", "\"v1\"")], "one")
        } else if s.header("if-none-match").is_some() {
            Reply::new(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
                Bytes::new(),
            )
        } else {
            Reply::ok(
                &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
                "two",
            )
        }
    })
    .await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/rep", &[]).await?.text(), "one");
    eventually("the new representation", DEADLINE, || async {
        let g = get(addr, "/rep", &[]).await?;
        ensure!(
            g.text() == "one" || g.text() == "two",
            "body {:?}",
            g.text()
        );
        Ok((g.text() == "two").then_some(()))
    })
    .await?;
    assert_eq!(
        get(addr, "/rep", &[]).await?.cache_status(),
        "edge; hit; detail=l1"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_while_one_refresh_runs() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[(
        "cache-control",
        "max-age=1, stale-while-revalidate=60",
    )]))
    .await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/swr", &[]).await?.text(), "#1");
    let stale = eventually("a stale answer", DEADLINE, || async {
        let g = get(addr, "/swr", &[]).await?;
        Ok(g.cache_status()
            .contains("stale-while-revalidate")
            .then_some(g))
    })
    .await?;
    assert_eq!(stale.text(), "#1", "stale served at once");
    eventually("the refreshed entry", DEADLINE, || async {
        let g = get(addr, "/swr", &[]).await?;
        Ok((g.text() == "#2").then_some(()))
    })
    .await?;
    assert_eq!(origin.count("/swr"), 2, "one background refresh");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_stale_while_the_origin_is_down() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[(
        "cache-control",
        "max-age=1, stale-if-error=60",
    )]))
    .await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/sie", &[]).await?.text(), "#1");
    origin.stop();
    let stale = eventually("a stale-if-error answer", DEADLINE, || async {
        let g = get(addr, "/sie", &[]).await?;
        ensure!(
            g.status == 200,
            "status {} while the origin is down",
            g.status
        );
        Ok(g.cache_status().contains("stale-if-error").then_some(g))
    })
    .await?;
    assert_eq!(stale.text(), "#1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_the_target() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/item", &[]).await?.text(), "#1");
    assert_eq!(
        get(addr, "/item", &[]).await?.cache_status(),
        "edge; hit; detail=l1"
    );
    let post = fetch(addr, "POST", "localhost", "/item", &[]).await?;
    assert_eq!(post.status, 200);
    let after = get(addr, "/item", &[]).await?;
    assert_eq!(after.text(), "#3", "the POST dropped the stored GET");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_url_and_by_prefix() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin =
        Scripted::start(|s| Reply::ok(&[("cache-control", "max-age=60")], s.target.clone()))
            .await?;
    let e = edge(&origin, Some(&redis), &[]).await?;
    let addr = e.http()?;
    for p in ["/p/a", "/p/b", "/q"] {
        get(addr, p, &[]).await?;
        eventually("a hit", DEADLINE, || async {
            Ok(get(addr, p, &[])
                .await?
                .cache_status()
                .contains("hit")
                .then_some(()))
        })
        .await?;
    }
    let admin = e.admin()?;
    let purge = |q: &'static str| async move {
        fetch(
            admin,
            "POST",
            "localhost",
            &format!("/cache/purge?{q}"),
            &[],
        )
        .await
    };
    assert_eq!(
        purge("url=http%3A%2F%2Flocalhost%2Fp%2Fa").await?.status,
        200
    );
    assert!(get(addr, "/p/a", &[])
        .await?
        .cache_status()
        .contains("fwd=miss"));
    assert!(get(addr, "/p/b", &[]).await?.cache_status().contains("hit"));
    assert_eq!(purge("prefix=http://localhost/p/").await?.status, 200);
    assert!(get(addr, "/p/b", &[])
        .await?
        .cache_status()
        .contains("fwd=miss"));
    assert!(get(addr, "/q", &[]).await?.cache_status().contains("hit"));
    // Another edge sharing the Redis sees the prefix purge too.
    let other = edge(&origin, Some(&redis), &[]).await?;
    let q = get(other.http()?, "/q", &[]).await?;
    assert_eq!(q.cache_status(), "edge; hit; detail=l2");
    assert_eq!(origin.count("/p/b"), 2);
    Ok(())
}

/// Requests to `paths` on `addr`: every one 200 and each under `limit`.
async fn all_fast_and_ok(
    addr: std::net::SocketAddr,
    paths: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    for p in paths {
        let started = Instant::now();
        let g: Got = get(addr, p, &[]).await?;
        let took = started.elapsed();
        ensure!(g.status == 200, "{p}: status {}", g.status);
        ensure!(took < limit, "{p}: took {took:?} (limit {limit:?})");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_hung_or_garbage_costs_no_errors() -> anyhow::Result<()> {
    // Generous: Redis's own timeouts are seconds; ours is 50 ms with a breaker.
    let limit = Duration::from_millis(500);
    let mut redis = Redis::start().await?;
    let origin =
        Scripted::start(|s| Reply::ok(&[("cache-control", "max-age=60")], s.target.clone()))
            .await?;
    let a = edge(&origin, Some(&redis), &[]).await?;
    let warm: Vec<String> = (0..5).map(|i| format!("/warm/{i}")).collect();
    all_fast_and_ok(a.http()?, &warm, limit).await?;
    eventually("all entries in redis", DEADLINE, || async {
        Ok((redis_entries(&redis).await? == warm.len()).then_some(()))
    })
    .await?;

    // Garbage in Redis: a fresh edge reads it, counts it, and asks the origin.
    ensure!(redis.overwrite("edge:cache:", b"garbage").await? > 0);
    let b = edge(&origin, Some(&redis), &[]).await?;
    for p in &warm {
        let g = get(b.http()?, p, &[]).await?;
        assert_eq!((g.status, g.text()), (200, p.clone()));
        assert!(
            g.cache_status().contains("fwd=miss"),
            "{p}: {}",
            g.cache_status()
        );
    }
    let metrics = fetch(b.admin()?, "GET", "localhost", "/metrics", &[])
        .await?
        .text();
    assert!(
        metrics.contains("proxy_cache_redis_errors_total{kind=\"garbage\"}"),
        "{metrics}"
    );

    // Hung: L1 hits and misses alike stay fast.
    redis.hang()?;
    let cold: Vec<String> = (0..10).map(|i| format!("/hung/{i}")).collect();
    all_fast_and_ok(a.http()?, &warm, limit).await?;
    all_fast_and_ok(a.http()?, &cold, limit).await?;
    assert_eq!(
        get(a.http()?, "/warm/0", &[]).await?.cache_status(),
        "edge; hit; detail=l1"
    );
    redis.resume()?;

    // Killed: the same.
    redis.kill();
    let cold: Vec<String> = (0..10).map(|i| format!("/killed/{i}")).collect();
    all_fast_and_ok(a.http()?, &warm, limit).await?;
    all_fast_and_ok(a.http()?, &cold, limit).await?;

    // Back: L2 is written again once the breaker lets a probe through.
    redis.restart().await?;
    let n = AtomicUsize::new(0);
    eventually("L2 in use again", Duration::from_secs(20), || {
        let p = format!("/back/{}", n.fetch_add(1, Ordering::SeqCst));
        let (addr, redis) = (a.http(), &redis);
        async move {
            ensure!(get(addr?, &p, &[]).await?.status == 200);
            redis_has_entries(redis).await
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_streams_while_it_is_cached_and_stays_out_of_redis() -> anyhow::Result<()> {
    const TOTAL: usize = 200 << 20;
    const CHUNK: usize = 251 * 4096;
    let pattern: Bytes = (0..CHUNK)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let release = Arc::new(tokio::sync::Notify::new());
    let redis = Redis::start().await?;
    let origin = {
        let (pattern, release) = (pattern.clone(), Arc::clone(&release));
        Scripted::start(move |_| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (pattern, release) = (pattern.clone(), Arc::clone(&release));
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < TOTAL {
                    let n = CHUNK.min(TOTAL - sent);
                    if sent + n == TOTAL {
                        // The last chunk waits until the client has its first bytes.
                        release.notified().await;
                    }
                    if tx.send(pattern.slice(..n)).await.is_err() {
                        return;
                    }
                    sent += n;
                }
            });
            Reply {
                status: http::StatusCode::OK,
                headers: vec![
                    ("cache-control".into(), "max-age=600".into()),
                    ("content-length".into(), TOTAL.to_string()),
                ],
                body: ReplyBody::Channel(rx),
            }
        })
        .await?
    };
    let e = edge(
        &origin,
        Some(&redis),
        &[
            ("l1_max_bytes", "536870912"),
            ("l1_max_entry_bytes", "314572800"),
            ("l2_max_entry_bytes", "1048576"),
        ],
    )
    .await?;
    let resp = scripted::open(e.http()?, "GET", "localhost", "/big", &[]).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut released = false;
    // Were the body held back until complete, the origin (waiting for the
    // client's first bytes before its last chunk) and the client would wait on
    // each other until this deadline.
    let read_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Some(frame) = tokio::time::timeout_at(read_deadline, body.frame())
        .await
        .map_err(|_| {
            anyhow::anyhow!("no complete body by the deadline: first bytes were held back")
        })?
    {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let offset = received % CHUNK;
        // Frames may straddle pattern chunks; compare piecewise.
        let mut checked = 0;
        let mut at = offset;
        while checked < data.len() {
            let n = (CHUNK - at).min(data.len() - checked);
            assert_eq!(
                &data[checked..checked + n],
                &pattern[at..at + n],
                "at byte {}",
                received + checked
            );
            checked += n;
            at = 0;
        }
        received += data.len();
        if !released {
            // First bytes are here while the origin still holds its last chunk.
            release.notify_one();
            released = true;
        }
    }
    assert_eq!(received, TOTAL);
    let second = eventually("the object in L1", Duration::from_secs(30), || async {
        let g = get(e.http()?, "/big", &[]).await?;
        Ok(g.cache_status().contains("hit").then_some(g))
    })
    .await?;
    assert_eq!(second.cache_status(), "edge; hit; detail=l1");
    assert_eq!(second.body.len(), TOTAL);
    assert!(second.body.chunks(CHUNK).all(|c| c == &pattern[..c.len()]));
    assert_eq!(origin.count("/big"), 1);
    assert_eq!(
        redis_has_entries(&redis).await?,
        None,
        "above the L2 bound: not in Redis"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_a_reload() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/kept", &[]).await?.text(), "#1");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &e.pid().to_string()])
        .status()?;
    ensure!(status.success(), "kill -HUP failed");
    edge_tests::wait_until("reload logged", DEADLINE, || {
        e.log().contains("config reloaded")
    })
    .await?;
    let after = get(addr, "/kept", &[]).await?;
    assert_eq!(after.cache_status(), "edge; hit; detail=l1");
    assert_eq!(after.text(), "#1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_h1_over_tls_share_an_entry_that_plain_http_does_not() -> anyhow::Result<()> {
    let origin = Scripted::start(numbered(&[("cache-control", "max-age=60")])).await?;
    let e = edge(&origin, None, &[]).await?;
    let url = format!("{}/tls", e.https_origin());
    let mut h2 = edge_tests::tls_args(&e);
    h2.extend(["--http2".to_owned(), url.clone()]);
    let first = edge_tests::curl(&h2).await?;
    assert_eq!(
        (first.http_version.as_str(), first.text().as_str()),
        ("2", "#1")
    );
    let mut h1 = edge_tests::tls_args(&e);
    h1.extend(["--http1.1".to_owned(), url]);
    let second = edge_tests::curl(&h1).await?;
    assert_eq!(second.text(), "#1");
    assert_eq!(second.header("cache-status"), Some("edge; hit; detail=l1"));
    // The same path over plain HTTP is another URL (scheme is in the key).
    let plain = get(e.http()?, "/tls", &[]).await?;
    assert_eq!(plain.text(), "#2");
    Ok(())
}

/// An origin on a raw TCP socket, for what a well-behaved HTTP server library
/// will not do: for the `n`th request (from 0, read up to its blank line),
/// `answer(n)` gives the bytes to write before closing, or `None` to close
/// without a word.
struct RawOrigin {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    async fn start(
        answer: impl Fn(usize) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let (count, answer) = (Arc::clone(&requests), Arc::new(answer));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (count, answer) = (Arc::clone(&count), Arc::clone(&answer));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    if let Some(bytes) = answer(n) {
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn edge_over(url: String) -> anyhow::Result<Edge> {
    let config = EdgeConfig::new(url)
        .protocol("h1")
        .cache_setting("enabled", "true");
    Edge::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_revalidation_is_answered_by_a_stale_if_error_response() -> anyhow::Result<()> {
    // One answer, then every connection is closed without a response.
    let origin = RawOrigin::start(|n| {
        (n == 0).then(|| {
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, stale-if-error=60\r\n\
              Content-Length: 5\r\nConnection: close\r\n\r\nfirst"
                .to_vec()
        })
    })
    .await?;
    let e = edge_over(origin.url()).await?;
    let addr = e.http()?;
    let first = get(addr, "/sc", &[]).await?;
    assert_eq!((first.status, first.text().as_str()), (200, "first"));
    // Fresh answers come from the store; once stale, edge must revalidate,
    // the origin drops it, and the stored response stands in.
    let stale = eventually("a stale-if-error answer", DEADLINE, || async {
        let g = get(addr, "/sc", &[]).await?;
        ensure!(
            (g.status, g.text().as_str()) == (200, "first"),
            "status {} body {:?} ({})",
            g.status,
            g.text(),
            g.cache_status()
        );
        Ok(g.cache_status().contains("stale-if-error").then_some(g))
    })
    .await?;
    let age: u64 = stale.header("age").unwrap_or("0").parse()?;
    assert!(age >= 1, "served stale, Age {age}");
    assert!(
        origin.requests() >= 2,
        "the revalidation reached the origin"
    );
    Ok(())
}

const EARLY_HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
    HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\
    Connection: close\r\n\r\nfinal";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_103_from_the_origin_is_never_cached_nor_mixed_into_the_answer() -> anyhow::Result<()> {
    let origin = RawOrigin::start(|_| Some(EARLY_HINTS.to_vec())).await?;
    let e = edge_over(origin.url()).await?;
    // h1: the miss's final response (the 103 goes before it, see
    // early_hints.rs) is what is stored.
    for round in 0..2 {
        let g = get(e.http()?, "/eh1", &[]).await?;
        assert_eq!((g.status, g.text().as_str()), (200, "final"), "h1 #{round}");
        assert_eq!(g.header("link"), None, "the 103's fields stay out");
    }
    assert_eq!(
        get(e.http()?, "/eh1", &[]).await?.cache_status(),
        "edge; hit; detail=l1"
    );
    // h2 over TLS: a miss and a hit.
    for round in 0..2 {
        let mut args = edge_tests::tls_args(&e);
        args.extend(["--http2".to_owned(), format!("{}/eh2", e.https_origin())]);
        let r = edge_tests::curl(&args).await?;
        assert_eq!(r.http_version, "2");
        assert_eq!((r.status, r.text().as_str()), (200, "final"), "h2 #{round}");
        assert_eq!(r.header("link"), None);
    }
    // h3: a miss and a hit on one connection.
    let spec = serde_json::json!([
        {"method": "GET", "path": "/eh3"},
        {"method": "GET", "path": "/eh3"},
    ]);
    let results = edge_tests::h3_requests(&e, &spec).await?;
    for (round, r) in results.as_array().into_iter().flatten().enumerate() {
        assert_eq!(r["status"], 200, "h3: {r}");
        assert_eq!(r["body"], "final", "h3: {r}");
        let link = r["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h[0] == "link");
        assert!(!link, "h3: {r}");
        // The miss passed the origin's 103 on; the hit, from the store, has none.
        let interim: Vec<_> = r["interim"].as_array().into_iter().flatten().collect();
        let expected: &[u64] = if round == 0 { &[103] } else { &[] };
        let statuses: Vec<_> = interim
            .iter()
            .filter_map(|i| i["status"].as_u64())
            .collect();
        assert_eq!(statuses, expected, "h3 #{round}: {r}");
    }
    assert_eq!(origin.requests(), 3, "one origin request per path");
    Ok(())
}

/// An 11-byte body with both validators, fresh for a minute.
const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

fn ranged_origin() -> impl Fn(&scripted::Seen) -> Reply {
    move |s| {
        let headers = [
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("last-modified", LM),
        ];
        match s.header("range") {
            // What an origin does with a range: the part, as a 206.
            Some("bytes=0-1") => Reply::new(
                206,
                &[headers[0], headers[1], ("content-range", "bytes 0-1/11")],
                "ab",
            ),
            _ => Reply::ok(&headers, "abcdefghijk"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ranges_are_cut_from_a_stored_complete_response() -> anyhow::Result<()> {
    let origin = Scripted::start(ranged_origin()).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    assert_eq!(get(addr, "/r", &[]).await?.text(), "abcdefghijk");
    eventually("the entry in L1", DEADLINE, || async {
        let g = get(addr, "/r", &[]).await?;
        Ok((g.cache_status() == "edge; hit; detail=l1").then_some(()))
    })
    .await?;
    for (range, part, content_range) in [
        ("bytes=0-1", "ab", "bytes 0-1/11"),
        ("bytes=4-", "efghijk", "bytes 4-10/11"),
        ("bytes=-3", "ijk", "bytes 8-10/11"),
        ("bytes=9-99", "jk", "bytes 9-10/11"),
    ] {
        let g = get(addr, "/r", &[("range", range)]).await?;
        assert_eq!((g.status, g.text().as_str()), (206, part), "{range}");
        assert_eq!(g.header("content-range"), Some(content_range), "{range}");
        assert_eq!(g.header("content-length"), Some(&*part.len().to_string()));
        assert_eq!(g.cache_status(), "edge; hit; detail=l1", "{range}");
    }
    let none = get(addr, "/r", &[("range", "bytes=11-")]).await?;
    assert_eq!(none.status, 416);
    assert_eq!(none.header("content-range"), Some("bytes */11"));
    assert!(none.body.is_empty());
    // If-Range: the stored validator lets the range apply; another gets the whole.
    for (if_range, status, text) in [
        ("\"v1\"", 206, "ab"),
        (LM, 206, "ab"),
        ("\"v0\"", 200, "abcdefghijk"),
        ("W/\"v1\"", 200, "abcdefghijk"),
    ] {
        let g = get(
            addr,
            "/r",
            &[("range", "bytes=0-1"), ("if-range", if_range)],
        )
        .await?;
        assert_eq!((g.status, g.text().as_str()), (status, text), "{if_range}");
    }
    assert_eq!(origin.count("/r"), 1, "every range came from the store");
    // Several ranges are the origin's to answer (a multipart body).
    let several = get(addr, "/r", &[("range", "bytes=0-1,4-5")]).await?;
    assert_eq!(several.cache_status(), "edge; fwd=bypass");
    assert_eq!(origin.count("/r"), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_miss_goes_upstream_and_its_206_is_never_stored() -> anyhow::Result<()> {
    let origin = Scripted::start(ranged_origin()).await?;
    let e = edge(&origin, None, &[]).await?;
    let addr = e.http()?;
    for _ in 0..2 {
        let part = get(addr, "/p", &[("range", "bytes=0-1")]).await?;
        assert_eq!((part.status, part.text().as_str()), (206, "ab"));
        assert_eq!(part.cache_status(), "edge; fwd=bypass");
    }
    // The part is not taken for the whole: a plain GET is a miss.
    let whole = get(addr, "/p", &[]).await?;
    assert_eq!((whole.status, whole.text().as_str()), (200, "abcdefghijk"));
    assert_eq!(whole.cache_status(), "edge; fwd=miss; stored");
    assert_eq!(origin.count("/p"), 3);
    Ok(())
}
