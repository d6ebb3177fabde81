//! `balancer = "consistent_hash"`: each client address keeps its endpoint.

use edge_tests::{curl, Edge, EdgeConfig, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_client_address_on_one_origin() -> anyhow::Result<()> {
    let origins = [
        Origin::start().await?,
        Origin::start().await?,
        Origin::start().await?,
    ];
    let mut config =
        EdgeConfig::new(origins[0].url()).pool_setting("balancer", "\"consistent_hash\"");
    config.pools[0].endpoints = origins.iter().map(Origin::url).collect();
    let edge = Edge::start(&config).await?;
    let url = format!("http://{}/", edge.http()?);
    let counts = || origins.iter().map(Origin::requests).collect::<Vec<_>>();
    let mut used = [false; 3];
    for client in 21..29 {
        let source = format!("127.0.0.{client}");
        let before = counts();
        for _ in 0..5 {
            let r = curl(&["--interface", source.as_str(), url.as_str()]).await?;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let after = counts();
        let served: Vec<usize> = (0..3).filter(|&i| after[i] > before[i]).collect();
        assert_eq!(
            served.len(),
            1,
            "client {source} spread over origins {served:?}"
        );
        assert_eq!(after[served[0]] - before[served[0]], 5, "client {source}");
        used[served[0]] = true;
    }
    assert!(
        used.iter().filter(|u| **u).count() >= 2,
        "eight clients all landed on one origin: {used:?}"
    );
    Ok(())
}

/// Weights from config: `{ url, weight }` endpoints with the weighted balancer
/// split traffic exactly by weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_weights_split_traffic_one_to_three() -> anyhow::Result<()> {
    let (light, heavy) = (Origin::start().await?, Origin::start().await?);
    let mut config =
        EdgeConfig::new(light.url()).pool_setting("balancer", "\"weighted_round_robin\"");
    config.pools[0].endpoints = vec![light.url()];
    let toml = |pki: &edge_tests::Pki| {
        config.to_toml(pki).replace(
            &format!("endpoints = [\"{}\"]", light.url()),
            &format!(
                "endpoints = [\"{}\", {{ url = \"{}\", weight = 3 }}]",
                light.url(),
                heavy.url()
            ),
        )
    };
    let dir = tempfile::tempdir()?;
    let pki = edge_tests::Pki::generate(dir.path())?;
    let rendered = toml(&pki);
    assert!(
        rendered.contains("weight = 3"),
        "rendered config: {rendered}"
    );
    let edge = Edge::start_with_toml(dir, pki, &rendered).await?;
    let url = format!("http://{}/", edge.http()?);
    for _ in 0..40 {
        let r = curl(&[url.as_str()]).await?;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!((light.requests(), heavy.requests()), (10, 30));
    Ok(())
}
