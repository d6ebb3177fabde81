//! WebSocket (HTTP/1.1 Upgrade) through the real edge binary, with the real
//! `websockets` library as both the backend (an echo server) and the client.
//!
//! A tunnel opens only on the backend's 101; a backend that answers anything
//! else keeps HTTP framing on the client's connection (the Pingora
//! CVE-2026-2833 class), and an upgrade edge does not offer (a body, a protocol
//! not configured) goes on as a plain request with `Upgrade` stripped.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use edge_tests::clients::PyServer;
use edge_tests::{
    poll_until, python_json, Edge, EdgeConfig, KeepAlive, Origin, PoolConfig, RawOrigin,
    RouteConfig, PYTHON_TIMEOUT,
};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `websockets` echo server of `tests/py/ws_echo.py`; killed (by its pid) on drop.
/// Edge with `/ws` → pool `ws` (`ws_url`) and everything else → `default`
/// (`http_url`, the canary's origin), plus the `extra` sections. The `ws` pool
/// keeps the default protocol (h2): upgrades take an h1 connection of their own.
async fn edge_for(http_url: String, ws_url: String, extra: &[&str]) -> anyhow::Result<Edge> {
    edge_with(http_url, ws_url, Vec::new(), extra).await
}

async fn edge_with(
    http_url: String,
    ws_url: String,
    ws_settings: Vec<(String, String)>,
    extra: &[&str],
) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(http_url);
    config.pools.push(PoolConfig {
        name: "ws".to_owned(),
        endpoints: vec![ws_url],
        settings: ws_settings,
    });
    config.routes = vec![
        RouteConfig {
            host: None,
            path_prefix: "/ws".to_owned(),
            pool: "ws".to_owned(),
        },
        RouteConfig {
            host: None,
            path_prefix: "/".to_owned(),
            pool: "default".to_owned(),
        },
    ];
    for section in extra {
        config = config.section(section);
    }
    Edge::start(&config).await
}

