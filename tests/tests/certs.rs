//! Certificates that change under a running edge: SIGHUP re-reads the files and
//! new handshakes (TCP and QUIC) get the new certificate while open connections
//! keep theirs; a bad file is refused and the old certificate serves on. Without
//! configured certificates, the local CA in the state dir survives restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edge_tests::{
    curl, h3_requests_sni, python_json, toml_path, wait_until, Edge, EdgeConfig, Origin, Pki,
    PYTHON_TIMEOUT,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn sighup(edge: &Edge) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &edge.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

/// A TLS connection to edge's TCP listener as `localhost`, trusting `ca`.
async fn connect(edge: &Edge, ca: &Path) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(edge.https_addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake with edge")?;
    Ok(tls)
}

/// The certificate the server sent on `tls`.
fn served(tls: &TlsStream<TcpStream>) -> anyhow::Result<CertificateDer<'static>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .context("no peer certificate")
}

/// One keep-alive GET / on `tls`; the status line's code.
async fn get_on(tls: &mut TlsStream<TcpStream>) -> anyhow::Result<u16> {
    get_host_on(tls, "localhost").await
}

/// One keep-alive GET / for `host` on `tls`; the status line's code.
async fn get_host_on(tls: &mut TlsStream<TcpStream>, host: &str) -> anyhow::Result<u16> {
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The origin answers with a Content-Length body; read until the headers and
    // that many bytes have come.
    loop {
        let n = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "edge closed the connection");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let code = head.split_whitespace().nth(1).context("no status")?;
                return Ok(code.parse()?);
            }
        }
    }
}

fn der_of(pem: &Path) -> anyhow::Result<CertificateDer<'static>> {
    Ok(CertificateDer::from_pem_file(pem)?)
}

/// The base64 body of a PEM certificate file (what h3_requests.py reports as `der`).
fn pem_body(pem: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(pem)?
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect())
}

