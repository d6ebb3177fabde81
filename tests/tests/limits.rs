//! `[[rate_limits]]` against the real binary: a header-keyed limit isolates two
//! clients and its 429 carries Retry-After, the RateLimit fields and the request
//! id without reaching the origin; a `global` limit is shared by two edges on one
//! real redis-server (the accepted total follows the GCRA maths); a hung Redis
//! (SIGSTOP) falls back to the local limit with no 5xx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_tests::redis::Redis;
use edge_tests::scripted::{get, Got, Reply, Scripted};
use edge_tests::{eventually, Edge, EdgeConfig};

const DEADLINE: Duration = Duration::from_secs(20);

async fn origin() -> anyhow::Result<Scripted> {
    Scripted::start(|_| Reply::ok(&[], "ok")).await
}

fn edge_config(origin: &Scripted, sections: &str) -> EdgeConfig {
    EdgeConfig::new(origin.url())
        .protocol("h1")
        .section(sections)
}

/// An edge sharing `redis`, once it holds the connection.
async fn edge_on_redis(origin: &Scripted, redis: &Redis, rule: &str) -> anyhow::Result<Edge> {
    let config = edge_config(
        origin,
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"200ms\"\n\n{rule}",
            redis.url()
        ),
    );
    let e = Edge::start(&config).await?;
    e.redis_connected(DEADLINE).await?;
    Ok(e)
}

fn requests_seen(origin: &Scripted) -> usize {
    origin.seen().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keyed_limit_isolates_clients_and_its_429_never_reaches_the_origin(
) -> anyhow::Result<()> {
    let origin = origin().await?;
    let edge = Edge::start(&edge_config(
        &origin,
        "[[rate_limits]]\nname = \"per-client\"\nkey = \"header:x-client\"\nrate = \"1/m\"\nburst = 3\n",
    ))
    .await?;
    let addr = edge.http()?;
    for i in 0..3 {
        let got = get(addr, "/a", &[("x-client", "alice")]).await?;
        assert_eq!(got.status, 200, "alice's request {i} is within the burst");
    }
    let before = requests_seen(&origin);
    let refused = get(addr, "/a", &[("x-client", "alice")]).await?;
    assert_eq!(refused.status, 429, "alice is over her limit");
    assert_eq!(
        requests_seen(&origin),
        before,
        "the 429 never reached the origin"
    );
    // 1/m: one more request fits after 60 s; the policy is 3 per 3 minutes.
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"per-client\";q=3;w=180")
    );
    assert_eq!(refused.header("ratelimit"), Some("\"per-client\";r=0;t=60"));
    assert!(
        refused
            .header("x-request-id")
            .is_some_and(|v| !v.is_empty()),
        "the 429 carries the request id: {:?}",
        refused.headers
    );
    // Bob is counted apart from Alice, and a request without the header is not
    // limited by this rule at all.
    let bob = get(addr, "/a", &[("x-client", "bob")]).await?;
    assert_eq!(bob.status, 200, "bob still gets through");
    for i in 0..5 {
        let anon = get(addr, "/a", &[]).await?;
        assert_eq!(
            anon.status, 200,
            "request {i} without x-client is not limited"
        );
    }
    let (count, page) = edge
        .metric("proxy_rate_limited_total{rule=\"per-client\"}")
        .await?;
    assert_eq!(count, Some(1.0), "{page}");
    Ok(())
}

