//! A backend's death, hang or slowness must not reach clients: origins are real
//! processes (SIGKILL, SIGSTOP), load is a steady paced GET stream, and every
//! answer names the origin port that served it.

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::{errors, served_by, Answers, Edge, EdgeConfig, Load, OriginProcess, Reply};
use tokio::time::Instant;

const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");

/// A `test-origin` process on any free loopback port, answering after `delay_ms`:
/// its answers' bodies are its port; it logs every request (`REQ METHOD ID`).
async fn origin(delay_ms: u64) -> anyhow::Result<OriginProcess> {
    OriginProcess::start(TEST_ORIGIN, "127.0.0.1:0", delay_ms).await
}

/// One answer seen by the load: when, and which origin port (or what went wrong).
type Seen = Answers<u16>;

/// `clients` keep-alive clients, each sending a GET every 20 ms, until `until`.
async fn paced_load(edge: SocketAddr, clients: usize, until: Instant) -> anyhow::Result<Seen> {
    paced(edge, clients, until, http::Method::GET).await
}

/// As `paced_load`, with `method`; every request carries a unique `x-request-id`
/// (client number and sequence). Body-less, so a proxy *could* replay a POST: the
/// case that must not happen.
async fn paced(
    edge: SocketAddr,
    clients: usize,
    until: Instant,
    method: http::Method,
) -> anyhow::Result<Seen> {
    let load = Load::start(
        edge,
        clients,
        Duration::from_millis(20),
        method,
        Reply::port_in_body,
    );
    tokio::time::sleep_until(until).await; // workload timing: the load's length
    load.finish().await
}

async fn edge_over(origins: &[&OriginProcess], settings: &[(&str, &str)]) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origins[0].url());
    config.pools[0].endpoints = origins.iter().map(|o| o.url()).collect();
    for (key, value) in settings {
        config = config.pool_setting(key, value);
    }
    Edge::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_of_three_origins_under_load_loses_no_request() -> anyhow::Result<()> {
    let a = origin(0).await?;
    let b = origin(0).await?;
    let c = origin(0).await?;
    let b_addr = b.addr;
    let edge = edge_over(&[&a, &b, &c], &[]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 4, start + Duration::from_secs(14)));

    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    b.kill().await?;
    let killed = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(4)).await; // workload timing
    let b = OriginProcess::start(TEST_ORIGIN, &b_addr.to_string(), 0).await?;
    let restarted = Instant::now();
    let seen = load.await??;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let total = seen.len();
    assert!(total > 2000, "the load ran: {total} answers");
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("proxy_upstream_retries_total{backend=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "retries were counted: {retries:?}"
    );
    assert!(
        served_by(&seen, &b_addr.port(), start, killed) > 0,
        "b served before the kill"
    );
    let back = served_by(
        &seen,
        &b_addr.port(),
        restarted,
        restarted + Duration::from_secs(10),
    );
    assert!(back > 0, "restarted b got traffic again within 10 s");
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_hangs_one_origin_breaker_routes_around_it_and_sigcont_brings_it_back(
) -> anyhow::Result<()> {
    let a = origin(0).await?;
    let b = origin(0).await?;
    let c = origin(0).await?;
    let edge = edge_over(&[&a, &b, &c], &[("response_timeout", "\"500ms\"")]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 4, start + Duration::from_secs(16)));

    tokio::time::sleep_until(start + Duration::from_secs(1)).await; // workload timing
    c.signal("STOP")?;
    tokio::time::sleep_until(start + Duration::from_secs(6)).await; // workload timing
    c.signal("CONT")?;
    let resumed = Instant::now();
    let seen = load.await??;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let endpoint = format!("endpoint={}", c.url());
    assert!(
        edge.log()
            .lines()
            .any(|l| l.contains("circuit breaker opened") && l.contains(&endpoint)),
        "the hung origin's breaker opened:\n{}",
        edge.log()
    );
    let back = served_by(
        &seen,
        &c.addr.port(),
        resumed,
        resumed + Duration::from_secs(10),
    );
    assert!(
        back > 0,
        "after SIGCONT the origin got traffic again within 10 s"
    );
    Ok(())
}

