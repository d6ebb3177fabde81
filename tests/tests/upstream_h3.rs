//! HTTP/3 to upstream (`protocol = "h3"`): edge in front of a second edge that
//! serves HTTP/3 (to an in-process origin), one QUIC connection shared by the
//! requests; and the fallback to h2 over TCP, remembered, when the endpoint's
//! UDP port answers nothing.

use std::time::Duration;

use edge_tests::{
    curl, run_edge, toml_path, Edge, EdgeConfig, KeepAlive, Origin, OriginOptions, OriginTls, Pki,
};
use http::Method;

const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// An origin, a back edge serving it over HTTP/3 (and TLS), and a front edge
/// whose pool `default` speaks h3 to the back edge, trusting its CA.
async fn h3_chain() -> anyhow::Result<(Origin, Edge, Edge)> {
    let origin = Origin::start().await?;
    let back = Edge::start(&EdgeConfig::new(origin.url())).await?;
    let config = EdgeConfig::new(format!("https://localhost:{}", back.h3_addr.port()))
        .protocol("h3")
        .pool_setting("ca", &toml_path(&back.pki.ca_cert));
    let front = Edge::start(&config).await?;
    Ok((origin, back, front))
}

/// A back edge serving `origin` on `port` (TCP and UDP), with the certificate
/// of `pki`.
async fn back_edge_on(
    port: u16,
    origin: &Origin,
    dir: tempfile::TempDir,
    pki: Pki,
) -> anyhow::Result<Edge> {
    let toml = EdgeConfig::new(origin.url()).to_toml(&pki).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let back = Edge::start_with_toml(dir, pki, &toml).await?;
    anyhow::ensure!(back.https_addr.port() == port, "back edge not on {port}");
    Ok(back)
}

/// The value of `series` on `edge`'s /metrics (0 when absent), with the page.
async fn metric(edge: &Edge, series: &str) -> anyhow::Result<(f64, String)> {
    let (value, page) = edge.metric(series).await?;
    Ok((value.unwrap_or(0.0), page))
}

