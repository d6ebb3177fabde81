//! Sticky sessions against the real binary and real origins (`test-origin`
//! processes, which name themselves in `x-origin`, so a test sees which endpoint
//! answered; killed by PID to take an endpoint away):
//!
//! - cookie pools pin 100 users to the endpoint their first answer came from and
//!   ignore (re-place, never refuse) a cookie edge did not sign;
//! - killing the endpoint half the users are pinned to re-pins them with no error,
//!   with the default retry budget;
//! - two edges sharing one real redis-server keep each of 1,000 header-keyed users
//!   on one endpoint, re-pin with no error when it dies, and keep the new pin when
//!   it comes back (the hash alone would move them back: Redis holds the pin);
//! - with Redis killed, users still get 200 and stay on one endpoint each (hash).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::origin_process::OriginProcess;
use edge_tests::redis::Redis;
use edge_tests::scripted::{get, Got};
use edge_tests::{eventually, Edge, EdgeConfig};

const ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
const DEADLINE: Duration = Duration::from_secs(20);

async fn origins(n: usize) -> anyhow::Result<Vec<OriginProcess>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(OriginProcess::start(ORIGIN, "127.0.0.1:0", 0).await?);
    }
    Ok(out)
}

/// One `default` pool over `origins`, balanced round robin (so without
/// stickiness a user's requests would visit every endpoint), with `sticky`.
fn config(origins: &[OriginProcess], sticky: &str, sections: &str) -> EdgeConfig {
    let mut c = EdgeConfig::new(origins[0].url())
        .protocol("h1")
        .pool_setting("balancer", "\"round_robin\"")
        .pool_setting("sticky", sticky)
        .section(sections);
    c.pools[0].endpoints = origins.iter().map(OriginProcess::url).collect();
    c
}

/// Which origin answered (`IP:PORT`).
fn served_by(got: &Got) -> anyhow::Result<String> {
    anyhow::ensure!(got.status == 200, "status {}", got.status);
    got.header("x-origin")
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no x-origin header: {:?}", got.headers))
}

