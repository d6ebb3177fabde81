//! Hedging against the real binary and real origin processes: of two origins,
//! one answers every request a second late; the pool hedges after 50 ms.
//!
//! - a GET whose first try went to the slow origin is answered by the fast one
//!   (each answer names the port that served it), and the origins see exactly
//!   one request per client request plus one per hedge counted;
//! - a POST (not idempotent) is never hedged: the slow origin answers it;
//! - with no retry budget, no hedge is sent: the slow origin answers.
//!
//! Requests are counted at the origins (`REQ` lines of `test-origin`).

use std::time::Duration;

use edge_tests::scripted::fetch;
use edge_tests::{eventually, Edge, EdgeConfig, OriginProcess};

const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
const DEADLINE: Duration = Duration::from_secs(20);
const SLOW_MS: u64 = 1000;

struct Setup {
    slow: OriginProcess,
    fast: OriginProcess,
    edge: Edge,
}

/// The slow and the fast origin behind one round-robin pool hedging after 50 ms,
/// with `settings` on top.
async fn setup(settings: &[(&str, &str)]) -> anyhow::Result<Setup> {
    let slow = OriginProcess::start(TEST_ORIGIN, "127.0.0.1:0", SLOW_MS).await?;
    let fast = OriginProcess::start(TEST_ORIGIN, "127.0.0.1:0", 0).await?;
    let mut config = EdgeConfig::new(slow.url())
        .pool_setting("balancer", "\"round_robin\"")
        .pool_setting("hedge", "{ after = \"50ms\", max = 1 }");
    config.pools[0].endpoints = vec![slow.url(), fast.url()];
    for (k, v) in settings {
        config = config.pool_setting(k, v);
    }
    let edge = Edge::start(&config).await?;
    Ok(Setup { slow, fast, edge })
}

/// Requests `test-origin` logged so far (`REQ METHOD ID` lines).
fn requests(o: &OriginProcess) -> usize {
    o.log()
        .lines()
        .iter()
        .filter(|l| l.starts_with("REQ "))
        .count()
}

async fn metric(edge: &Edge, series: &str) -> anyhow::Result<f64> {
    Ok(edge.metric(series).await?.0.unwrap_or(0.0))
}

const WON: &str = "proxy_hedges_total{backend=\"default\",outcome=\"won\"}";
const LOST: &str = "proxy_hedges_total{backend=\"default\",outcome=\"lost\"}";

/// `n` requests of `method`, four at a time; the port that answered each.
async fn send(edge: &Edge, method: &'static str, n: usize) -> anyhow::Result<Vec<u16>> {
    let addr = edge.http()?;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        tasks.spawn(async move {
            let mut ports = Vec::new();
            for _ in (w..n).step_by(4) {
                let got = fetch(addr, method, "localhost", "/", &[]).await?;
                anyhow::ensure!(got.status == 200, "{method}: {}", got.status);
                ports.push(got.text().parse::<u16>()?);
            }
            anyhow::Ok(ports)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// Waits until the origins have logged `expected` requests between them (their
/// logs are read from a pipe), and checks they have not logged more.
async fn origins_saw(s: &Setup, expected: usize) -> anyhow::Result<()> {
    let seen = || requests(&s.slow) + requests(&s.fast);
    eventually("the origins' request logs", DEADLINE, || async {
        Ok((seen() >= expected).then_some(()))
    })
    .await?;
    anyhow::ensure!(
        seen() == expected,
        "origins saw {} requests, expected {expected}",
        seen()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tries_are_hedged_to_the_fast_origin_and_posts_never_are() -> anyhow::Result<()> {
    // The budget lets every request hedge (round robin sends half to the slow one).
    let s = setup(&[("retry_budget", "1.0")]).await?;
    let n = 40;
    let ports = send(&s.edge, "GET", n).await?;
    let fast = s.fast.addr.port();
    assert!(
        ports.iter().all(|&p| p == fast),
        "answered by {ports:?}, not all by the fast origin {fast}"
    );
    let (won, lost) = (metric(&s.edge, WON).await?, metric(&s.edge, LOST).await?);
    eprintln!("{n} GETs: {won} hedges won, {lost} lost");
    // Round robin gave the slow origin its share of first tries; each was hedged.
    assert!(won >= 1.0, "no hedge won");
    let hedges = (won + lost) as usize;
    assert!(hedges <= n, "{hedges} hedges for {n} requests (max = 1)");
    // One request per client request, one more per hedge, no other retry.
    origins_saw(&s, n + hedges).await?;

    // POSTs: one of two goes to the slow origin first, and stays there.
    let before = requests(&s.slow) + requests(&s.fast);
    let posts = send(&s.edge, "POST", 4).await?;
    let slow = s.slow.addr.port();
    assert!(
        posts.contains(&slow),
        "no POST answered by the slow origin {slow}: {posts:?}"
    );
    assert_eq!(
        metric(&s.edge, WON).await? + metric(&s.edge, LOST).await?,
        won + lost,
        "a POST was hedged"
    );
    origins_saw(&s, before + 4).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retry_budget_no_hedge_is_sent() -> anyhow::Result<()> {
    let s = setup(&[("retry_budget", "0.0"), ("retry_min_per_sec", "0")]).await?;
    let n = 8;
    let ports = send(&s.edge, "GET", n).await?;
    let slow = s.slow.addr.port();
    assert!(
        ports.contains(&slow),
        "no GET answered by the slow origin {slow}: {ports:?}"
    );
    assert_eq!(
        metric(&s.edge, WON).await? + metric(&s.edge, LOST).await?,
        0.0
    );
    let exhausted = "proxy_retry_budget_exhausted_total{backend=\"default\"}";
    assert!(
        metric(&s.edge, exhausted).await? >= 1.0,
        "the refused hedges are not counted as budget exhausted"
    );
    origins_saw(&s, n).await?;
    Ok(())
}
