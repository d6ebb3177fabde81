//! SIGHUP reloads the config file: a good one replaces routes and pools without a
//! restart, a bad one is refused with its errors and the running config serves on.

use std::time::Duration;

use edge_tests::{curl, h3_requests, tls_args, wait_until, Edge, EdgeConfig, Origin};

fn sighup(edge: &Edge) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &edge.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

async fn get(edge: &Edge) -> anyhow::Result<u16> {
    Ok(curl(&[format!("http://{}/", edge.http()?)]).await?.status)
}

async fn metrics(edge: &Edge) -> anyhow::Result<String> {
    Ok(curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text())
}

/// `workers = 1` or the default runtime.
fn config(url: String, workers: Option<&str>) -> EdgeConfig {
    let config = EdgeConfig::new(url);
    match workers {
        Some(n) => config.top_setting("workers", n),
        None => config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_pools_and_refuses_a_bad_file_while_serving_on() -> anyhow::Result<()> {
    swaps_pools_and_refuses_a_bad_file(None).await
}

/// One worker is a different runtime (current-thread): the same reload, with the
/// file read off that one thread, and every client protocol served on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_h1_h2_h3_and_reloads() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&config(origin.url(), Some("1"))).await?;
    let mut h2 = tls_args(&edge);
    h2.extend(["--http2".to_owned(), format!("{}/", edge.https_origin())]);
    let h2 = curl(&h2).await?;
    assert_eq!((h2.status, h2.http_version.as_str()), (200, "2"));
    let h3 = h3_requests(&edge, &serde_json::json!([{"path": "/", "headers": []}])).await?;
    assert_eq!(h3[0]["status"], 200, "{h3}");
    assert_eq!(origin.requests(), 2);
    drop(edge);
    swaps_pools_and_refuses_a_bad_file(Some("1")).await
}

async fn swaps_pools_and_refuses_a_bad_file(workers: Option<&str>) -> anyhow::Result<()> {
    let (a, b) = (Origin::start().await?, Origin::start().await?);
    let edge = Edge::start(&config(a.url(), workers)).await?;
    assert_eq!(get(&edge).await?, 200);
    assert_eq!((a.requests(), b.requests()), (1, 0));

    // A good file pointing the pool at origin b takes over without a restart; a
    // request in flight on the old pool across the reload still completes.
    let slow_url = format!("http://{}/slow/1500", edge.http()?);
    let in_flight = tokio::spawn(async move { curl(&[slow_url]).await });
    wait_until("slow request at origin a", Duration::from_secs(10), || {
        a.requests() == 2
    })
    .await?;
    std::fs::write(
        &edge.config_path,
        config(b.url(), workers).to_toml(&edge.pki),
    )?;
    sighup(&edge)?;
    wait_until("reload logged", Duration::from_secs(10), || {
        edge.log().contains("config reloaded")
    })
    .await?;
    assert_eq!(get(&edge).await?, 200);
    assert_eq!((a.requests(), b.requests()), (2, 1), "the new pool serves");
    let slow = in_flight.await??;
    assert_eq!(
        slow.status, 200,
        "the in-flight request survived the reload"
    );

    // A bad file is refused, names its key and line, and b keeps serving.
    let mut bad = config(a.url(), workers).to_toml(&edge.pki);
    bad.insert_str(0, "listen_on_mars = true\n");
    std::fs::write(&edge.config_path, bad)?;
    sighup(&edge)?;
    wait_until("refusal logged", Duration::from_secs(10), || {
        edge.log().contains("the running config keeps serving")
    })
    .await?;
    assert!(
        edge.log().contains(":1: listen_on_mars: unknown key"),
        "refusal names key and line:\n{}",
        edge.log()
    );
    assert_eq!(get(&edge).await?, 200);
    assert_eq!(
        (a.requests(), b.requests()),
        (2, 2),
        "the running config serves on"
    );

    let text = metrics(&edge).await?;
    assert!(
        text.contains("proxy_config_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("proxy_config_reloads_total{result=\"refused\"} 1"),
        "{text}"
    );
    Ok(())
}
