//! Gray release against the real binary and real origins: one route split
//! between pool `default` (tag `v1`, the baseline) and pool `v2` (tag `v2`).
//!
//! - weights, targeting rules and the version header: a cohort key keeps a user
//!   on one version, `x-canary: always` and a cookie send to v2 whatever the
//!   weights say, the origin sees the chosen tag, an untrusted client's tag is
//!   replaced and a trusted peer's is kept;
//! - 1,000 users keep their version across two edges (hash buckets, no shared state);
//! - a v2 answering every fifth request 503 is rolled back by the guard, after
//!   which no request reaches it — also across a SIGHUP with the same split —
//!   until a SIGHUP with a changed split resets the guard;
//! - a v2 300 ms slower is rolled back on its p99;
//! - a healthy v2 is never rolled back over several windows of load;
//! - the tag travels in W3C baggage too (`version_baggage`): honoured from a
//!   trusted peer, replaced from a client, the other members kept;
//! - progressive steps: a clean canary moves up 10 → 50 → 100% every 300 ms,
//!   as the admin API shows.
//!
//! Guards here use a 1–3 s window and 30–50 requests so each test stays short.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::edge::PoolConfig;
use edge_tests::origin_process::OriginProcess;
use edge_tests::scripted::{get, Got, Reply, Scripted};
use edge_tests::{eventually, Edge, EdgeConfig, Pki};

const ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
const DEADLINE: Duration = Duration::from_secs(30);

/// An origin answering `name` in its body and the version header it got in `x-seen-version`.
async fn version_origin(name: &'static str) -> anyhow::Result<Scripted> {
    Scripted::start(move |seen| {
        let tag = seen.header("x-edge-version").unwrap_or("-").to_owned();
        Reply::ok(&[("x-seen-version", tag.as_str())], name)
    })
    .await
}

/// The config: pools `default` (v1) and `v2` over h1 without retries, and one
/// catch-all route `api` with `split` (the rest of the route's keys as TOML lines).
fn config(v1: &str, v2: &str, split: &str, top: &[(&str, &str)]) -> (EdgeConfig, String) {
    let mut c = EdgeConfig::new(v1)
        .protocol("h1")
        .pool_setting("max_retries", "0");
    c.pools.push(PoolConfig {
        name: "v2".to_owned(),
        endpoints: vec![v2.to_owned()],
        settings: vec![
            ("protocol".to_owned(), "\"h1\"".to_owned()),
            ("max_retries".to_owned(), "0".to_owned()),
        ],
    });
    for (k, v) in top {
        c = c.top_setting(k, v);
    }
    (c, split.to_owned())
}

/// Renders `config` with its route turned into the split route `api`.
fn render(config: &(EdgeConfig, String), pki: &Pki) -> anyhow::Result<String> {
    let toml = config.0.to_toml(pki);
    let plain = "path_prefix = \"/\"\npool = \"default\"\n";
    anyhow::ensure!(toml.contains(plain), "no catch-all route in {toml}");
    let split = format!("path_prefix = \"/\"\nname = \"api\"\n{}\n", config.1);
    Ok(toml.replacen(plain, &split, 1))
}

async fn start(config: &(EdgeConfig, String)) -> anyhow::Result<Edge> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = render(config, &pki)?;
    Edge::start_with_toml(dir, pki, &toml).await
}

/// Writes a new split into the running edge's config and reloads it.
async fn reload(edge: &Edge, config: &(EdgeConfig, String), reloads: f64) -> anyhow::Result<()> {
    std::fs::write(&edge.config_path, render(config, &edge.pki)?)?;
    edge.signal("HUP").await?;
    let series = "proxy_config_reloads_total{result=\"ok\"}";
    eventually("the reload", DEADLINE, || async {
        Ok((edge.metric(series).await?.0 >= Some(reloads)).then_some(()))
    })
    .await
}