/// The `edge_s` cookie a response set, as `name=value` for the next request.
fn set_cookie(got: &Got) -> Option<String> {
    got.headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("edge_s="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// One user's request, with its cookie (if any) and header (if any).
async fn visit(addr: SocketAddr, cookie: Option<&str>, user: Option<&str>) -> anyhow::Result<Got> {
    let mut headers = Vec::new();
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    if let Some(u) = user {
        headers.push(("x-user", u));
    }
    get(addr, "/", &headers).await
}

/// Every user's request at once (`who(i)` gives user i's edge, cookie and id);
/// the answers in user order.
async fn round<F>(users: usize, who: F) -> anyhow::Result<Vec<Got>>
where
    F: Fn(usize) -> (SocketAddr, Option<String>, Option<String>),
{
    // 100 users at a time, each on a new connection.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..users {
        let (addr, cookie, user) = who(i);
        let permit = gate.clone().acquire_owned().await?;
        set.spawn(async move {
            let got = visit(addr, cookie.as_deref(), user.as_deref()).await;
            drop(permit);
            (i, got)
        });
    }
    let mut out: Vec<Option<Got>> = (0..users).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, got) = joined?;
        out[i] = Some(got.map_err(|e| anyhow::anyhow!("user {i}: {e:#}"))?);
    }
    Ok(out.into_iter().flatten().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_keeps_each_user_on_one_endpoint_and_a_forged_one_is_ignored() -> anyhow::Result<()>
{
    let origins = origins(3).await?;
    let edge = Edge::start(&config(&origins, "{ ttl = \"30m\" }", "")).await?;
    let addr = edge.http()?;
    const USERS: usize = 100;

    let first = round(USERS, |_| (addr, None, None)).await?;
    let mut pins = Vec::new();
    for (i, got) in first.iter().enumerate() {
        let raw = got
            .headers
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let cookie = set_cookie(got).ok_or_else(|| anyhow::anyhow!("user {i}: no cookie"))?;
        let value = &cookie["edge_s=".len()..];
        assert!(
            value.len() == 48 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "an opaque value: {cookie}"
        );
        for attr in ["Path=/", "Max-Age=1800", "HttpOnly", "SameSite=Lax"] {
            assert!(raw.contains(attr), "{attr} in {raw}");
        }
        assert!(
            !raw.contains("Secure"),
            "plain HTTP gets no Secure cookie: {raw}"
        );
        pins.push((cookie, served_by(got)?));
    }
    let spread: HashSet<&String> = pins.iter().map(|(_, o)| o).collect();
    assert_eq!(spread.len(), 3, "first answers are balanced over all three");

    // Five more rounds: round robin would rotate them; the cookie keeps them.
    for r in 0..5 {
        let got = round(USERS, |i| (addr, Some(pins[i].0.clone()), None)).await?;
        for (i, g) in got.iter().enumerate() {
            assert_eq!(served_by(g)?, pins[i].1, "round {r}, user {i}");
            assert_eq!(set_cookie(g), None, "a kept pin is not set again");
        }
    }

    // A forged cookie (one MAC digit changed, or another edge's cookie of the
    // same shape) is no error: the user is placed anew and gets a real cookie.
    let mut forged = pins[0].0.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged)?;
    for cookie in [
        forged.as_str(),
        "edge_s=00000000000000000000000000000000deadbeefdeadbeef",
    ] {
        let got = visit(addr, Some(cookie), None).await?;
        served_by(&got)?;
        let fresh =
            set_cookie(&got).ok_or_else(|| anyhow::anyhow!("no new cookie for {cookie}"))?;
        assert_ne!(fresh, cookie);
    }
    let (forged, page) = edge
        .metric("proxy_sticky_total{outcome=\"forged\",pool=\"default\"}")
        .await?;
    assert_eq!(forged, Some(2.0), "{page}");
    let (kept, _) = edge
        .metric("proxy_sticky_total{outcome=\"kept\",pool=\"default\"}")
        .await?;
    assert_eq!(kept, Some((5 * USERS) as f64));

    // Over TLS the cookie is Secure.
    let tls = edge_tests::clients::curl(&{
        let mut args = edge_tests::clients::tls_args(&edge);
        args.extend(["--http2".to_owned(), edge.https_origin() + "/"]);
        args
    })
    .await?;
    assert_eq!(tls.status, 200);
    let cookie = tls
        .header("set-cookie")
        .ok_or_else(|| anyhow::anyhow!("no cookie over TLS: {:?}", tls.headers))?;
    assert!(cookie.contains("; Secure"), "{cookie}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pinned_endpoint_re_pins_its_users_without_an_error() -> anyhow::Result<()> {
    let mut origins = origins(3).await?;
    // No retry budget at all: moving a user off a dead pin must not depend on
    // it (a burst of pinned users would drain any budget before the breaker
    // opens); the try after a pinned endpoint's failed connect is free.
    let edge = Edge::start(
        &config(&origins, "{}", "")
            .pool_setting("retry_budget", "0.0")
            .pool_setting("retry_min_per_sec", "0"),
    )
    .await?;
    let addr = edge.http()?;
    const USERS: usize = 150;
    let first = round(USERS, |_| (addr, None, None)).await?;
    let mut pins: Vec<(String, String)> = first
        .iter()
        .map(|g| Ok((set_cookie(g).unwrap_or_default(), served_by(g)?)))
        .collect::<anyhow::Result<_>>()?;

    // Kill the endpoint of user 0 (a third of the users are on it).
    let victim = pins[0].1.clone();
    let at = origins
        .iter()
        .position(|o| o.addr.to_string() == victim)
        .ok_or_else(|| anyhow::anyhow!("{victim} is not an origin"))?;
    origins.remove(at).kill().await?;
    let orphans: Vec<usize> = (0..USERS).filter(|&i| pins[i].1 == victim).collect();
    assert!(
        orphans.len() >= USERS / 5,
        "{} users on {victim}",
        orphans.len()
    );

    // All at once: every request 200, orphans get a cookie naming a live endpoint.
    let got = round(USERS, |i| (addr, Some(pins[i].0.clone()), None)).await?;
    for (i, g) in got.iter().enumerate() {
        let now = served_by(g).map_err(|e| anyhow::anyhow!("user {i}: {e}"))?;
        assert_ne!(now, victim);
        if orphans.contains(&i) {
            let cookie =
                set_cookie(g).ok_or_else(|| anyhow::anyhow!("orphan {i}: no new cookie"))?;
            pins[i] = (cookie, now);
        } else {
            assert_eq!(now, pins[i].1, "user {i} was not on the dead endpoint");
        }
    }
    // And the new pins hold.
    for r in 0..3 {
        let got = round(USERS, |i| (addr, Some(pins[i].0.clone()), None)).await?;
        for (i, g) in got.iter().enumerate() {
            assert_eq!(served_by(g)?, pins[i].1, "round {r}, user {i}");
        }
    }
    let (moved, page) = edge
        .metric("proxy_sticky_total{outcome=\"moved\",pool=\"default\"}")
        .await?;
    assert_eq!(moved, Some(orphans.len() as f64), "{page}");
    Ok(())
}

/// An edge whose `default` pool keys users by `x-user`, assignments in `redis`.
async fn shared_edge(origins: &[OriginProcess], redis: &Redis) -> anyhow::Result<Edge> {
    let e = Edge::start(&config(
        origins,
        "{ key = \"header:x-user\", shared = true, ttl = \"10m\" }",
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"500ms\"\n",
            redis.url()
        ),
    ))
    .await?;
    e.redis_connected(DEADLINE).await?;
    Ok(e)
}

