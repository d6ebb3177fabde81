//! Upstream failures edge turns into responses, and pooled connections an origin
//! drops while idle.

use std::time::Duration;

use edge_tests::{curl, start_pair, Edge, EdgeConfig, OriginOptions};

/// A loopback port nothing listens on: bound, read, released.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_502_within_client_timeout() -> anyhow::Result<()> {
    let endpoint = format!("http://127.0.0.1:{}", closed_port()?);
    let config = EdgeConfig::new(endpoint).pool_setting("connect_timeout", "\"1s\"");
    let edge = Edge::start(&config).await?;
    // curl gives up after 10 s (REQUEST_TIMEOUT), so a 502 here arrived before it.
    let response = curl(&[format!("http://{}/", edge.http()?)]).await?;
    assert_eq!(response.status, 502, "{}", response.text());
    let id = response
        .header("x-request-id")
        .expect("x-request-id on 502");
    assert!(
        response.text().contains(id),
        "502 body {:?}",
        response.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_past_response_timeout_is_504() -> anyhow::Result<()> {
    let (origin, edge) = start_pair(OriginOptions::default(), |c| {
        c.pool_setting("response_timeout", "\"1s\"")
    })
    .await?;
    let response = curl(&[format!("http://{}/slow/3000", edge.http()?)]).await?;
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(response.header("x-request-id").is_some());
    assert_eq!(origin.requests(), 1);
    Ok(())
}

/// Sends a request about every second to an origin that drops connections idle
/// for 1 s: 0.9, 1.0 and 1.1 s after the previous response, so the close races
/// the reuse, and at least every third request finds its connection closed.
async fn no_errors_when_origin_drops_idle_connections(protocol: &str) -> anyhow::Result<()> {
    let options = OriginOptions {
        idle_close: Some(Duration::from_secs(1)),
        http1_only: protocol == "h1",
    };
    let (origin, edge) = start_pair(options, |c| c.protocol(protocol)).await?;
    let url = format!("http://{}/", edge.http()?);
    let mut failures = Vec::new();
    for i in 0..12 {
        if i > 0 {
            // Pacing of the workload, not a wait for a condition: around the
            // origin's 1 s idle close, so some reuses race the close and every
            // third comes surely after it (the origin must drop some).
            tokio::time::sleep(Duration::from_millis(900 + (i % 3) * 100)).await;
        }
        match curl(&[url.as_str()]).await {
            Ok(r) if r.status == 200 && r.text() == "hello" => {}
            Ok(r) => failures.push(format!("request {i}: {} {}", r.status, r.text())),
            Err(err) => failures.push(format!("request {i}: {err:#}")),
        }
    }
    assert!(failures.is_empty(), "{protocol} pool: {failures:#?}");
    assert!(
        origin.connections() > 1,
        "origin never dropped a connection, so the test proved nothing"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pool_has_no_errors_when_origin_closes_idle_connections() -> anyhow::Result<()> {
    no_errors_when_origin_drops_idle_connections("h2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_pool_has_no_errors_when_origin_closes_idle_connections() -> anyhow::Result<()> {
    no_errors_when_origin_drops_idle_connections("h1").await
}

/// `edge run --upstream http://...` defaults to h2c; a backend that speaks only
/// HTTP/1.1 answers the preface in HTTP/1.1, and edge must notice, switch that
/// endpoint to HTTP/1.1 and serve the very first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_pool_falls_back_to_http1_for_an_http1_only_backend() -> anyhow::Result<()> {
    let options = OriginOptions {
        idle_close: None,
        http1_only: true,
    };
    let (origin, edge) = start_pair(options, |c| c.protocol("h2")).await?;
    let url = format!("http://{}/echo", edge.http()?);
    for i in 0..3 {
        let r = curl(&[url.as_str()]).await?;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(origin.requests(), 3, "each request reached the origin once");
    assert!(
        edge.log().contains("using HTTP/1.1 for it"),
        "the switch is logged: {}",
        edge.log()
    );
    Ok(())
}

/// `request_timeout` bounds all tries together: with two slow origins and a 1 s
/// per-try timeout, a retry would take 2 s; the 1.5 s deadline answers 504 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_deadline_bounds_all_tries_together() -> anyhow::Result<()> {
    let (a, b) = (
        edge_tests::Origin::start().await?,
        edge_tests::Origin::start().await?,
    );
    let mut config = EdgeConfig::new(a.url())
        .pool_setting("response_timeout", "\"1s\"")
        .pool_setting("request_timeout", "\"1500ms\"");
    config.pools[0].endpoints = vec![a.url(), b.url()];
    let edge = Edge::start(&config).await?;
    let response = curl(&[format!("http://{}/slow/3000", edge.http()?)]).await?;
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(
        a.requests() + b.requests(),
        2,
        "the first try timed out and a second began"
    );
    assert!(
        edge.log().contains("request deadline"),
        "the deadline, not a per-try timeout, ended it:\n{}",
        edge.log()
    );
    Ok(())
}

/// Behind HTTP/2 clients an HTTP/1.1 backend's connections are reused as soon
/// as each response ends: `clients` h2c connections, each sending requests one
/// after another, never need more upstream connections than there are requests
/// in flight at once (one per client). The leak this guards against opened a
/// new upstream connection for every request until the stream's watchdog
/// forgot the finished response, and exhausted the per-endpoint cap under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_upstream_connections_are_reused_behind_h2_clients() -> anyhow::Result<()> {
    const CLIENTS: u64 = 8;
    const REQUESTS: u64 = 25;
    let options = OriginOptions {
        idle_close: None,
        http1_only: true,
    };
    let (origin, edge) = start_pair(options, |c| c.protocol("h1")).await?;
    let addr = edge.http()?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await?;
            tokio::spawn(conn);
            for i in 0..REQUESTS {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())?;
                let resp = tokio::time::timeout(
                    edge_tests::clients::REQUEST_TIMEOUT,
                    send.send_request(req),
                )
                .await??;
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body()).await?;
                anyhow::ensure!(
                    status == 200 && body.to_bytes() == "hello",
                    "request {i}: {status}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    assert_eq!(origin.requests(), CLIENTS * REQUESTS);
    assert!(
        origin.connections() <= CLIENTS,
        "{} upstream connections for {CLIENTS} h2 clients ({} open now, peak {})",
        origin.connections(),
        origin.open_connections(),
        origin.peak_connections()
    );
    Ok(())
}