/// `n` requests, `concurrency` at a time, request `i` with `headers(i)`; the answers in order.
async fn burst<F>(edge: &Edge, n: usize, concurrency: usize, headers: F) -> anyhow::Result<Vec<Got>>
where
    F: Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
{
    let addr = edge
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("no http listener"))?;
    let headers = Arc::new(headers);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let headers = Arc::clone(&headers);
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(concurrency) {
                let h = headers(i);
                let h: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                out.push((i, get(addr, "/", &h).await?));
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, g)| g).collect())
}

fn none(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

fn user(i: usize) -> Vec<(String, String)> {
    vec![("x-user".to_owned(), format!("user-{i}"))]
}

async fn metric(edge: &Edge, series: &str) -> anyhow::Result<f64> {
    Ok(edge.metric(series).await?.0.unwrap_or(0.0))
}

#[tokio::test]
async fn weights_targets_and_the_version_header() -> anyhow::Result<()> {
    let (v1, v2) = (version_origin("v1").await?, version_origin("v2").await?);
    let split = r#"split = [{ pool = "default", weight = 80, tag = "v1" }, { pool = "v2", weight = 20 }]
split_key = "header:x-user"
targets = [
  { header = "x-canary", value = "always", pool = "v2" },
  { cookie = "beta", value = "yes", pool = "v2" },
]"#;
    let plain = config(&v1.url(), &v2.url(), split, &[]);
    let trusting = config(
        &v1.url(),
        &v2.url(),
        split,
        &[("trusted_proxies", "[\"127.0.0.1/32\"]")],
    );
    let (edge, peer) = (start(&plain).await?, start(&trusting).await?);

    let first = burst(&edge, 500, 8, user).await?;
    let again = burst(&edge, 500, 8, user).await?;
    let mut v1_users = Vec::new();
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        anyhow::ensure!(a.status == 200, "user {i}: {}", a.status);
        anyhow::ensure!(
            a.text() == b.text(),
            "user {i} moved from {} to {}",
            a.text(),
            b.text()
        );
        // The origin was told the version it is.
        anyhow::ensure!(a.header("x-seen-version") == Some(a.text().as_str()));
        if a.text() == "v1" {
            v1_users.push(i);
        }
    }
    let canary = 500 - v1_users.len();
    eprintln!("v2 got {canary} of 500 users at weight 20");
    anyhow::ensure!((50..=150).contains(&canary), "{canary} of 500 users on v2");

    let u = format!("user-{}", v1_users[0]);
    let got = |headers: Vec<(&'static str, String)>| {
        let mut h = vec![("x-user", u.clone())];
        h.extend(headers);
        h
    };
    let ask = |edge: &Edge, h: Vec<(&'static str, String)>| {
        let addr = edge.http_addr;
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(addr.ok_or_else(|| anyhow::anyhow!("no http"))?, "/", &h).await
        }
    };
    let canary_header = ask(&edge, got(vec![("x-canary", "always".into())])).await?;
    assert_eq!(
        canary_header.text(),
        "v2",
        "x-canary: always wins over the weights"
    );
    let cookie = ask(&edge, got(vec![("cookie", "a=b; beta=yes".into())])).await?;
    assert_eq!(cookie.text(), "v2", "the beta cookie wins over the weights");
    let other = ask(&edge, got(vec![("x-canary", "sometimes".into())])).await?;
    assert_eq!(other.text(), "v1", "another value is no match");
    // A client naming a version itself: not trusted, placed by its cohort, and
    // the origin sees edge's tag, not the client's.
    let forged = ask(&edge, got(vec![("x-edge-version", "v2".into())])).await?;
    assert_eq!(
        (forged.text().as_str(), forged.header("x-seen-version")),
        ("v1", Some("v1"))
    );
    // The same from a trusted peer (the edge before this one): kept.
    let hop = ask(&peer, got(vec![("x-edge-version", "v2".into())])).await?;
    assert_eq!(
        (hop.text().as_str(), hop.header("x-seen-version")),
        ("v2", Some("v2"))
    );

    let series =
        |v: &str| format!("proxy_route_version_requests_total{{route=\"api\",version=\"{v}\"}}");
    let (m1, m2) = (
        metric(&edge, &series("v1")).await?,
        metric(&edge, &series("v2")).await?,
    );
    // 1,000 users and four single requests (the trusted hop went to the other edge).
    assert_eq!(m1 + m2, 1004.0, "every request counted by version");
    assert_eq!(m2, (2 * canary + 2) as f64);
    Ok(())
}

