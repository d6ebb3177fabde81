//! TLS at both ends of edge: certificates chosen by SNI (TCP and QUIC), TLS 1.2 and
//! 1.3 on the TCP listener, origins reached over TLS, and the drain on SIGTERM.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::{
    curl, h3_requests_sni, h3_requests_with, tls_args, toml_path, wait_until, Edge, EdgeConfig,
    Origin, OriginOptions, OriginTls, Pki,
};
use tokio::net::TcpStream;

/// The certificate subject curl's `-v` log shows (`*  subject: CN=a.test`).
fn served_subject(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|line| line.trim_start_matches('*').trim().strip_prefix("subject:"))
        .map(str::trim)
}

/// The TLS version curl's `-v` log shows (`* SSL connection using TLSv1.3 / ...`).
fn negotiated_tls(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|line| line.split_once("SSL connection using "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
}

/// GET `/` from edge's TLS listener as `https://NAME:PORT/`, `NAME` resolved to
/// 127.0.0.1, verbose; `verify` false adds `-k` (for a name no certificate covers).
async fn curl_as(edge: &Edge, name: &str, verify: bool) -> anyhow::Result<(u16, String)> {
    let port = edge.https_addr.port();
    let mut args = vec![
        "-v".to_owned(),
        "--cacert".to_owned(),
        edge.pki.ca_cert.to_string_lossy().into_owned(),
        "--resolve".to_owned(),
        format!("{name}:{port}:{}", edge.https_addr.ip()),
    ];
    if !verify {
        args.push("-k".to_owned());
    }
    args.push(format!("https://{name}:{port}/"));
    let response = curl(&args).await?;
    let subject = served_subject(&response.log)
        .unwrap_or_else(|| panic!("no `subject:` in curl's log for {name}:\n{}", response.log))
        .to_owned();
    Ok((response.status, subject))
}

/// One aioquic request to `/` with SNI `name`; the status and the served subject.
async fn h3_as(edge: &Edge, name: &str, verify: bool) -> anyhow::Result<(u64, String)> {
    let spec = serde_json::json!([{ "path": "/" }]);
    let out = h3_requests_sni(edge, name, verify, &spec).await?;
    let status = out["results"][0]["status"].as_u64().unwrap_or(0);
    let subject = out["peer_certificate"]["subject"]
        .as_str()
        .unwrap_or_else(|| panic!("no peer certificate for {name}: {out}"))
        .to_owned();
    Ok((status, subject))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_matching_certificate_and_first_for_unknown_name_over_tcp_and_quic(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let leaf_a = pki.issue_leaf(dir.path(), "a", &["a.test"])?;
    let leaf_b = pki.issue_leaf(dir.path(), "b", &["b.test"])?;
    let config = EdgeConfig::new(origin.url())
        .certificate(leaf_a)
        .certificate(leaf_b);
    let edge = Edge::start_with_pki(dir, pki, &config).await?;

    // curl verifies against the test CA and the name, so a.test and b.test can only
    // succeed with their own certificate; c.test (no match) is checked unverified.
    for (name, verify, expected) in [
        ("a.test", true, "CN=a.test"),
        ("b.test", true, "CN=b.test"),
        ("c.test", false, "CN=a.test"),
    ] {
        let (status, subject) = curl_as(&edge, name, verify).await?;
        assert_eq!(status, 200, "TCP as {name}");
        assert_eq!(subject, expected, "certificate served over TCP for {name}");
    }
    for (name, verify, expected) in [
        ("a.test", true, "CN=a.test"),
        ("b.test", true, "CN=b.test"),
        ("c.test", false, "CN=a.test"),
    ] {
        let (status, subject) = h3_as(&edge, name, verify).await?;
        assert_eq!(status, 200, "QUIC as {name}");
        assert_eq!(subject, expected, "certificate served over QUIC for {name}");
    }
    assert_eq!(origin.requests(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_accepts_tls12_and_tls13() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    for (flags, expected) in [
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
        (&["--tlsv1.3"][..], "TLSv1.3"),
    ] {
        let mut args = tls_args(&edge);
        args.push("-v".to_owned());
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        args.push(format!("{}/", edge.https_origin()));
        let response = curl(&args).await?;
        assert_eq!(response.status, 200, "{flags:?}: {}", response.log);
        assert_eq!(response.text(), "hello");
        assert_eq!(
            negotiated_tls(&response.log),
            Some(expected),
            "{flags:?}: {}",
            response.log
        );
    }
    Ok(())
}

/// The TLS 1.3 suite curl's `-v` log shows (`* SSL connection using TLSv1.3 / SUITE`).
fn negotiated_suite(log: &str) -> Option<&str> {
    log.lines()
        .find_map(|line| line.split_once("SSL connection using TLSv1.3 / "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
}

/// Edge chooses the TLS 1.3 suite by its own order: AES-128-GCM whatever the
/// client lists first (OpenSSL's AES-256, ChaCha20, AES-128; a ChaCha20-first
/// list), then AES-256-GCM, ChaCha20 only for a client offering neither; a
/// client limited to one suite is still served with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_suite_is_chosen_by_edge_aes128_first_and_single_suite_clients_served(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    for (offer, expected) in [
        (
            "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
            "TLS_AES_256_GCM_SHA384",
        ),
        ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let mut args = tls_args(&edge);
        args.extend(["-v", "--tlsv1.3", "--tls13-ciphers", offer].map(str::to_owned));
        args.push(format!("{}/", edge.https_origin()));
        let response = curl(&args).await?;
        assert_eq!(response.status, 200, "{offer}: {}", response.log);
        assert_eq!(
            negotiated_suite(&response.log),
            Some(expected),
            "{offer}: {}",
            response.log
        );
    }
    // The QUIC listener chooses the same way (aioquic lists AES-128 first by
    // default, so the offers put it last or leave it out).
    for (offer, expected) in [
        (
            "AES_256_GCM_SHA384,CHACHA20_POLY1305_SHA256,AES_128_GCM_SHA256",
            "AES_128_GCM_SHA256",
        ),
        (
            "CHACHA20_POLY1305_SHA256,AES_256_GCM_SHA384",
            "AES_256_GCM_SHA384",
        ),
        ("CHACHA20_POLY1305_SHA256", "CHACHA20_POLY1305_SHA256"),
    ] {
        let out = h3_requests_with(
            &edge,
            &serde_json::json!([{"path": "/"}]),
            &["--cipher-suites", offer],
        )
        .await?;
        assert_eq!(out["results"][0]["status"], 200, "{offer}: {out}");
        assert_eq!(out["cipher_suite"], expected, "{offer}: {out}");
    }
    Ok(())
}

/// A TLS origin offering `alpn` with a `localhost` leaf of the test CA, and edge in
/// front of it (pool `protocol`, trusting the CA only when `trust_ca`).
async fn start_tls_pair(
    alpn: &[&str],
    protocol: &str,
    trust_ca: bool,
) -> anyhow::Result<(Origin, Edge)> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let origin = Origin::start_tls(
        OriginOptions::default(),
        OriginTls::with_alpn(&pki.leaf(), alpn),
    )
    .await?;
    let mut config = EdgeConfig::new(origin.url()).protocol(protocol);
    if trust_ca {
        config = config.pool_setting("ca", &toml_path(&pki.ca_cert));
    }
    let edge = Edge::start_with_pki(dir, pki, &config).await?;
    Ok((origin, edge))
}

/// GET `/echo` through edge's TLS listener.
async fn echo_through(edge: &Edge) -> anyhow::Result<edge_tests::CurlResponse> {
    let mut args = tls_args(edge);
    args.push(format!("{}/echo", edge.https_origin()));
    curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origin_with_pool_ca_gets_http2() -> anyhow::Result<()> {
    let (origin, edge) = start_tls_pair(&["h2", "http/1.1"], "h2", true).await?;
    let response = echo_through(&edge).await?;
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json()?;
    assert_eq!(echo["version"], "HTTP/2.0", "origin saw {echo}");
    assert_eq!(origin.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pool_falls_back_to_http1_when_tls_origin_offers_only_http1() -> anyhow::Result<()> {
    let (origin, edge) = start_tls_pair(&["http/1.1"], "h2", true).await?;
    for i in 0..3 {
        let response = echo_through(&edge).await?;
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        let echo = response.json()?;
        assert_eq!(
            echo["version"], "HTTP/1.1",
            "request {i}: origin saw {echo}"
        );
    }
    assert_eq!(origin.requests(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origin_signed_by_untrusted_ca_is_502() -> anyhow::Result<()> {
    let (origin, edge) = start_tls_pair(&["h2", "http/1.1"], "h2", false).await?;
    let response = echo_through(&edge).await?;
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        origin.connections() >= 1,
        "edge never reached the origin, so the 502 is not about trust"
    );
    assert_eq!(origin.requests(), 0, "no request got past the handshake");
    Ok(())
}

/// Tries one TCP connection to `addr`; true when the connection is refused.
async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
        Ok(Err(err)) => err.kind() == ErrorKind::ConnectionRefused,
        // Connected (a listener still there), or no answer at all: try again.
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_refuses_new_connections_and_exits_0(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let mut edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    let mut args = tls_args(&edge);
    args.push(format!("{}/slow/2000", edge.https_origin()));
    let in_flight = tokio::spawn(async move { curl(&args).await });
    wait_until(
        "the slow request to reach the origin",
        Duration::from_secs(10),
        || origin.requests() == 1,
    )
    .await?;

    edge.terminate().await?;
    let addr = edge.https_addr;
    edge_tests::poll_until(
        &format!("{addr} to refuse connections after SIGTERM"),
        Duration::from_secs(10),
        || refused(addr),
    )
    .await?;
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before new connections were refused"
    );

    let response = in_flight.await??;
    assert_eq!(
        response.status,
        200,
        "in-flight request: {}",
        response.text()
    );
    assert_eq!(response.text(), "slow");

    // The grace is 30 s; the in-flight request is done, so exiting takes far less.
    let status = edge.wait_exit(Duration::from_secs(30)).await?;
    assert_eq!(status.code(), Some(0), "edge exit status {status}");
    assert!(edge.log().contains("draining"), "{}", edge.log());
    Ok(())
}