const BACK_H3_200: &str = r#"proxy_requests_total{backend="default",protocol="h3",status="200"}"#;
const FALLBACKS: &str = r#"proxy_upstream_h3_fallbacks_total{backend="default"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_pool_sends_requests_over_quic_sharing_one_connection() -> anyhow::Result<()> {
    let (origin, back, front) = h3_chain().await?;
    // curl's Host (127.0.0.1:PORT) is one the back edge's certificate covers:
    // edge answers 421 to an authority its connection's certificate does not.
    let url = format!("http://{}/echo", front.http()?);
    const N: usize = 20;
    for i in 0..N {
        let response = curl(&[url.as_str()]).await?;
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        let echo = response.json()?;
        assert_eq!(echo["method"], "GET", "request {i}: {echo}");
    }
    assert_eq!(origin.requests(), N as u64);
    // The back edge took every one of them over HTTP/3...
    let (h3, page) = metric(&back, BACK_H3_200).await?;
    assert_eq!(h3, N as f64, "back edge metrics:\n{page}");
    // ...on one QUIC connection, still open, and none opened and closed meanwhile.
    let (open, page) = metric(&back, r#"proxy_open_connections{protocol="h3"}"#).await?;
    assert_eq!(open, 1.0, "back edge metrics:\n{page}");
    let (ended, page) = metric(&back, "proxy_quic_rtt_seconds_count").await?;
    assert_eq!(ended, 0.0, "QUIC connections ended:\n{page}");
    let (fallbacks, page) = metric(&front, FALLBACKS).await?;
    assert_eq!(fallbacks, 0.0, "front edge fell back:\n{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_pool_carries_a_1_mib_post_body_both_ways_intact() -> anyhow::Result<()> {
    let (_origin, back, front) = h3_chain().await?;
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = front.dir.path().join("upload.bin");
    std::fs::write(&file, &body)?;
    let response = curl(&[
        "--data-binary".to_owned(),
        format!("@{}", file.display()),
        "-H".to_owned(),
        "content-type: application/octet-stream".to_owned(),
        format!("http://{}/mirror", front.http()?),
    ])
    .await?;
    assert_eq!(response.status, 200, "{}", response.log);
    assert_eq!(response.body.len(), body.len(), "{}", response.log);
    assert!(response.body == body, "the body came back altered");
    let (h3, page) = metric(&back, BACK_H3_200).await?;
    assert_eq!(h3, 1.0, "back edge metrics:\n{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_pool_falls_back_to_h2_when_the_udp_port_is_closed_and_remembers_it(
) -> anyhow::Result<()> {
    // A TLS origin over TCP only: nothing listens on its UDP port.
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let origin = Origin::start_tls(
        OriginOptions::default(),
        OriginTls::with_alpn(&pki.leaf(), &["h2", "http/1.1"]),
    )
    .await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h3")
        .pool_setting("ca", &toml_path(&pki.ca_cert))
        .pool_setting("connect_timeout", "\"500ms\"");
    let front = Edge::start_with_pki(dir, pki, &config).await?;
    let mut client = KeepAlive::new(front.http()?);
    for i in 0..5 {
        let reply = client
            .request(&Method::GET, "/echo", &format!("fallback-{i}"))
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        let echo: serde_json::Value = serde_json::from_str(&reply.body)?;
        assert_eq!(
            echo["version"], "HTTP/2.0",
            "request {i}: origin saw {echo}"
        );
        // One failed QUIC attempt, on the first request; the others went
        // straight to TCP.
        let (fallbacks, page) = metric(&front, FALLBACKS).await?;
        assert_eq!(fallbacks, 1.0, "after request {i}:\n{page}");
    }
    assert_eq!(origin.requests(), 5);
    assert_eq!(origin.connections(), 1, "the h2 connection is shared");
    let log = front.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("QUIC to the endpoint failed"))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("QUIC handshake timed out after 500ms")
            && warned[0].contains(&format!("localhost:{}", origin.addr.port())),
        "the warning names the endpoint and what failed: {}",
        warned[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_pool_with_a_cleartext_endpoint_is_refused_with_key_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = [
        "listen = \"127.0.0.1:0\"".to_owned(),              // 1
        "[[tls.certificates]]".to_owned(),                  // 2
        format!("cert = {}", toml_path(&pki.leaf_cert)),    // 3
        format!("key = {}", toml_path(&pki.leaf_key)),      // 4
        "[[routes]]".to_owned(),                            // 5
        "pool = \"default\"".to_owned(),                    // 6
        "[pools.default]".to_owned(),                       // 7
        "endpoints = [\"http://127.0.0.1:9\"]".to_owned(),  // 8
        "protocol = \"h3\"".to_owned(),                     // 9
        "[pools.other]".to_owned(),                         // 10
        "endpoints = [\"https://127.0.0.1:9\"]".to_owned(), // 11
        "protocol = \"h4\"".to_owned(),                     // 12
    ]
    .join("\n")
        + "\n";
    let file = dir.path().join("h3.toml");
    std::fs::write(&file, toml)?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), file.as_os_str()],
        RUN_TIMEOUT,
    )
    .await?;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let printed = format!("{}{}", out.stdout, out.stderr);
    let file = file.display().to_string();
    for (line, path, reason) in [
        (9, "pools.default.protocol", "must be https://"),
        (
            12,
            "pools.other.protocol",
            "expected \"h2\", \"h1\" or \"h3\"",
        ),
    ] {
        assert!(
            printed
                .lines()
                .any(|l| l.starts_with(&format!("{file}:{line}: {path}: ")) && l.contains(reason)),
            "no `{file}:{line}: {path}: ...{reason}...` line in:\n{printed}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_pool_resets_the_upstream_stream_when_the_clients_body_breaks_off() -> anyhow::Result<()>
{
    use tokio::io::AsyncWriteExt as _;
    let (origin, back, front) = h3_chain().await?;
    // A chunked upload (no length anyone could check) that stops after 64 KiB
    // when the client goes away.
    let mut client = tokio::net::TcpStream::connect(front.http()?).await?;
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await?;
    client.write_all(b"10000\r\n").await?;
    client.write_all(&[b'x'; 0x10000]).await?;
    client.write_all(b"\r\n").await?;
    edge_tests::wait_until("the upload to reach the origin", RUN_TIMEOUT, || {
        origin.requests() == 1
    })
    .await?;
    drop(client);
    // The back edge ends the exchange one way or another; what it must never
    // see is the stream ending cleanly, a complete 64 KiB body the origin
    // would answer 200 to.
    let page = edge_tests::eventually(
        "the back edge to finish the request",
        RUN_TIMEOUT,
        || async {
            let (_, page) = back.metric("proxy_requests_total").await?;
            Ok(page
                .lines()
                .any(|l| l.starts_with(r#"proxy_requests_total{backend="default",protocol="h3""#))
                .then_some(page))
        },
    )
    .await?;
    let (ok, _) = metric(&back, BACK_H3_200).await?;
    assert_eq!(
        ok, 0.0,
        "the truncated upload looked complete upstream:\n{page}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_was_down_is_not_marked_quic_broken() -> anyhow::Result<()> {
    // A port nothing listens on, TCP or UDP, for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let config = EdgeConfig::new(format!("https://localhost:{port}"))
        .protocol("h3")
        .pool_setting("ca", &toml_path(&pki.ca_cert))
        .pool_setting("connect_timeout", "\"300ms\"")
        .pool_setting("max_retries", "0");
    let front = Edge::start(&config).await?;
    let url = format!("http://{}/echo", front.http()?);
    let down = curl(&[url.as_str()]).await?;
    assert_eq!(down.status, 502, "{}", down.text());
    // Both QUIC and TCP failed: the endpoint was down, QUIC is not to blame.
    let (fallbacks, page) = metric(&front, FALLBACKS).await?;
    assert_eq!(fallbacks, 0.0, "{page}");
    // The endpoint comes up (an edge serving h3 and h2 on that port, with a
    // certificate of the CA the front trusts): the next request goes over QUIC.
    let origin = Origin::start().await?;
    let back = back_edge_on(port, &origin, dir, pki).await?;
    let up = curl(&[url.as_str()]).await?;
    assert_eq!(up.status, 200, "{}", up.text());
    let (h3, page) = metric(&back, BACK_H3_200).await?;
    assert_eq!(h3, 1.0, "the request did not come over HTTP/3:\n{page}");
    let (fallbacks, page) = metric(&front, FALLBACKS).await?;
    assert_eq!(fallbacks, 0.0, "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_endpoint_gets_a_new_quic_connection_not_a_hung_request() -> anyhow::Result<()>
{
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (dir1, dir2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (pki1, pki2) = (Pki::generate(dir1.path())?, Pki::generate(dir2.path())?);
    // The front trusts both back edges' CAs.
    let front_dir = tempfile::tempdir()?;
    let bundle = front_dir.path().join("cas.pem");
    std::fs::write(
        &bundle,
        [std::fs::read(&pki1.ca_cert)?, std::fs::read(&pki2.ca_cert)?].concat(),
    )?;
    let origin = Origin::start().await?;
    let back = back_edge_on(port, &origin, dir1, pki1).await?;
    let config = EdgeConfig::new(format!("https://localhost:{port}"))
        .protocol("h3")
        .pool_setting("ca", &toml_path(&bundle));
    let front = Edge::start(&config).await?;
    let url = format!("http://{}/echo", front.http()?);
    let first = curl(&[url.as_str()]).await?;
    assert_eq!(first.status, 200, "{}", first.text());
    // The endpoint restarts: its new process knows nothing of the pooled QUIC
    // connection, and (unlike TCP) sends nothing the old one could act on.
    drop(back);
    let back = back_edge_on(port, &origin, dir2, pki2).await?;
    // Keep-alives find the old connection dead within seconds (not the 30 s
    // response timeout); the GET is then sent again on a new one.
    let again = edge_tests::curl_timeout(&[url.as_str()], Duration::from_secs(25)).await?;
    assert_eq!(again.status, 200, "{}\n{}", again.text(), front.log());
    let (h3, page) = metric(&back, BACK_H3_200).await?;
    assert_eq!(h3, 1.0, "the new back edge got it over HTTP/3:\n{page}");
    Ok(())
}
