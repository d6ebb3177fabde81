//! The harness itself, without edge: the origin's routes and idle close, so that a
//! failure in the other suites points at edge rather than at the test rig.

use std::time::Duration;

use edge_tests::{curl, echo_header, raw_http, Origin, OriginOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_serves_its_routes_over_h1_and_h2c() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let base = origin.url();
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let echo = curl(&[version, "-H", "x-a: b", &format!("{base}/echo?q=1")]).await?;
        assert_eq!(echo.status, 200);
        let json = echo.json()?;
        assert_eq!(json["method"], "GET");
        assert_eq!(echo_header(&json, "x-a"), ["b"]);

        let bytes = curl(&[version, &format!("{base}/bytes/1000001")]).await?;
        assert_eq!(bytes.body.len(), 1_000_001);

        let upload = curl(&[version, "--data-binary", "12345", &format!("{base}/upload")]).await?;
        assert_eq!(upload.text(), "5");

        let slow = curl(&[version, &format!("{base}/slow/50")]).await?;
        assert_eq!(slow.text(), "slow");

        let other = curl(&[version, &format!("{base}/anything")]).await?;
        assert_eq!(other.text(), "hello");
    }
    let hop = curl(&["--http1.1", &format!("{base}/hop-by-hop")]).await?;
    assert_eq!(hop.header("x-hop-custom"), Some("must-not-pass"));
    assert_eq!(hop.header("keep-alive"), Some("timeout=5"));
    assert_eq!(origin.requests(), 11);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_drops_connection_after_idle_limit() -> anyhow::Result<()> {
    let origin = Origin::start_with(OriginOptions {
        idle_close: Some(Duration::from_millis(300)),
        http1_only: true,
    })
    .await?;
    let mut stream = tokio::net::TcpStream::connect(origin.addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await?;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Nothing more is sent: the origin must close within the limit plus slack.
    let eof = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    assert_eq!(eof, 0, "expected the origin to close the idle connection");
    assert_eq!(origin.connections(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http_reads_a_complete_response() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let answer = raw_http(origin.addr, "GET / HTTP/1.1\r\nHost: origin\r\n\r\n").await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    Ok(())
}