/// Sends `per_second` requests a second for `duration`, alternating `edges`,
/// each on its own task; returns every status and the wall time between the
/// first and the last send.
async fn steady_load(
    edges: &[&Edge],
    per_second: u32,
    duration: Duration,
) -> anyhow::Result<(Vec<u16>, Duration)> {
    let addrs: Vec<_> = edges.iter().map(|e| e.http()).collect::<Result<_, _>>()?;
    let total = (f64::from(per_second) * duration.as_secs_f64()) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::with_capacity(total);
    let mut first = None;
    let mut last = Instant::now();
    for i in 0..total {
        tick.tick().await;
        last = Instant::now();
        first.get_or_insert(last);
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            get(addr, "/shared", &[]).await.map(|g: Got| g.status)
        }));
    }
    let mut statuses = Vec::with_capacity(total);
    for t in tasks {
        statuses.push(t.await??);
    }
    Ok((statuses, last - first.unwrap_or(last)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_is_shared_by_two_edges_through_redis() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = origin().await?;
    let rule = "[[rate_limits]]\nname = \"shared\"\nkey = \"route\"\nrate = \"100/s\"\nburst = 10\nscope = \"global\"\nfallback = \"local\"\n";
    let a = edge_on_redis(&origin, &redis, rule).await?;
    let b = edge_on_redis(&origin, &redis, rule).await?;
    // 150/s offered, half again the rate, split evenly across both edges, 10 s.
    let (statuses, wall) = steady_load(&[&a, &b], 150, Duration::from_secs(10)).await?;
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        accepted + refused,
        statuses.len(),
        "only 200 and 429: {statuses:?}"
    );
    // GCRA from an empty bucket: the burst at once, then one per interval, so
    // over the wall time W between the first and the last request at most
    // burst + rate × W are let through (the offered load is higher throughout).
    let expected = 10.0 + 100.0 * wall.as_secs_f64();
    let got = accepted as f64;
    assert!(
        (got - expected).abs() <= expected * 0.05,
        "accepted {accepted} of {} over {wall:?}; expected {expected:.1} ± 5% \
         (two unshared edges would let about twice that through)",
        statuses.len()
    );
    for e in [&a, &b] {
        let (errors, page) = e.metric("proxy_redis_errors_total{kind=\"error\"}").await?;
        assert!(errors.unwrap_or(0.0) == 0.0, "no script errors:\n{page}");
    }
    eprintln!(
        "global 100/s burst 10 over {wall:?}: accepted {accepted}, refused {refused}, expected {expected:.1}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_falls_back_to_the_local_limit_with_no_5xx() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = origin().await?;
    let rule = "[[rate_limits]]\nname = \"fallback\"\nkey = \"header:x-client\"\nrate = \"1/m\"\nburst = 5\nscope = \"global\"\n";
    let edge = Arc::new(edge_on_redis(&origin, &redis, rule).await?);
    let addr = edge.http()?;
    // Through Redis first: the rule works globally.
    let got = get(addr, "/a", &[("x-client", "warm")]).await?;
    assert_eq!(got.status, 200);
    redis.hang()?;
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..12 {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            get(addr, "/a", &[("x-client", "carol")]),
        )
        .await??;
        slowest = slowest.max(started.elapsed());
        statuses.push(got.status);
    }
    redis.resume()?;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "no 5xx while Redis hangs: {statuses:?}"
    );
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        accepted, 5,
        "the burst of 5 still applies, on this edge's counters: {statuses:?}"
    );
    // Each request waited at most about one Redis deadline (100 ms), then the
    // breaker skipped Redis; the bound here is generous for a loaded machine.
    assert!(
        slowest < Duration::from_secs(2),
        "a hung Redis held a request {slowest:?}"
    );
    eprintln!("redis SIGSTOP: {statuses:?}, slowest {slowest:?}");
    Ok(())
}

fn sighup(edge: &Edge) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &edge.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

/// Writes `config` over the edge's file, sends SIGHUP and waits until the
/// `n`th reload was applied.
async fn reload(edge: &Edge, config: &EdgeConfig, n: u32) -> anyhow::Result<()> {
    std::fs::write(&edge.config_path, config.to_toml(&edge.pki))?;
    sighup(edge)?;
    eventually("reload applied", DEADLINE, || async {
        let (ok, _) = edge
            .metric("proxy_config_reloads_total{result=\"ok\"}")
            .await?;
        Ok((ok == Some(f64::from(n))).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counters_of_an_unchanged_rule_and_resets_a_changed_one(
) -> anyhow::Result<()> {
    let origin = origin().await?;
    let rule = |burst: u32| {
        format!("[[rate_limits]]\nname = \"r\"\nkey = \"header:x-client\"\nrate = \"1/m\"\nburst = {burst}\n")
    };
    let edge = Edge::start(&edge_config(&origin, &rule(2))).await?;
    let addr = edge.http()?;
    let alice = || get(addr, "/a", &[("x-client", "alice")]);
    assert_eq!(alice().await?.status, 200);
    assert_eq!(alice().await?.status, 200);
    assert_eq!(alice().await?.status, 429, "alice used her burst");

    // The same rule beside a new one: alice's counter is kept.
    let other = "\n[[rate_limits]]\nname = \"other\"\npath_prefix = \"/other\"\nrate = \"5/s\"\n";
    reload(
        &edge,
        &edge_config(&origin, &format!("{}{other}", rule(2))),
        1,
    )
    .await?;
    assert_eq!(
        alice().await?.status,
        429,
        "an unchanged rule keeps counting"
    );

    // The rule itself changed: it starts with a full bucket.
    reload(&edge, &edge_config(&origin, &rule(3)), 2).await?;
    assert_eq!(alice().await?.status, 200, "a changed rule starts afresh");
    Ok(())
}
