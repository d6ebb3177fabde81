//! `listen` and `http_listen` as lists: one edge serving TCP (TLS and
//! plaintext) and UDP (HTTP/3) on IPv4 and IPv6 loopback at once.

use std::net::SocketAddr;

use edge_tests::{curl, echo_header, h3_requests, parse_listening, Edge, EdgeConfig, Origin, Pki};

/// Every `listening kind=KIND` address edge logged, in order.
fn listening(edge: &Edge, kind: &str) -> Vec<SocketAddr> {
    edge.log()
        .lines()
        .filter_map(parse_listening)
        .filter(|(k, _)| k == kind)
        .map(|(_, a)| a)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edge_serves_tcp_and_udp_on_ipv4_and_ipv6() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = EdgeConfig::new(origin.url())
        .to_toml(&pki)
        .replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\n",
            1,
        )
        .replacen(
            "http_listen = \"127.0.0.1:0\"\n",
            "http_listen = [\"127.0.0.1:0\", \"[::1]:0\"]\n",
            1,
        );
    let mut edge = Edge::start_with_toml(dir, pki, &toml).await?;
    let https = listening(&edge, "https");
    let h3 = listening(&edge, "h3");
    let http = listening(&edge, "http");
    assert_eq!(https.len(), 2, "{https:?}");
    assert!(https[0].is_ipv4() && https[1].is_ipv6(), "{https:?}");
    assert_eq!(h3, https, "h3 on each TLS address");
    assert!(
        http.len() == 2 && http[0].is_ipv4() && http[1].is_ipv6(),
        "{http:?}"
    );

    for addr in &https {
        let url = format!("https://localhost:{}/echo", addr.port());
        let resolve = format!("localhost:{}:{}", addr.port(), addr.ip());
        let cacert = edge.pki.ca_cert.to_string_lossy().into_owned();
        let response = curl(&["--cacert", &cacert, "--resolve", &resolve, &url]).await?;
        assert_eq!(response.status, 200, "h1/h2 over TLS on {addr}");
        let echo = response.json()?;
        let client = if addr.is_ipv4() { "127.0.0.1" } else { "::1" };
        assert_eq!(echo_header(&echo, "x-forwarded-for"), [client], "on {addr}");
    }
    for addr in &http {
        let response = curl(&[format!("http://{addr}/echo")]).await?;
        assert_eq!(response.status, 200, "plaintext on {addr}");
    }
    for addr in h3 {
        edge.h3_addr = addr;
        let spec = serde_json::json!([{"path": "/echo", "headers": []}]);
        let results = h3_requests(&edge, &spec).await?;
        assert_eq!(results[0]["status"], 200, "h3 on {addr}: {results}");
    }
    Ok(())
}

/// Two entries of `listen` on one address, or an entry shared with
/// `http_listen`, are refused by `edge check` naming the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_check_refuses_list_entries_on_one_address() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("edge.toml");
    let toml = "listen = [\"127.0.0.1:18443\", \"[::1]:18443\", \"127.0.0.1:18443\"]\nhttp_listen = [\"[::]:18443\"]\nadmin = \"127.0.0.1:0\"\n[pools.default]\nendpoints = [\"127.0.0.1:9\"]\n";
    std::fs::write(&path, toml)?;
    let out = edge_tests::run_edge(
        ["check", "-c", &path.to_string_lossy()],
        std::time::Duration::from_secs(10),
    )
    .await?;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, Some(0), "accepted:\n{text}");
    assert!(
        text.contains("`listen` (127.0.0.1:18443) and `listen` (127.0.0.1:18443)"),
        "{text}"
    );
    assert!(
        text.contains("`listen` ([::1]:18443) and `http_listen` ([::]:18443)"),
        "{text}"
    );
    Ok(())
}