async fn metric(edge: &Edge, series: &str) -> anyhow::Result<f64> {
    Ok(edge.metric(series).await?.0.unwrap_or(0.0))
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_h1_and_tls_carries_10_mb_both_ways_and_close_codes(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let echo = PyServer::start("ws_echo.py").await?;
    let edge = edge_for(origin.url(), echo.url(), &[]).await?;
    let size = TEN_MB.to_string();
    let plain = format!("ws://127.0.0.1:{}/ws/echo", edge.http()?.port());
    let tls = format!("wss://localhost:{}/ws/echo", edge.https_addr.port());
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    for url in [&plain, &tls] {
        let out = python_json(
            "ws_echo.py",
            &["echo", url, "--ca", &ca, "--size", &size],
            PYTHON_TIMEOUT,
        )
        .await?;
        assert_eq!(out["status"], 101, "{url}: {out}");
        assert_eq!(out["text"], "hello through edge", "{url}: {out}");
        assert_eq!(out["big_received"], TEN_MB, "{url}: {out}");
        assert_eq!(out["big_intact"], true, "{url}: {out}");
        assert_eq!(out["close_code"], 4001, "{url}: {out}");
        assert_eq!(out["close_reason"], "bye", "{url}: {out}");
        assert!(
            out["via"].as_str().is_some_and(|v| v.contains("edge")),
            "{url}: the 101 did not come through edge: {out}"
        );
    }
    eprintln!(
        "edge RSS after 10 MB each way over h1 and TLS: {} KiB",
        edge.rss_kib()?
    );
    let switched = r#"proxy_upgrades_total{protocol="websocket",result="switched"}"#;
    assert_eq!(metric(&edge, switched).await?, 2.0);
    for direction in ["upstream", "downstream"] {
        let series =
            format!(r#"proxy_tunnel_bytes_total{{direction="{direction}",protocol="websocket"}}"#);
        let bytes = metric(&edge, &series).await?;
        assert!(bytes >= 2.0 * TEN_MB as f64, "{series} = {bytes}");
    }
    poll_until("both tunnels closed", Duration::from_secs(10), || async {
        metric(&edge, r#"proxy_tunnels_open{protocol="websocket"}"#)
            .await
            .is_ok_and(|v| v == 0.0)
    })
    .await?;
    Ok(())
}

/// Reads from `stream` until `count` responses of `content-length: 3` have
/// come (or 10 s pass); returns the bytes as text.
async fn read_responses(stream: &mut TcpStream, count: usize) -> anyhow::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got);
            let complete = text.matches("\r\n\r\nraw").count();
            if complete >= count {
                return anyhow::Ok(());
            }
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "edge closed after {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("responses did not come within 10 s")??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

const UPGRADE: &str = "GET /ws/chat HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_200_to_an_upgrade_keeps_http_framing() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    // Answers every request `200 raw`, the upgrade too, and records the bytes.
    let backend = RawOrigin::start().await?;
    // h1, so what the backend records is HTTP/1.1 text only (no h2c probe).
    let h1 = vec![("protocol".to_owned(), "\"h1\"".to_owned())];
    let edge = edge_with(origin.url(), backend.url(), h1, &[]).await?;
    let mut client = TcpStream::connect(edge.http()?).await?;
    // The upgrade and, right behind it on the same connection, the request an
    // attacker hopes travels raw to the backend once edge "tunnels".
    let smuggled = "GET /ws/second HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    client
        .write_all(format!("{UPGRADE}{smuggled}").as_bytes())
        .await?;
    let answers = read_responses(&mut client, 2).await?;
    let heads: Vec<&str> = answers.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 2, "two HTTP answers expected:\n{answers}");
    for head in &heads {
        assert!(head.starts_with("200"), "{answers}");
        // edge's own fields: each answer went through the pipeline.
        assert!(
            head.to_ascii_lowercase().contains("x-request-id:"),
            "{answers}"
        );
        assert!(
            head.to_ascii_lowercase().contains("via: 1.1 edge"),
            "{answers}"
        );
    }
    // And the connection is still HTTP: a third request gets its own answer.
    client
        .write_all(b"GET /ws/third HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        .await?;
    let third = read_responses(&mut client, 1).await?;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    let seen = String::from_utf8_lossy(&backend.received()).to_ascii_lowercase();
    // The backend saw three proxied requests (edge's forwarding fields on
    // each), the first offering the upgrade: nothing reached it raw.
    assert_eq!(seen.matches("x-forwarded-for:").count(), 3, "{seen}");
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    for path in ["/ws/chat", "/ws/second", "/ws/third"] {
        assert!(seen.contains(&format!("get {path} http/1.1")), "{seen}");
    }
    let declined = r#"proxy_upgrades_total{protocol="websocket",result="declined"}"#;
    assert_eq!(metric(&edge, declined).await?, 1.0);
    let switched = r#"proxy_upgrades_total{protocol="websocket",result="switched"}"#;
    assert_eq!(metric(&edge, switched).await?, 0.0);
    for dir in ["upstream", "downstream"] {
        let series =
            format!(r#"proxy_tunnel_bytes_total{{direction="{dir}",protocol="websocket"}}"#);
        assert_eq!(metric(&edge, &series).await?, 0.0, "{series}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_body_or_for_another_protocol_is_plain_http() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let backend = RawOrigin::start().await?;
    // h1, so what the backend records is HTTP/1.1 text only (no h2c probe).
    let h1 = vec![("protocol".to_owned(), "\"h1\"".to_owned())];
    let edge = edge_with(origin.url(), backend.url(), h1, &[]).await?;
    let cases = [
        (
            "a body",
            "POST /ws/body HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Content-Length: 5\r\n\r\nhello",
        ),
        (
            "a GET with a body",
            "GET /ws/getbody HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Content-Length: 5\r\n\r\nhello",
        ),
        (
            "h2c, not configured",
            "GET /ws/h2c HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        backend.clear();
        let mut client = TcpStream::connect(edge.http()?).await?;
        client.write_all(request.as_bytes()).await?;
        let answer = read_responses(&mut client, 1).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer}");
        let seen = String::from_utf8_lossy(&backend.received()).to_ascii_lowercase();
        assert!(seen.contains("x-forwarded-for:"), "{what}: {seen}");
        assert!(
            !seen.contains("upgrade"),
            "{what}: Upgrade reached the backend: {seen}"
        );
    }
    let declined = r#"proxy_upgrades_total{protocol="websocket",result="declined"}"#;
    assert_eq!(metric(&edge, declined).await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_timeout_while_a_canary_gets_200() -> anyhow::Result<()>
{
    let origin = Origin::start().await?;
    let echo = PyServer::start("ws_echo.py").await?;
    let edge = edge_for(
        origin.url(),
        echo.url(),
        &["[upgrade]\nidle_timeout = \"1s\""],
    )
    .await?;
    let url = format!("ws://127.0.0.1:{}/ws/idle", edge.http()?.port());
    let idle = tokio::spawn(async move {
        python_json(
            "ws_echo.py",
            &["idle", &url, "--wait", "30"],
            PYTHON_TIMEOUT,
        )
        .await
    });
    let mut canary = KeepAlive::new(edge.http()?);
    let mut served = 0;
    let started = Instant::now();
    while !idle.is_finished() {
        let reply = canary
            .request(&Method::GET, "/", &format!("canary-{served}"))
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(reply.status, 200, "canary: {}", reply.body);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = idle.await??;
    assert_eq!(out["text"], "before idle", "{out}");
    assert_eq!(
        out["closed"], true,
        "the idle tunnel was never closed: {out}"
    );
    let reason = r#"proxy_tunnels_closed_total{protocol="websocket",reason="idle"}"#;
    assert_eq!(metric(&edge, reason).await?, 1.0);
    assert_eq!(
        metric(&edge, r#"proxy_tunnels_open{protocol="websocket"}"#).await?,
        0.0
    );
    eprintln!(
        "idle tunnel closed after {}s of silence; canary served {served} answers in {:?}",
        out["waited_s"],
        started.elapsed()
    );
    assert!(served > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_is_closed_within_the_drain_grace() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let echo = PyServer::start("ws_echo.py").await?;
    let extra = [
        "[upgrade]\nidle_timeout = \"5m\"",
        "[drain]\ndelay = \"0s\"\ngrace = \"3s\"",
    ];
    let mut edge = edge_for(origin.url(), echo.url(), &extra).await?;
    let url = format!("ws://127.0.0.1:{}/ws/drain", edge.http()?.port());
    let idle = tokio::spawn(async move {
        python_json(
            "ws_echo.py",
            &["idle", &url, "--wait", "30"],
            PYTHON_TIMEOUT,
        )
        .await
    });
    poll_until("the tunnel is open", Duration::from_secs(20), || async {
        metric(&edge, r#"proxy_tunnels_open{protocol="websocket"}"#)
            .await
            .is_ok_and(|v| v == 1.0)
    })
    .await?;
    edge.terminate().await?;
    let status = edge.wait_exit(Duration::from_secs(20)).await?;
    assert!(status.success(), "edge exited with {status}");
    let out = idle.await??;
    assert_eq!(out["closed"], true, "the tunnel outlived the edge: {out}");
    eprintln!(
        "tunnel closed {}s after it went quiet (drain.grace 3s)",
        out["waited_s"]
    );
    Ok(())
}

/// An extended CONNECT WebSocket through edge to the `websockets` echo
/// server with `script` (`ws_h2.py` to the TLS port, `ws_h3.py` to QUIC):
/// the flag in SETTINGS, the 200, the echo of a text message and of 1 MiB,
/// the close code, and one tunnel counted switched. The edge, the echo
/// server (stopped when dropped) and the script's report.
async fn extended_connect_echo(
    script: &str,
    h3: bool,
) -> anyhow::Result<(Edge, PyServer, serde_json::Value)> {
    let origin = Origin::start().await?;
    let echo = PyServer::start("ws_echo.py").await?;
    let edge = edge_for(origin.url(), echo.url(), &[]).await?;
    let port = if h3 { edge.h3_addr } else { edge.https_addr }
        .port()
        .to_string();
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    let path = if h3 { "/ws/h3" } else { "/ws/h2" };
    let out = python_json(script, &["127.0.0.1", &port, &ca, path], PYTHON_TIMEOUT).await?;
    assert_eq!(out["enable_connect_protocol"], 1, "{out}");
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        out["via"].as_str().is_some_and(|v| v.contains("edge")),
        "{out}"
    );
    let over = if h3 { "hello over h3" } else { "hello over h2" };
    assert_eq!(out["text"], over, "{out}");
    assert_eq!(out["big_intact"], true, "{out}");
    assert_eq!(out["close_code"], 4001, "{out}");
    assert_eq!(out["close_reason"], "bye", "{out}");
    let switched = r#"proxy_upgrades_total{protocol="websocket",result="switched"}"#;
    assert_eq!(metric(&edge, switched).await?, 1.0);
    Ok((edge, echo, out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_extended_connect_is_bridged_to_the_h1_backend() -> anyhow::Result<()> {
    extended_connect_echo("ws_h2.py", false).await?;
    Ok(())
}

/// RFC 9220: the same bridge over HTTP/3 (aioquic), the stream's DATA frames
/// carrying the WebSocket frames; the backend's close finishes the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h3_extended_connect_is_bridged_to_the_h1_backend() -> anyhow::Result<()> {
    let (edge, _echo, out) = extended_connect_echo("ws_h3.py", true).await?;
    assert_eq!(out["ended"], "stream ended", "{out}");
    let closed = r#"proxy_tunnels_closed_total{protocol="websocket",reason="closed"}"#;
    poll_until(
        "the tunnel is counted closed",
        Duration::from_secs(5),
        || async { metric(&edge, closed).await.is_ok_and(|n| n == 1.0) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_connect_answered_200_by_the_backend_is_not_a_tunnel() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let backend = RawOrigin::start().await?;
    let h1 = vec![("protocol".to_owned(), "\"h1\"".to_owned())];
    let edge = edge_with(origin.url(), backend.url(), h1, &[]).await?;
    let port = edge.https_addr.port().to_string();
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    let out = python_json(
        "ws_h2.py",
        &["127.0.0.1", &port, &ca, "/ws/h2"],
        PYTHON_TIMEOUT,
    )
    .await?;
    // To an h2 client a 2xx is the open tunnel: a backend that did not
    // switch must not produce one. Nor to an h3 one (RFC 9220).
    assert_eq!(out["status"], 502, "{out}");
    let h3_port = edge.h3_addr.port().to_string();
    let h3 = python_json(
        "ws_h3.py",
        &["127.0.0.1", &h3_port, &ca, "/ws/h3"],
        PYTHON_TIMEOUT,
    )
    .await?;
    assert_eq!(h3["status"], 502, "{h3}");
    let seen = String::from_utf8_lossy(&backend.received()).to_ascii_lowercase();
    assert!(seen.starts_with("get /ws/h2 http/1.1"), "{seen}");
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(seen.contains("sec-websocket-key: "), "{seen}");
    Ok(())
}

/// `GET /ws/...` with the upgrade fields a browser sends.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_drop_their_tunnels_never_open_the_backends_breaker() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let echo = PyServer::start("ws_echo.py").await?;
    let edge = edge_for(origin.url(), echo.url(), &[]).await?;
    // Twice the breaker's 5 consecutive failures: clients that go away right
    // after the 101, and clients that go away before any answer came.
    for i in 0..10 {
        let mut client = TcpStream::connect(edge.http()?).await?;
        client
            .write_all(upgrade_request(&format!("/ws/drop-{i}")).as_bytes())
            .await?;
        if i % 2 == 0 {
            let mut head = [0u8; 12];
            client.read_exact(&mut head).await?;
            assert_eq!(&head, b"HTTP/1.1 101", "{}", String::from_utf8_lossy(&head));
        }
        drop(client);
    }
    poll_until(
        "every dropped tunnel closed",
        Duration::from_secs(10),
        || async {
            metric(&edge, r#"proxy_tunnels_open{protocol="websocket"}"#)
                .await
                .is_ok_and(|v| v == 0.0)
        },
    )
    .await?;
    let (_, page) = edge.metric("proxy_endpoint_ejections_total").await?;
    let line = |name: &str| {
        page.lines()
            .find(|l| l.starts_with(name) && l.contains(r#"backend="ws""#))
            .map(str::to_owned)
    };
    let ejections = line("proxy_endpoint_ejections_total").context("no ejections series")?;
    assert!(ejections.ends_with(" 0"), "{ejections}");
    let breaker = line("proxy_endpoint_breaker_state").context("no breaker series")?;
    assert!(breaker.ends_with(" 0"), "{breaker}");
    // And the backend still takes WebSockets.
    let url = format!("ws://127.0.0.1:{}/ws/after", edge.http()?.port());
    let out = python_json("ws_echo.py", &["echo", &url], PYTHON_TIMEOUT).await?;
    assert_eq!(out["text"], "hello through edge", "{out}");
    Ok(())
}
