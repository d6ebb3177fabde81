//! The admin API with the real binary: `GET /status` describes the running
//! edge, `POST /reload` reloads like SIGHUP (and says why when it refuses),
//! a configured token guards the privileged paths, and the status page renders
//! in headless Chromium, lists the pools and follows their health.

use std::time::Duration;

use edge_tests::origin_process::OriginProcess;
use edge_tests::process::run;
use edge_tests::scripted::get;
use edge_tests::{eventually, Edge, EdgeConfig};

const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");
const TOKEN: &str = "s3cret-token-0123456789";

async fn status(edge: &Edge, auth: &[(&str, &str)]) -> anyhow::Result<(u16, serde_json::Value)> {
    let got = get(edge.admin()?, "/status", auth).await?;
    let json = serde_json::from_slice(&got.body).unwrap_or(serde_json::Value::Null);
    Ok((got.status, json))
}

async fn post(edge: &Edge, path: &str, auth: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let got = edge_tests::scripted::fetch(
        edge.admin()?,
        "POST",
        "localhost",
        path,
        &[("authorization", auth)],
    )
    .await?;
    let json = serde_json::from_slice(&got.body).unwrap_or(serde_json::Value::Null);
    Ok((got.status, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_edge_and_reload_reports_its_outcome() -> anyhow::Result<()> {
    let origin = OriginProcess::start(TEST_ORIGIN, "127.0.0.1:0", 0).await?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .top_setting("admin_token_file", &edge_tests::toml_path(&token));
    let edge = Edge::start(&config).await?;
    let bearer = format!("Bearer {TOKEN}");

    // The token guards /status, /reload and the page; /healthz and /metrics stay open.
    assert_eq!(status(&edge, &[]).await?.0, 401);
    assert_eq!(
        status(&edge, &[("authorization", "Bearer wrong-token-000000")])
            .await?
            .0,
        401
    );
    assert_eq!(get(edge.admin()?, "/", &[]).await?.status, 401);
    assert_eq!(get(edge.admin()?, "/healthz", &[]).await?.status, 200);
    assert_eq!(get(edge.admin()?, "/metrics", &[]).await?.status, 200);

    let (code, s) = status(&edge, &[("authorization", &bearer)]).await?;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["state"], "serving");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let kinds: Vec<&str> = s["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["https", "h3", "http", "admin"], "{s}");
    assert_eq!(s["listeners"][2]["addr"], edge.http()?.to_string());
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "default");
    assert_eq!(pool["endpoints"][0]["endpoint"], origin.url());
    assert_eq!(pool["endpoints"][0]["healthy"], true);
    assert_eq!(pool["endpoints"][0]["breaker"], "closed");

    // A reload that takes: a second pool appears in /status.
    let path = &edge.config_path;
    let text = std::fs::read_to_string(path)?;
    std::fs::write(
        path,
        format!(
            "{text}\n[pools.extra]\nendpoints = [\"{}\"]\n",
            origin.url()
        ),
    )?;
    let (code, r) = post(&edge, "/reload", &bearer).await?;
    assert_eq!(
        (code, &r["reloaded"]),
        (200, &serde_json::json!(true)),
        "{r}"
    );
    let (_, s) = status(&edge, &[("authorization", &bearer)]).await?;
    let names: Vec<&str> = s["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"extra"), "{s}");

    // A reload that is refused says why; the running config keeps serving.
    std::fs::write(path, format!("{text}\ncolour = \"blue\"\n"))?;
    let (code, r) = post(&edge, "/reload", &bearer).await?;
    assert_eq!(code, 409, "{r}");
    assert!(
        r["error"].as_str().unwrap_or_default().contains("colour"),
        "{r}"
    );
    assert_eq!(get(edge.http()?, "/", &[]).await?.status, 200);
    // Without the token, no reload.
    assert_eq!(
        post(&edge, "/reload", "Bearer nope-nope-nope-nope")
            .await?
            .0,
        401
    );
    Ok(())
}

/// The page as Chromium renders it after its script ran for `ms` of virtual time.
async fn render(url: &str, ms: u32) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = run(
        "chromium",
        [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={ms}"),
            "--dump-dom",
            url,
        ],
        Duration::from_secs(60),
    )
    .await?;
    out.ensure_success("chromium --dump-dom")?;
    Ok(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_chromium_lists_pools_and_follows_health() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let health = dir.path().join("health");
    std::fs::write(&health, "ok")?;
    let origin =
        OriginProcess::start_with_health(TEST_ORIGIN, "127.0.0.1:0", 0, Some(&health)).await?;
    let check = "{ path = \"/healthz\", interval = \"100ms\", timeout = \"2s\", healthy = 1, unhealthy = 1 }";
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .pool_setting("health_check", check);
    let edge = Edge::start(&config).await?;
    let url = format!("http://{}/?refresh=300", edge.admin()?);

    let page = render(&url, 2000).await?;
    assert!(page.contains("<h1>edge <span id=\"version\">"), "{page}");
    assert!(
        page.contains(&format!("<td>{}</td>", origin.url())),
        "endpoint listed: {page}"
    );
    assert!(page.contains("<td class=\"ok\">healthy</td>"), "{page}");
    assert!(
        page.contains("id=\"state\" class=\"ok\">serving<"),
        "{page}"
    );
    // It polled more than once in its 2 s (every 300 ms).
    let updates: u32 = page
        .split("id=\"updates\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(updates >= 2, "updates {updates}: {page}");

    // The endpoint fails its check: the page shows it.
    std::fs::write(&health, "down")?;
    eventually(
        "the endpoint marked unhealthy",
        Duration::from_secs(10),
        || async {
            let (_, s) = status(&edge, &[]).await?;
            Ok((s["pools"][0]["endpoints"][0]["healthy"] == false).then_some(()))
        },
    )
    .await?;
    let page = render(&url, 1000).await?;
    assert!(page.contains("<td class=\"bad\">unhealthy</td>"), "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_effective_settings_without_secrets_and_follows_a_reload(
) -> anyhow::Result<()> {
    const PASSWORD: &str = "redis-pa55word-never-shown";
    let origin = OriginProcess::start(TEST_ORIGIN, "127.0.0.1:0", 0).await?;
    let redis = edge_tests::redis::Redis::start().await?;
    let redis_url = redis.url();
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let with_password = redis_url.replacen("redis://", &format!("redis://edge:{PASSWORD}@"), 1);
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .pool_setting("max_retries", "1")
        .top_setting("admin_token_file", &edge_tests::toml_path(&token))
        .section(&format!("[redis]\nurl = \"{with_password}\""));
    let edge = Edge::start(&config).await?;
    let bearer = format!("Bearer {TOKEN}");
    let get_config = || async {
        let got = get(edge.admin()?, "/config", &[("authorization", &bearer)]).await?;
        let body = String::from_utf8_lossy(&got.body).into_owned();
        anyhow::Ok((got.status, body))
    };

    // The token is required (a token is configured: no loopback exception).
    assert_eq!(get(edge.admin()?, "/config", &[]).await?.status, 401);
    let wrong = [("authorization", "Bearer wrong-token-000000")];
    assert_eq!(get(edge.admin()?, "/config", &wrong).await?.status, 401);

    let (code, body) = get_config().await?;
    assert_eq!(code, 200, "{body}");
    // Neither the Redis password nor the admin token appears anywhere.
    assert!(!body.contains(PASSWORD), "{body}");
    assert!(!body.contains(TOKEN), "{body}");
    let c: serde_json::Value = serde_json::from_str(&body)?;
    let c = &c["config"];
    let host = redis_url.trim_start_matches("redis://");
    assert_eq!(
        c["redis"]["url"],
        format!("redis://<redacted>@{host}"),
        "{c}"
    );
    assert_eq!(c["admin_token"], "<redacted>", "{c}");
    // What the file says, and the defaults it leaves out.
    assert_eq!(c["pools"][0]["name"], "default", "{c}");
    assert_eq!(c["pools"][0]["endpoints"][0], origin.url(), "{c}");
    assert_eq!(c["pools"][0]["protocol"], "h1", "{c}");
    assert_eq!(c["pools"][0]["max_retries"], 1, "{c}");
    assert_eq!(c["routes"][0]["pool"], "default", "{c}");
    assert_eq!(c["routes"][0]["path_prefix"], "/", "{c}");
    assert_eq!(c["client"]["idle_timeout"], "1m", "{c}");

    // SIGHUP with a changed value: /config shows the new one.
    let path = &edge.config_path;
    let text = std::fs::read_to_string(path)?;
    assert!(text.contains("max_retries = 1"), "{text}");
    std::fs::write(path, text.replace("max_retries = 1", "max_retries = 4"))?;
    edge.signal("HUP").await?;
    eventually(
        "the reloaded max_retries in /config",
        Duration::from_secs(10),
        || async {
            let (_, body) = get_config().await?;
            let c: serde_json::Value = serde_json::from_str(&body)?;
            Ok((c["config"]["pools"][0]["max_retries"] == 4).then_some(()))
        },
    )
    .await?;

    // POST /reload too, and a restart-only change is listed as pending.
    let text = std::fs::read_to_string(path)?;
    std::fs::write(path, text.replace("max_age = \"24h\"", "max_age = \"1h\""))?;
    let (code, r) = post(&edge, "/reload", &bearer).await?;
    assert_eq!(code, 200, "{r}");
    let (_, body) = get_config().await?;
    let c: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(c["config"]["alt_svc"]["max_age"], "1h", "{body}");
    assert_eq!(
        c["restart_pending"],
        serde_json::json!(["alt_svc"]),
        "{body}"
    );
    assert!(!body.contains(PASSWORD), "{body}");
    Ok(())
}