#[tokio::test]
async fn a_thousand_users_keep_their_version_across_two_edges() -> anyhow::Result<()> {
    let (v1, v2) = (version_origin("v1").await?, version_origin("v2").await?);
    let split = r#"split = [{ pool = "default", weight = 50, tag = "v1" }, { pool = "v2", weight = 50 }]
split_key = "header:x-user""#;
    let c = config(&v1.url(), &v2.url(), split, &[]);
    let (a, b) = (start(&c).await?, start(&c).await?);
    let (on_a, on_b) = (
        burst(&a, 1000, 16, user).await?,
        burst(&b, 1000, 16, user).await?,
    );
    let mut canary = 0;
    for (i, (x, y)) in on_a.iter().zip(&on_b).enumerate() {
        anyhow::ensure!(
            x.status == 200 && y.status == 200,
            "user {i}: {} {}",
            x.status,
            y.status
        );
        anyhow::ensure!(
            x.text() == y.text(),
            "user {i}: {} on one edge, {} on the other",
            x.text(),
            y.text()
        );
        canary += usize::from(x.text() == "v2");
    }
    eprintln!("{canary} of 1000 users on v2 at weight 50, the same on both edges");
    anyhow::ensure!((400..=600).contains(&canary), "{canary} of 1000 on v2");
    Ok(())
}

const GUARD_SPLIT: &str =
    r#"split = [{ pool = "default", weight = 50, tag = "v1" }, { pool = "v2", weight = 50 }]"#;

fn guarded(window: &str, min: u32) -> String {
    format!("{GUARD_SPLIT}\nguard = {{ window = \"{window}\", min_requests = {min}, latency_floor = \"100ms\" }}")
}

const STATE: &str = "proxy_canary_state{route=\"api\"}";
const ROLLBACKS: &str = "proxy_canary_rollbacks_total{route=\"api\"}";

/// Sends bursts until the guard has rolled the canary back; the answers sent.
async fn until_rolled_back(edge: &Edge, concurrency: usize) -> anyhow::Result<Vec<Got>> {
    let start = tokio::time::Instant::now();
    let mut sent = Vec::new();
    while metric(edge, STATE).await? != 1.0 {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "no rollback after {} requests",
            sent.len()
        );
        sent.extend(burst(edge, 4 * concurrency, concurrency, none).await?);
    }
    eprintln!(
        "rolled back after {} requests in {:?}",
        sent.len(),
        start.elapsed()
    );
    Ok(sent)
}

