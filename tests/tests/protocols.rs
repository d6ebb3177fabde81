//! One request through edge over every client protocol: h1 and h2 over TLS, h2c,
//! and h3 (gtlsclient, aioquic, niquests' Alt-Svc upgrade).

use edge_tests::{
    curl, echo_header, gtlsclient, h3_requests, python_json, start_default, tls_args, CurlResponse,
    Edge, PYTHON_TIMEOUT, REQUEST_TIMEOUT,
};

/// `h3=":PORT"; ma=86400` for edge's QUIC port.
fn expected_alt_svc(edge: &Edge) -> String {
    format!("h3=\":{}\"; ma=86400", edge.h3_addr.port())
}

/// Whether a `Via` header value lists the hop `entry` (e.g. `2 edge`).
fn via_has(values: &[String], entry: &str) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|hop| hop.trim() == entry)
}

/// Checks an `/echo?via=curl` answer relayed by edge for a client speaking
/// `via_version` over `proto` (the scheme edge was reached by).
fn assert_echoed(response: &CurlResponse, edge: &Edge, via_version: &str, proto: &str) {
    assert_eq!(
        response.status, 200,
        "status; headers {:?}",
        response.headers
    );
    let echo = response.json().expect("echo body is JSON");
    assert_eq!(echo["method"], "GET");
    let uri = echo["uri"].as_str().unwrap_or_default();
    assert!(uri.ends_with("/echo?via=curl"), "origin saw uri {uri}");
    assert_eq!(
        echo_header(&echo, "x-test"),
        ["yes"],
        "end-to-end header relayed"
    );
    assert_eq!(echo_header(&echo, "x-forwarded-proto"), [proto]);
    assert_eq!(echo_header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    let via = echo_header(&echo, "via");
    assert!(
        via_has(&via, &format!("{via_version} edge")),
        "request Via {via:?}"
    );
    let upstream_id = echo_header(&echo, "x-request-id");
    assert_eq!(upstream_id.len(), 1, "one x-request-id upstream");
    assert_eq!(
        response.header("x-request-id"),
        Some(upstream_id[0].as_str()),
        "same request id upstream and downstream"
    );
    assert_eq!(
        response.header("alt-svc"),
        Some(expected_alt_svc(edge).as_str())
    );
    assert!(
        response
            .header_all("via")
            .iter()
            .any(|v| v.contains("edge")),
        "response Via {:?}",
        response.header_all("via")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_over_tls_relays_request_and_response_with_alt_svc() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let mut args = tls_args(&edge);
    args.extend(["--http1.1", "-H", "x-test: yes"].map(String::from));
    args.push(format!("{}/echo?via=curl", edge.https_origin()));
    let response = curl(&args).await?;
    assert_eq!(response.http_version, "1.1");
    assert_echoed(&response, &edge, "1.1", "https");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_relays_request_and_response_with_alt_svc() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let mut args = tls_args(&edge);
    args.extend(["--http2", "-H", "x-test: yes"].map(String::from));
    args.push(format!("{}/echo?via=curl", edge.https_origin()));
    let response = curl(&args).await?;
    assert_eq!(response.http_version, "2");
    assert_echoed(&response, &edge, "2", "https");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_relays_request_and_response_with_alt_svc() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let url = format!("http://{}/echo?via=curl", edge.http()?);
    let response = curl(&["--http2-prior-knowledge", "-H", "x-test: yes", &url]).await?;
    assert_eq!(response.http_version, "2");
    assert_echoed(&response, &edge, "2", "http");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_gtlsclient_gets_status_and_body() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let response = gtlsclient(&edge, "/", &[], true, REQUEST_TIMEOUT).await?;
    assert_eq!(
        response.status,
        Some(200),
        "gtlsclient log:\n{}",
        response.output.stderr
    );
    assert_eq!(response.text()?, "hello");
    assert_eq!(origin.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_aioquic_gets_status_and_body() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let spec = serde_json::json!([
        {"path": "/", "headers": []},
        {"path": "/echo?via=aioquic", "headers": [["x-test", "yes"]]},
    ]);
    let results = h3_requests(&edge, &spec).await?;
    assert_eq!(results[0]["status"], 200, "{results}");
    assert_eq!(results[0]["body"], "hello");
    assert_eq!(results[1]["status"], 200, "{results}");
    let echo: serde_json::Value =
        serde_json::from_str(results[1]["body"].as_str().unwrap_or_default())?;
    assert_eq!(echo_header(&echo, "x-test"), ["yes"]);
    assert_eq!(echo_header(&echo, "x-forwarded-proto"), ["https"]);
    let via = echo_header(&echo, "via");
    assert!(via_has(&via, "3 edge"), "request Via {via:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_moves_niquests_session_from_h2_to_h3() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let url = format!("https://127.0.0.1:{}/", edge.https_addr.port());
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    let results = python_json("alt_svc_upgrade.py", &["--ca", &ca, &url], PYTHON_TIMEOUT).await?;
    let (first, second) = (&results[0], &results[1]);
    assert_eq!(first["status"], 200, "{results}");
    assert_eq!(
        first["http_version"], 20,
        "first request over h2: {results}"
    );
    assert_eq!(first["alt_svc"], expected_alt_svc(&edge).as_str());
    assert_eq!(second["status"], 200, "{results}");
    assert_eq!(
        second["http_version"], 30,
        "second request over h3: {results}"
    );
    assert_eq!(second["body"], first["body"]);
    assert_eq!(first["body"], "hello");
    // The move is counted: one client advertised, one came back over QUIC.
    let value = |(v, _): (Option<f64>, String)| v.unwrap_or(0.0);
    assert_eq!(
        value(edge.metric("proxy_alt_svc_clients_total").await?),
        1.0
    );
    assert_eq!(
        value(edge.metric("proxy_alt_svc_advertised_total").await?),
        1.0
    );
    assert_eq!(value(edge.metric("proxy_h3_upgrades_total").await?), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_oversized_header_section_is_refused_and_connection_survives() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    // Twice the default `max_header_bytes` (32768) in one field.
    let spec = serde_json::json!([
        {"path": "/", "big_header_bytes": 65000},
        {"path": "/", "headers": []},
    ]);
    let results = h3_requests(&edge, &spec).await?;
    let (big, next) = (&results[0], &results[1]);
    let refused = big["status"] == 431 || !big["reset"].is_null();
    assert!(refused, "oversized request got {big}");
    assert_eq!(
        next["status"], 200,
        "next request on the same connection: {next}"
    );
    assert_eq!(next["body"], "hello");
    assert_eq!(
        origin.requests(),
        1,
        "only the small request reached the origin"
    );
    Ok(())
}

/// `[alt_svc]` sets the advertised max-age, and `enabled = false` removes the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_max_age_is_configurable_and_can_be_turned_off() -> anyhow::Result<()> {
    let origin = edge_tests::Origin::start().await?;
    let default_section = "enabled = true\nmax_age = \"24h\"";
    for (section, want_ma) in [
        ("enabled = true\nmax_age = \"1h\"", Some(3600)),
        ("enabled = false", None),
    ] {
        let dir = tempfile::tempdir()?;
        let pki = edge_tests::Pki::generate(dir.path())?;
        let toml = edge_tests::EdgeConfig::new(origin.url()).to_toml(&pki);
        assert!(toml.contains(default_section), "harness renders {toml}");
        let toml = toml.replace(default_section, section);
        let edge = Edge::start_with_toml(dir, pki, &toml).await?;
        let response = curl(&[format!("http://{}/", edge.http()?)]).await?;
        assert_eq!(response.status, 200);
        let expected = want_ma.map(|ma| format!("h3=\":{}\"; ma={ma}", edge.h3_addr.port()));
        assert_eq!(
            response.header("alt-svc").map(str::to_owned),
            expected,
            "with [alt_svc] {section}"
        );
    }
    Ok(())
}
