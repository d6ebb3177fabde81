//! `http_mode = "redirect"`: the plaintext listener sends every request to https
//! (same host, path and query) with 308 and no backend sees it, except ACME
//! HTTP-01 challenge paths, which are proxied; `proxy` (the default) proxies all.

use edge_tests::{curl, raw_http, Edge, EdgeConfig, Origin};

fn redirecting(origin: &Origin) -> EdgeConfig {
    EdgeConfig::new(origin.url()).top_setting("http_mode", "\"redirect\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_gets_308_to_https_except_acme_challenges() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&redirecting(&origin)).await?;
    let http = edge.http()?;
    let port = edge.https_addr.port();

    let h1 = raw_http(
        http,
        "GET /a/b?c=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let head = h1.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    let location = format!("location: https://shop.example:{port}/a/b?c=1");
    assert!(
        head.to_ascii_lowercase().contains(&location),
        "{head}\nwanted {location}"
    );

    // h2c (prior knowledge) takes the same way out.
    let h2c = curl(&[
        "--http2-prior-knowledge".to_owned(),
        format!("http://{http}/x"),
    ])
    .await?;
    assert_eq!(h2c.status, 308);
    assert_eq!(
        h2c.header("location"),
        Some(format!("https://{}:{port}/x", http.ip()).as_str())
    );
    // A Host that is no authority gets 400, not a Location built from it.
    let bad = raw_http(
        http,
        "GET / HTTP/1.1\r\nHost: evil@example\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert_eq!(
        origin.requests(),
        0,
        "no redirected request reached the origin"
    );

    let challenge = curl(&[format!("http://{http}/.well-known/acme-challenge/token-1")]).await?;
    assert_eq!(challenge.status, 200, "challenge paths are proxied");
    assert_eq!(origin.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_is_the_default_and_proxies_plaintext() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    let out = curl(&[format!("http://{}/a", edge.http()?)]).await?;
    assert_eq!(out.status, 200);
    assert_eq!(origin.requests(), 1);
    Ok(())
}
