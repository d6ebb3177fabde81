//! What operators see of handshakes and QUIC paths: failed TLS and QUIC
//! handshakes are counted by a bounded reason, and each QUIC connection's RTT,
//! congestion window, packets and datagrams are recorded when it ends.

use std::time::Duration;

use edge_tests::{poll_until, python_json, start_default, Edge, PYTHON_TIMEOUT};
use tokio::io::AsyncWriteExt as _;

async fn value(edge: &Edge, series: &str) -> f64 {
    edge.metric(series)
        .await
        .ok()
        .and_then(|(v, _)| v)
        .unwrap_or(0.0)
}

async fn fail(mode: &str, port: u16) -> anyhow::Result<serde_json::Value> {
    let port = port.to_string();
    let out = python_json(
        "handshake_fail.py",
        &["--port", port.as_str(), "--mode", mode],
        PYTHON_TIMEOUT,
    )
    .await?;
    assert_eq!(
        out["failed"], true,
        "{mode}: the handshake succeeded: {out}"
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_by_reason() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let port = edge.https_addr.port();

    // Bytes that are no TLS record.
    let mut raw = tokio::net::TcpStream::connect(edge.https_addr).await?;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    // A client that connects and leaves before a ClientHello.
    drop(tokio::net::TcpStream::connect(edge.https_addr).await?);
    fail("tls-alpn", port).await?;
    fail("quic-alpn", port).await?;

    for series in [
        "proxy_handshake_failures_total{reason=\"bad_message\",transport=\"tls\"}",
        "proxy_handshake_failures_total{reason=\"eof\",transport=\"tls\"}",
        "proxy_handshake_failures_total{reason=\"no_shared_protocol\",transport=\"tls\"}",
        "proxy_handshake_failures_total{reason=\"no_shared_protocol\",transport=\"quic\"}",
    ] {
        poll_until(series, Duration::from_secs(10), || async {
            value(&edge, series).await >= 1.0
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(raw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_leaves_its_path_figures_when_it_ends() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let spec =
        serde_json::json!([{ "method": "GET", "path": "/" }, { "method": "GET", "path": "/" }]);
    let results = edge_tests::h3_requests(&edge, &spec).await?;
    assert_eq!(results[0]["status"], 200, "{results}");
    // The client closed its connection when it exited: edge notices and records.
    poll_until(
        "a QUIC connection recorded",
        Duration::from_secs(15),
        || async { value(&edge, "proxy_quic_rtt_seconds_count").await >= 1.0 },
    )
    .await?;
    let sent = value(&edge, "proxy_quic_packets_total{result=\"sent\"}").await;
    let lost = value(&edge, "proxy_quic_packets_total{result=\"lost\"}").await;
    let dg_in = value(&edge, "proxy_quic_datagrams_total{direction=\"in\"}").await;
    let dg_out = value(&edge, "proxy_quic_datagrams_total{direction=\"out\"}").await;
    let cwnd = value(&edge, "proxy_quic_cwnd_bytes_count").await;
    eprintln!("sent {sent} lost {lost} datagrams in {dg_in} out {dg_out}");
    assert!(sent >= 3.0, "packets sent {sent}");
    assert!(
        dg_in >= 3.0 && dg_out >= 3.0,
        "datagrams in {dg_in} out {dg_out}"
    );
    assert!(lost <= sent, "lost {lost} of {sent}");
    assert_eq!(cwnd, 1.0);
    // A loopback round trip.
    let fast = value(&edge, "proxy_quic_rtt_seconds_bucket{le=\"0.1\"}").await;
    assert_eq!(fast, 1.0, "loopback RTT over 100 ms?");
    Ok(())
}