/// The certificate edge's QUIC listener serves to `localhost`, as base64 DER.
async fn served_h3(edge: &Edge) -> anyhow::Result<String> {
    let spec = serde_json::json!([{"path": "/", "headers": []}]);
    let out = h3_requests_sni(edge, "localhost", true, &spec).await?;
    anyhow::ensure!(out["results"][0]["status"] == 200, "h3: {out}");
    out["peer_certificate"]["der"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no certificate in {out}"))
}

/// One slow HTTP/3 request (`/slow/2000`) with the certificate it was served.
fn h3_slow(
    edge: &Edge,
) -> impl std::future::Future<Output = anyhow::Result<serde_json::Value>> + Send + 'static {
    let spec = serde_json::json!([{"path": "/slow/2000", "headers": []}]).to_string();
    let args = vec![
        "--ca".to_owned(),
        edge.pki.ca_cert.to_string_lossy().into_owned(),
        "--host".to_owned(),
        edge.h3_addr.ip().to_string(),
        "--port".to_owned(),
        edge.h3_addr.port().to_string(),
        "--spec".to_owned(),
        spec,
        "--server-name".to_owned(),
        "localhost".to_owned(),
        "--peer-cert".to_owned(),
    ];
    async move { python_json("h3_requests.py", &args, PYTHON_TIMEOUT).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_renewed_certificate_on_tcp_and_quic_and_refuses_a_bad_one(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    let (cert, ca) = (edge.pki.leaf_cert.clone(), edge.pki.ca_cert.clone());
    let old = der_of(&cert)?;
    let old_b64 = pem_body(&cert)?;

    // The expiry metric reads notAfter from the certificate (rcgen's default,
    // 4096-01-01T00:00:00Z).
    let series = format!(
        "proxy_cert_expiry_timestamp_seconds{{cert=\"{}\"}}",
        cert.display()
    );
    let (at, page) = edge.metric(&series).await?;
    assert_eq!(at, Some(67_090_118_400.0), "{series} in:\n{page}");

    let mut open = connect(&edge, &ca).await?;
    assert_eq!(served(&open)?, old);
    assert_eq!(get_on(&mut open).await?, 200);
    assert_eq!(served_h3(&edge).await?, pem_body(&cert)?);

    // An HTTP/3 request in flight across the reload (the origin holds it 2 s).
    let in_flight = {
        let h3 = h3_slow(&edge);
        tokio::spawn(h3)
    };
    wait_until(
        "slow h3 request at the origin",
        Duration::from_secs(20),
        || origin.requests() == 3,
    )
    .await?;

    // Renewed in place, as certbot or an operator would: same paths, new serial.
    let dir = cert.parent().context("leaf dir")?.to_path_buf();
    edge.pki
        .issue_leaf(&dir, "leaf", &["localhost"])
        .context("renewing the leaf")?;
    let new = der_of(&cert)?;
    assert_ne!(new, old);
    sighup(&edge)?;
    wait_until("reload logged", Duration::from_secs(10), || {
        edge.log().contains("certificate generation 1")
    })
    .await?;

    let fresh = connect(&edge, &ca).await?;
    assert_eq!(
        served(&fresh)?,
        new,
        "a new TCP handshake gets the new certificate"
    );
    assert_eq!(served_h3(&edge).await?, pem_body(&cert)?, "so does QUIC");
    // The connections opened before the reload keep serving their own name.
    assert_eq!(get_on(&mut open).await?, 200);
    let slow = in_flight.await??;
    assert_eq!(slow["results"][0]["status"], 200, "{slow}");
    assert_eq!(
        slow["peer_certificate"]["der"].as_str(),
        Some(old_b64.as_str()),
        "the QUIC connection kept the certificate it was shown"
    );

    // A broken file is refused whole; the certificate from before keeps serving.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n")?;
    sighup(&edge)?;
    wait_until("refusal logged", Duration::from_secs(10), || {
        edge.log().contains("reload refused: tls.certificates")
    })
    .await?;
    let log = edge.log();
    let line = log
        .lines()
        .find(|l| l.contains("reload refused: tls.certificates"))
        .unwrap_or_default();
    assert!(
        line.contains("leaf.pem"),
        "the refusal names the file: {line}"
    );
    let after = connect(&edge, &ca).await?;
    assert_eq!(served(&after)?, new);
    assert_eq!(edge.metric(&series).await?.0, Some(67_090_118_400.0));
    assert_eq!(get_on(&mut open).await?, 200);
    Ok(())
}

/// A config with no `[[tls.certificates]]` and `state_dir` at `state`.
fn local_ca_config(origin: &Origin, pki: &Pki, state: &Path) -> String {
    EdgeConfig::new(origin.url())
        .top_setting("state_dir", &toml_path(state))
        .to_toml(pki)
        .lines()
        .filter(|l| {
            !(l.starts_with("[[tls.certificates]]")
                || l.starts_with("cert = ")
                || l.starts_with("key = "))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

async fn curl_with_ca(edge: &Edge, ca: &Path) -> anyhow::Result<u16> {
    let port = edge.https_addr.port();
    let out = curl(&[
        "--cacert".to_owned(),
        ca.to_string_lossy().into_owned(),
        "--resolve".to_owned(),
        format!("localhost:{port}:127.0.0.1"),
        format!("https://localhost:{port}/"),
    ])
    .await?;
    Ok(out.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_survives_a_restart_and_curl_trusts_it() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let state = tempfile::tempdir()?;
    let ca = state.path().join("local-ca/ca.pem");

    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = local_ca_config(&origin, &pki, state.path());
    let first = Edge::start_with_toml(dir, pki, &toml).await?;
    let log = first.log();
    assert!(
        log.contains(&format!("trust {}", ca.display())) && log.contains("(generated)"),
        "the CA path is logged:\n{log}"
    );
    assert_eq!(curl_with_ca(&first, &ca).await?, 200);
    let ca_pem = std::fs::read(&ca)?;
    drop(first);

    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = local_ca_config(&origin, &pki, state.path());
    let second = Edge::start_with_toml(dir, pki, &toml).await?;
    assert!(second.log().contains("(kept)"), "{}", second.log());
    assert_eq!(std::fs::read(&ca)?, ca_pem, "the same CA after a restart");
    assert_eq!(curl_with_ca(&second, &ca).await?, 200);
    Ok(())
}

/// A connection reused for another name its certificate covered (RFC 9110 4.3.3)
/// is held to its own SNI name once a reload replaced that certificate: the other
/// name gets 421 and a new connection, shown the new certificate, serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_swap_an_old_connection_serves_only_its_own_name() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let both = pki.issue_leaf(dir.path(), "both", &["localhost", "b.test"])?;
    let config = EdgeConfig::new(origin.url()).certificate(both.clone());
    let edge = Edge::start_with_pki(dir, pki, &config).await?;
    let ca = edge.pki.ca_cert.clone();

    let mut old = connect(&edge, &ca).await?;
    assert_eq!(get_host_on(&mut old, "b.test").await?, 200);
    let dir = both.cert.parent().context("leaf dir")?.to_path_buf();
    edge.pki
        .issue_leaf(&dir, "both", &["localhost", "b.test"])?;
    sighup(&edge)?;
    wait_until("reload logged", Duration::from_secs(10), || {
        edge.log().contains("certificate generation 1")
    })
    .await?;
    assert_eq!(get_host_on(&mut old, "localhost").await?, 200);
    assert_eq!(get_host_on(&mut old, "b.test").await?, 421);
    let mut fresh = connect(&edge, &ca).await?;
    assert_eq!(get_host_on(&mut fresh, "b.test").await?, 200);
    Ok(())
}