/// Shares of each origin in answers after a warm-up second.
async fn shares_with_one_slow_origin(balancer: &str) -> anyhow::Result<(f64, usize)> {
    let a = origin(0).await?;
    let b = origin(0).await?;
    let slow = origin(100).await?;
    let edge = edge_over(&[&a, &b, &slow], &[("balancer", balancer)]).await?;
    let start = Instant::now();
    let seen = paced_load(edge.http()?, 4, start + Duration::from_secs(7)).await?;
    assert_eq!(errors(&seen), Vec::<String>::new());
    let warm = start + Duration::from_secs(1);
    let after: Vec<u16> = seen
        .iter()
        .filter(|(at, _)| *at >= warm)
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .collect();
    let slow_hits = after.iter().filter(|p| **p == slow.addr.port()).count();
    Ok((slow_hits as f64 / after.len().max(1) as f64, after.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_loses_traffic_with_the_default_balancer() -> anyhow::Result<()> {
    let (share, n) = shares_with_one_slow_origin("\"least_request\"").await?;
    assert!(share < 0.10, "slow origin got {share:.3} of {n} requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_a_slow_origin_its_third() -> anyhow::Result<()> {
    let (share, n) = shares_with_one_slow_origin("\"round_robin\"").await?;
    assert!(
        (0.25..0.42).contains(&share),
        "slow origin got {share:.3} of {n} requests"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_origins_down_answers_503_with_retry_after_once_breakers_open() -> anyhow::Result<()> {
    let a = origin(0).await?;
    let b = origin(0).await?;
    let edge = edge_over(&[&a, &b], &[]).await?;
    let url = format!("http://{}/", edge.http()?);
    let first = edge_tests::curl(&[url.as_str()]).await?;
    assert_eq!(first.status, 200);
    let (a_url, b_url) = (a.url(), b.url());
    a.kill().await?;
    b.kill().await?;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = edge_tests::curl(&[url.as_str()]).await?;
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"), "503 says when to retry");
            assert!(r.text().contains("no backend available"), "{}", r.text());
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|s| *s == 503),
        "breakers open: {statuses:?}"
    );
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    for url in [a_url, b_url] {
        let series =
            format!("proxy_endpoint_breaker_state{{backend=\"default\",endpoint=\"{url}\"}}");
        let state = metrics.lines().find(|l| l.starts_with(&series));
        assert!(
            state.is_some_and(|l| l.ends_with(" 1") || l.ends_with(" 2")),
            "{url}'s breaker is open (1) or half-open (2): {state:?}\n{metrics}"
        );
    }
    Ok(())
}

/// POSTs are not idempotent: when their backend dies, those in flight there may
/// fail, but none is sent twice (each request id reaches one origin once). They
/// are body-less, so replaying them would be mechanically possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_a_dying_origin_fail_at_most_in_flight_and_never_reach_two_origins(
) -> anyhow::Result<()> {
    let a = origin(50).await?;
    let b = origin(50).await?;
    let c = origin(50).await?;
    let logs = [a.log(), b.log(), c.log()];
    let clients = 4;
    let edge = edge_over(&[&a, &b, &c], &[]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced(
        edge.http()?,
        clients,
        start + Duration::from_secs(6),
        http::Method::POST,
    ));
    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    b.kill().await?;
    let seen = load.await??;

    let failures = errors(&seen);
    assert!(
        failures.len() <= clients,
        "at most one POST in flight per client can be lost with its backend: {failures:#?}"
    );
    let mut received = std::collections::HashMap::<String, usize>::new();
    for log in &logs {
        for line in log.lines() {
            if let Some(id) = line.strip_prefix("REQ POST ") {
                *received.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "POSTs delivered more than once: {twice:?}"
    );
    let answered = seen.iter().filter(|(_, r)| r.is_ok()).count();
    assert!(answered > 200, "the load ran: {answered} answers");
    assert!(
        received.len() >= answered,
        "every answered POST reached an origin"
    );
    Ok(())
}

/// An origin that serves traffic but reports itself unhealthy is taken out of
/// rotation by active health checks (passive breaking cannot see it), and put
/// back when it reports healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_unhealthy_origin_out_and_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let health = dir.path().join("b-health");
    std::fs::write(&health, "ok")?;
    let a = origin(0).await?;
    let b = OriginProcess::start_with_health(TEST_ORIGIN, "127.0.0.1:0", 0, Some(&health)).await?;
    // A generous probe timeout: on a loaded machine a slow probe of a would
    // leave no healthy endpoint (panic mode), and b would get traffic again.
    let check = "{ path = \"/healthz\", interval = \"100ms\", timeout = \"2s\", healthy = 2, unhealthy = 2 }";
    let edge = edge_over(&[&a, &b], &[("health_check", check)]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 2, start + Duration::from_secs(12)));

    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    std::fs::write(&health, "down")?;
    let marked_down = Instant::now();
    wait_until_logged(&edge, "health check failing").await?;
    let out = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(8)).await; // workload timing
                                                                    // b cannot be healthy before its health file says so; the log line that
                                                                    // says it is back is only seen a poll interval after the flip, and
                                                                    // requests b takes in between are rightly its own.
    let restored = Instant::now();
    std::fs::write(&health, "ok")?;
    wait_until_logged(&edge, "health check passing").await?;
    let back = Instant::now();
    let seen = load.await??;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let port = b.addr.port();
    assert!(
        served_by(&seen, &port, start, marked_down) > 0,
        "b served while healthy"
    );
    // Judged by arrival at b: requests already on their way when b went out may
    // still land (late, on a busy machine); none routed there 2 s later.
    let settle = Duration::from_secs(2);
    let late = b.requests_since(out + settle);
    let while_out = late.iter().filter(|t| **t < restored).count();
    assert_eq!(while_out, 0, "b out of rotation while unhealthy");
    assert!(
        served_by(&seen, &port, back, back + Duration::from_secs(3)) > 0,
        "b back in rotation"
    );
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    let series = format!(
        "proxy_endpoint_healthy{{backend=\"default\",endpoint=\"{}\"}} 1",
        b.url()
    );
    assert!(metrics.contains(&series), "{series} in\n{metrics}");
    Ok(())
}

async fn wait_until_logged(edge: &Edge, text: &str) -> anyhow::Result<()> {
    edge_tests::wait_until(text, Duration::from_secs(10), || edge.log().contains(text)).await
}

/// Endpoints that answer errors (503) are ejected like unreachable ones, but never
/// below `min_available_share` of the pool: with three endpoints and 0.5, the
/// first sick one goes out, the second stays in (ejecting it would leave one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_eject_an_origin_but_never_below_the_minimum_share() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files: Vec<_> = ["a", "b", "c"].iter().map(|n| dir.path().join(n)).collect();
    let mut origins = Vec::new();
    for file in &files {
        std::fs::write(file, "ok")?;
        origins.push(
            OriginProcess::start_with_health(TEST_ORIGIN, "127.0.0.1:0", 0, Some(file)).await?,
        );
    }
    let [a, b, c] = [&origins[0], &origins[1], &origins[2]];
    let edge = edge_over(&[a, b, c], &[("min_available_share", "0.5")]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 4, start + Duration::from_secs(9)));

    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    std::fs::write(&files[2], "fail")?;
    wait_until_logged(&edge, "endpoint answering errors").await?;
    let c_out = Instant::now();
    std::fs::write(&files[1], "fail")?;
    let b_sick = Instant::now();
    let _ = load.await??;

    // c's breaker is open for 5 s: from a second after it opened, c gets nothing.
    let c_hits = c.requests_since(c_out + Duration::from_secs(1));
    let during_open = c_hits
        .iter()
        .filter(|t| **t < c_out + Duration::from_millis(4500))
        .count();
    assert_eq!(
        during_open, 0,
        "c is out of rotation while its breaker is open"
    );
    // b answers errors too, but ejecting it would leave one of three (< 0.5).
    let b_hits = b.requests_since(b_sick + Duration::from_secs(2)).len();
    assert!(
        b_hits > 20,
        "b stays in rotation to keep the minimum share: {b_hits} requests"
    );
    let ejected = |o: &OriginProcess| {
        let line = format!("endpoint answering errors endpoint={}", o.url());
        edge.log().lines().any(|l| l.contains(&line))
    };
    assert!(ejected(c), "c was ejected:\n{}", edge.log());
    assert!(!ejected(b), "b was never ejected:\n{}", edge.log());
    Ok(())
}