/// Every user once, user i on edge `(i + shift) % 2`; who served each.
async fn shared_round(
    edges: [SocketAddr; 2],
    users: usize,
    shift: usize,
) -> anyhow::Result<Vec<String>> {
    let got = round(users, |i| {
        (edges[(i + shift) % 2], None, Some(format!("user-{i}")))
    })
    .await?;
    got.iter()
        .enumerate()
        .map(|(i, g)| served_by(g).map_err(|e| anyhow::anyhow!("user {i}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_sharing_redis_keep_every_user_on_one_endpoint_across_failures(
) -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let mut origins = origins(3).await?;
    let a = shared_edge(&origins, &redis).await?;
    let b = shared_edge(&origins, &redis).await?;
    let edges = [a.http()?, b.http()?];
    const USERS: usize = 1000;

    let pinned = shared_round(edges, USERS, 0).await?;
    let per_endpoint = pinned.iter().fold(HashMap::new(), |mut m, o| {
        *m.entry(o.clone()).or_insert(0) += 1;
        m
    });
    assert_eq!(per_endpoint.len(), 3, "users spread: {per_endpoint:?}");
    eventually("every assignment in redis", DEADLINE, || async {
        let keys = redis.keys().await?;
        let n = keys
            .iter()
            .filter(|k| k.starts_with("edge:sticky:default:"))
            .count();
        Ok((n == USERS).then_some(()))
    })
    .await?;
    // Users alternate edges: each stays where it was, on both.
    for shift in 1..4 {
        let now = shared_round(edges, USERS, shift).await?;
        let moved = (0..USERS).filter(|&i| now[i] != pinned[i]).count();
        assert_eq!(moved, 0, "round {shift}: {moved} of {USERS} users moved");
    }

    // Kill the endpoint of user 0: its users move, with no error, and the
    // others stay.
    let victim = pinned[0].clone();
    let at = origins
        .iter()
        .position(|o| o.addr.to_string() == victim)
        .ok_or_else(|| anyhow::anyhow!("{victim} is not an origin"))?;
    origins.remove(at).kill().await?;
    let after = shared_round(edges, USERS, 0).await?;
    for i in 0..USERS {
        assert_ne!(after[i], victim, "user {i}");
        if pinned[i] != victim {
            assert_eq!(after[i], pinned[i], "user {i} was not on the dead endpoint");
        }
    }
    let again = shared_round(edges, USERS, 1).await?;
    assert_eq!(again, after, "re-pinned users stay put on the other edge");

    // The endpoint comes back on its address. New users reach it again (the
    // hash places some there), but the re-pinned keep their new endpoint:
    // that is the Redis assignment at work, not the hash.
    let back = OriginProcess::start(ORIGIN, &victim, 0).await?;
    let mut fresh = 0usize;
    eventually(
        "a new user lands on the endpoint that came back",
        DEADLINE,
        || {
            fresh += 1;
            let user = format!("new-user-{fresh}");
            let victim = victim.clone();
            async move {
                let got = visit(edges[0], None, Some(&user)).await?;
                Ok((served_by(&got)? == victim).then_some(()))
            }
        },
    )
    .await?;
    let later = shared_round(edges, USERS, 0).await?;
    let moved_back = (0..USERS).filter(|&i| later[i] != after[i]).count();
    assert_eq!(moved_back, 0, "{moved_back} re-pinned users went back");
    drop(back);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_users_still_get_answers_and_stay_on_their_hashed_endpoint(
) -> anyhow::Result<()> {
    let mut redis = Redis::start().await?;
    let origins = origins(3).await?;
    let a = shared_edge(&origins, &redis).await?;
    let b = shared_edge(&origins, &redis).await?;
    let edges = [a.http()?, b.http()?];
    const USERS: usize = 300;
    let before = shared_round(edges, USERS, 0).await?;
    redis.kill();
    // Every request still answered, each user on one endpoint on both edges;
    // on first placement the hash chose, so nobody moves.
    for shift in 0..4 {
        let now = shared_round(edges, USERS, shift).await?;
        assert_eq!(now, before, "round {shift}");
    }
    for e in [&a, &b] {
        let (fallback, page) = e
            .metric("proxy_sticky_total{outcome=\"fallback\",pool=\"default\"}")
            .await?;
        assert!(fallback.is_some_and(|n| n > 0.0), "{page}");
    }
    Ok(())
}
