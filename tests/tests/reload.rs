//! SIGHUP reloads the config file: a good one replaces routes and pools without a
//! restart, a bad one is refused with its errors and the running config serves on.

use std::time::Duration;

use edge_tests::{curl, wait_until, Edge, EdgeConfig, Origin};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_pools_and_refuses_a_bad_file_while_serving_on() -> anyhow::Result<()> {
    let (a, b) = (Origin::start().await?, Origin::start().await?);
    let edge = Edge::start(&EdgeConfig::new(a.url())).await?;
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
        EdgeConfig::new(b.url()).to_toml(&edge.pki),
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
    let mut bad = EdgeConfig::new(a.url()).to_toml(&edge.pki);
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