#[tokio::test]
async fn a_canary_failing_a_fifth_of_its_requests_is_rolled_back_until_the_split_changes(
) -> anyhow::Result<()> {
    let v1 = version_origin("v1").await?;
    let n = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&n);
    let v2 = Scripted::start(move |_| match count.fetch_add(1, Ordering::SeqCst) % 5 {
        0 => Reply::new(503, &[], "sick"),
        _ => Reply::ok(&[], "v2"),
    })
    .await?;
    let mut c = config(&v1.url(), &v2.url(), &guarded("2s", 50), &[]);
    let edge = start(&c).await?;
    let before = until_rolled_back(&edge, 8).await?;
    let failed = before.iter().filter(|g| g.status != 200).count();
    eprintln!(
        "{failed} of {} client answers failed before the rollback",
        before.len()
    );
    // Only v2's fifth fails, and v2 had about half the requests.
    anyhow::ensure!(
        failed * 5 < before.len(),
        "{failed} of {} failed",
        before.len()
    );
    assert_eq!(metric(&edge, ROLLBACKS).await?, 1.0);
    assert!(
        edge.log().contains("canary rolled back: error rate"),
        "{}",
        edge.log()
    );

    let reached = v2.seen().len();
    let after = burst(&edge, 200, 8, none).await?;
    assert!(after.iter().all(|g| g.status == 200 && g.text() == "v1"));
    assert_eq!(
        v2.seen().len(),
        reached,
        "a request reached v2 after the rollback"
    );

    // The same split again: still rolled back.
    reload(&edge, &c, 1.0).await?;
    let after = burst(&edge, 100, 8, none).await?;
    assert!(after.iter().all(|g| g.text() == "v1"));
    assert_eq!(
        v2.seen().len(),
        reached,
        "a reload of the same split reset the guard"
    );
    assert_eq!(metric(&edge, STATE).await?, 1.0);

    // A changed split (v2 fixed, weights moved): the guard starts afresh.
    v2.set(|_| Reply::ok(&[], "v2"));
    c.1 = c.1.replace("weight = 50, tag", "weight = 60, tag");
    reload(&edge, &c, 2.0).await?;
    let after = burst(&edge, 100, 8, none).await?;
    let on_v2 = after.iter().filter(|g| g.text() == "v2").count();
    anyhow::ensure!(on_v2 > 0, "v2 got nothing after the reset");
    assert_eq!(metric(&edge, STATE).await?, 0.0);
    assert_eq!(metric(&edge, ROLLBACKS).await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn a_canary_300ms_slower_is_rolled_back_on_latency() -> anyhow::Result<()> {
    let v1 = version_origin("v1").await?;
    let v2 = OriginProcess::start(ORIGIN, "127.0.0.1:0", 300).await?;
    let c = config(&v1.url(), &v2.url(), &guarded("3s", 30), &[]);
    let edge = start(&c).await?;
    let before = until_rolled_back(&edge, 16).await?;
    assert!(
        before.iter().all(|g| g.status == 200),
        "a slow canary is no error"
    );
    assert_eq!(metric(&edge, ROLLBACKS).await?, 1.0);
    assert!(
        edge.log().contains("canary rolled back: p99"),
        "{}",
        edge.log()
    );
    let from = tokio::time::Instant::now();
    let after = burst(&edge, 100, 8, none).await?;
    assert!(after.iter().all(|g| g.status == 200 && g.text() == "v1"));
    assert!(
        v2.requests_since(from).is_empty(),
        "a request reached v2 after the rollback"
    );
    Ok(())
}

#[tokio::test]
async fn a_healthy_canary_is_never_rolled_back() -> anyhow::Result<()> {
    let (v1, v2) = (version_origin("v1").await?, version_origin("v2").await?);
    let c = config(&v1.url(), &v2.url(), &guarded("1s", 50), &[]);
    let edge = start(&c).await?;
    let start = tokio::time::Instant::now();
    let mut canary = 0;
    let mut sent = 0;
    // At least three whole windows of load, judged once a millisecond.
    while start.elapsed() < Duration::from_secs(3) || sent < 1200 {
        let got = burst(&edge, 100, 8, none).await?;
        assert!(got.iter().all(|g| g.status == 200));
        canary += got.iter().filter(|g| g.text() == "v2").count();
        sent += got.len();
        assert_eq!(metric(&edge, STATE).await?, 0.0, "rolled back after {sent}");
    }
    eprintln!(
        "{sent} requests in {:?}, {canary} on v2, no rollback",
        start.elapsed()
    );
    assert_eq!(metric(&edge, ROLLBACKS).await?, 0.0);
    anyhow::ensure!(canary * 3 > sent, "v2 had {canary} of {sent}");
    Ok(())
}

const TOKEN: &str = "gray-release-admin-token-0123456789";

/// `METHOD /routes/NAME/split` on the admin listener with `body` (JSON), as curl sends it.
async fn admin_split(
    edge: &Edge,
    method: &str,
    name: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let url = format!("http://{}/routes/{name}/split", edge.admin()?);
    let mut args = vec!["-s".to_owned(), "-X".to_owned(), method.to_owned(), url];
    if let Some(t) = token {
        args.extend(["-H".to_owned(), format!("authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        args.extend(["--data".to_owned(), b.to_owned()]);
    }
    let got = edge_tests::curl(&args).await?;
    let json = serde_json::from_slice(&got.body).unwrap_or(serde_json::Value::Null);
    Ok((got.status, json))
}

#[tokio::test]
async fn the_admin_api_shows_why_a_canary_was_rolled_back_and_sets_weights_live(
) -> anyhow::Result<()> {
    let v1 = version_origin("v1").await?;
    let v2 = Scripted::start(|_| Reply::new(503, &[], "down")).await?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let token_path = edge_tests::toml_path(&token);
    let c = config(
        &v1.url(),
        &v2.url(),
        &guarded("2s", 50),
        &[("admin_token_file", &token_path)],
    );
    let pki = Pki::generate(dir.path())?;
    let toml = render(&c, &pki)?;
    let edge = Edge::start_with_toml(dir, pki, &toml).await?;

    let (code, view) = admin_split(&edge, "GET", "api", Some(TOKEN), None).await?;
    assert_eq!(
        (code, view["state"].as_str()),
        (200, Some("serving")),
        "{view}"
    );
    assert_eq!(view["versions"][1]["weight"], 50);
    until_rolled_back(&edge, 8).await?;
    let (_, view) = admin_split(&edge, "GET", "api", Some(TOKEN), None).await?;
    assert_eq!(view["state"], "rolled_back", "{view}");
    let why = view["why"].as_str().unwrap_or_default();
    assert!(why.starts_with("v2: error rate 100.0%"), "{view}");

    // The token guards it; unknown routes and tags are refused with the reason.
    let weights = r#"{"v1": 0, "v2": 100}"#;
    assert_eq!(
        admin_split(&edge, "PUT", "api", None, Some(weights))
            .await?
            .0,
        401
    );
    assert_eq!(
        admin_split(&edge, "PUT", "web", Some(TOKEN), Some(weights))
            .await?
            .0,
        404
    );
    let (code, e) = admin_split(&edge, "PUT", "api", Some(TOKEN), Some(r#"{"v9": 1}"#)).await?;
    assert_eq!(code, 422, "{e}");
    let (code, e) = admin_split(
        &edge,
        "PUT",
        "api",
        Some(TOKEN),
        Some(r#"{"v1": 0, "v2": 0}"#),
    )
    .await?;
    assert_eq!(code, 422, "{e}");
    let (code, e) = admin_split(&edge, "PUT", "api", Some(TOKEN), Some("[1]")).await?;
    assert_eq!(code, 400, "{e}");

    // v2 fixed; all traffic to it, live: the guard is reset with the weights.
    v2.set(|_| Reply::ok(&[], "v2"));
    let (code, view) = admin_split(&edge, "PUT", "api", Some(TOKEN), Some(weights)).await?;
    assert_eq!(
        (code, view["state"].as_str()),
        (200, Some("serving")),
        "{view}"
    );
    assert_eq!(view["versions"][0]["weight"], 0);
    let after = burst(&edge, 50, 8, none).await?;
    assert!(after.iter().all(|g| g.status == 200 && g.text() == "v2"));
    assert_eq!(metric(&edge, STATE).await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn the_version_travels_in_baggage_beside_the_other_members() -> anyhow::Result<()> {
    let echo = |name: &'static str| {
        Scripted::start(move |seen| {
            let bag = seen.header("baggage").unwrap_or("-").to_owned();
            Reply::ok(&[("x-seen-baggage", bag.as_str())], name)
        })
    };
    let (v1, v2) = (echo("v1").await?, echo("v2").await?);
    // All weight on v1: only a carried tag reaches v2.
    let split = r#"split = [{ pool = "default", weight = 100, tag = "v1" }, { pool = "v2", weight = 0 }]
version_baggage = "edge-version""#;
    let plain = config(&v1.url(), &v2.url(), split, &[]);
    let trusting = config(
        &v1.url(),
        &v2.url(),
        split,
        &[("trusted_proxies", "[\"127.0.0.1/32\"]")],
    );
    let (edge, peer) = (start(&plain).await?, start(&trusting).await?);
    let ask = |edge: &Edge, baggage: &'static str| {
        let addr = edge.http_addr;
        async move {
            let addr = addr.ok_or_else(|| anyhow::anyhow!("no http"))?;
            get(addr, "/", &[("baggage", baggage)]).await
        }
    };
    let bag = "userId=alice;p=1, edge-version=v2, span=x";

    // From a trusted peer, the baggage member alone picks the version, and the
    // other members reach the origin as they came.
    let hop = ask(&peer, bag).await?;
    assert_eq!(
        (hop.text().as_str(), hop.header("x-seen-baggage")),
        ("v2", Some("userId=alice;p=1,span=x,edge-version=v2"))
    );
    // From a client: not trusted; placed by the weights, and the origin sees
    // edge's tag in the baggage, the client's other members kept.
    let forged = ask(&edge, bag).await?;
    assert_eq!(
        (forged.text().as_str(), forged.header("x-seen-baggage")),
        ("v1", Some("userId=alice;p=1,span=x,edge-version=v1"))
    );
    // No baggage at all: edge starts one.
    let addr = edge.http_addr.ok_or_else(|| anyhow::anyhow!("no http"))?;
    let fresh = get(addr, "/", &[]).await?;
    assert_eq!(fresh.header("x-seen-baggage"), Some("edge-version=v1"));
    Ok(())
}

#[tokio::test]
async fn a_clean_canary_moves_up_its_steps() -> anyhow::Result<()> {
    let (v1, v2) = (version_origin("v1").await?, version_origin("v2").await?);
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let token_path = edge_tests::toml_path(&token);
    let split = format!(
        "{}\nsteps = [10, 50, 100]\nstep_after = \"300ms\"",
        guarded("2s", 20)
    );
    let c = config(
        &v1.url(),
        &v2.url(),
        &split,
        &[("admin_token_file", &token_path)],
    );
    let pki = Pki::generate(dir.path())?;
    let toml = render(&c, &pki)?;
    let edge = Edge::start_with_toml(dir, pki, &toml).await?;

    let (_, view) = admin_split(&edge, "GET", "api", Some(TOKEN), None).await?;
    assert_eq!(
        view["step"],
        serde_json::json!({ "at": 1, "of": 3 }),
        "{view}"
    );
    assert_eq!(view["versions"][1]["weight"], 10, "{view}");
    // Traffic keeps the guard judging; each clean step_after moves the canary up.
    for (at, weight) in [(2, 50), (3, 100)] {
        let view = eventually("the next step", DEADLINE, || async {
            burst(&edge, 40, 8, none).await?;
            let (_, view) = admin_split(&edge, "GET", "api", Some(TOKEN), None).await?;
            Ok((view["step"]["at"] == at).then_some(view))
        })
        .await?;
        assert_eq!(view["versions"][1]["weight"], weight, "{view}");
        assert_eq!(view["versions"][0]["weight"], 100 - weight, "{view}");
        assert_eq!(view["state"], "serving", "{view}");
    }
    assert_eq!(
        metric(&edge, "proxy_canary_weight{route=\"api\"}").await?,
        100.0
    );
    let after = burst(&edge, 40, 8, none).await?;
    assert!(
        after.iter().all(|g| g.text() == "v2"),
        "the last step sends everything to the canary"
    );
    Ok(())
}
