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

/// What edge sends on a one-request QUIC connection, seen from aioquic's qlog:
/// the first flight carries the NEW_CONNECTION_ID frames in a 1-RTT packet
/// where padding was (not a datagram of their own), path MTU discovery probes
/// the 1,452-byte ceiling first and stops there (a binary search sent 1,326,
/// 1,389, 1,420 and 1,452), and edge opens no grease stream (no server
/// unidirectional stream but control and the two QPACK ones), and it does not
/// answer the client's CONNECTION_CLOSE. Before, such a connection cost edge
/// 10 datagrams with this client; now 6 or 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_request_quic_connection_sends_no_datagram_it_can_spare() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let spec = serde_json::json!([{ "method": "GET", "path": "/" }]);
    // Hold the connection 300 ms after the response: time for a binary
    // search's further probes (a loopback round trip each) to show.
    let out = edge_tests::h3_requests_with(&edge, &spec, &["--flights", "0.3"]).await?;
    assert_eq!(out["results"][0]["status"], 200, "{out}");
    let datagrams = out["datagrams"].as_array().cloned().unwrap_or_default();
    let frames = |d: &serde_json::Value, packet_type: &str| -> Vec<String> {
        d["packets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["type"] == packet_type)
            .flat_map(|p| p["frames"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f["frame_type"].as_str().map(str::to_owned))
            .collect()
    };
    let shown = serde_json::to_string_pretty(&datagrams)?;
    let first = datagrams
        .first()
        .ok_or_else(|| anyhow::anyhow!("no datagram"))?;
    assert!(
        frames(first, "1RTT")
            .iter()
            .any(|f| f == "new_connection_id"),
        "NEW_CONNECTION_ID not in the first flight:\n{shown}"
    );
    let probes: Vec<u64> = datagrams
        .iter()
        .filter(|d| {
            let f = frames(d, "1RTT");
            f.iter().any(|f| f == "ping") && f.iter().all(|f| f == "ping" || f == "padding")
        })
        .filter_map(|d| d["length"].as_u64())
        .collect();
    assert_eq!(probes, [1452], "MTU probes:\n{shown}");
    let server_uni: std::collections::BTreeSet<u64> = datagrams
        .iter()
        .flat_map(|d| d["packets"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["frames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["stream_id"].as_u64())
        .filter(|id| id % 4 == 3)
        .collect();
    assert_eq!(
        server_uni,
        [3, 7, 11].into(),
        "server unidirectional streams:\n{shown}"
    );
    // Edge counts its datagrams when the connection ends. The client logs
    // none after it closes, so one more on edge's side would be a
    // CONNECTION_CLOSE sent in reply to the client's (RFC 9000 10.2.2 allows
    // it; edge, like quic-go, sends none).
    poll_until(
        "the QUIC connection recorded",
        Duration::from_secs(15),
        || async { value(&edge, "proxy_quic_rtt_seconds_count").await >= 1.0 },
    )
    .await?;
    let sent = value(&edge, "proxy_quic_datagrams_total{direction=\"out\"}").await;
    assert_eq!(
        sent,
        datagrams.len() as f64,
        "edge counted {sent} datagrams, the client got:\n{shown}"
    );
    Ok(())
}
