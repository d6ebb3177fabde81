//! PROXY protocol on the TCP listeners (`[proxy_protocol]`): a trusted load
//! balancer's v1 or v2 header names the client the origin sees; a header from
//! anyone else is refused and never believed; a header that never completes is
//! closed within `client.header_read_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edge_tests::{curl, echo_header, Edge, EdgeConfig, Origin};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
/// The bound for anything a test waits on; far above every configured timeout.
const DEADLINE: Duration = Duration::from_secs(10);

async fn start(
    proxy_protocol: &str,
    configure: impl FnOnce(EdgeConfig) -> EdgeConfig,
) -> anyhow::Result<(Origin, Edge)> {
    let origin = Origin::start().await?;
    let config = configure(EdgeConfig::new(origin.url()))
        .section(&format!("[proxy_protocol]\n{proxy_protocol}\n"));
    let edge = Edge::start(&config).await?;
    Ok((origin, edge))
}

/// A TCP connection to `to` from `from` (a loopback address of the test's choosing).
async fn connect_from(from: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse()?)?;
    Ok(socket.connect(to).await?)
}

/// Writes `prefix` then `REQUEST` and reads until edge closes (or `DEADLINE`).
async fn exchange(mut stream: TcpStream, prefix: &[u8]) -> anyhow::Result<String> {
    stream.write_all(prefix).await?;
    // A refused connection may be closed before the request is written.
    let _ = stream.write_all(REQUEST).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    match read {
        Ok(Ok(_)) => {}
        // A reset after the refusal: what was read before it stands.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => anyhow::bail!("edge neither answered nor closed within {DEADLINE:?}"),
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}

/// The X-Forwarded-For the echo origin saw, from a whole HTTP/1.1 answer.
fn forwarded_for(answer: &str) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "answer: {answer}");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no body")?;
    let echo: serde_json::Value = serde_json::from_str(body).context("echo is JSON")?;
    Ok(echo_header(&echo, "x-forwarded-for"))
}

/// A v2 PROXY header over TCP/IPv4 from `src` with a few TLVs (authority, a
/// unique id, padding), built by hand so the test does not share edge's parser.
fn v2_header(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut tlvs = Vec::new();
    for (kind, value) in [
        (0x02u8, &b"api.example"[..]),
        (0x05, &b"lb-conn-7f3a"[..]),
        (0x04, &[0u8; 24][..]),
    ] {
        tlvs.push(kind);
        tlvs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        tlvs.extend_from_slice(value);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(&tlvs);
    h
}

async fn metric(edge: &Edge, result: &str) -> anyhow::Result<f64> {
    let series = format!("proxy_proxy_protocol_total{{result=\"{result}\"}}");
    Ok(edge.metric(&series).await?.0.unwrap_or(0.0))
}

/// A request on its own connection from 127.0.0.1 without any header.
async fn canary(edge: &Edge) -> anyhow::Result<()> {
    let response = curl(&[format!("http://{}/echo", edge.http()?)]).await?;
    anyhow::ensure!(response.status == 200, "canary got {}", response.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_tcp4_and_tcp6_from_a_trusted_peer_name_the_client() -> anyhow::Result<()> {
    let (_origin, edge) = start("trusted = [\"127.0.0.1/32\"]", |c| c).await?;
    let v4 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n";
    let answer = exchange(TcpStream::connect(edge.http()?).await?, v4).await?;
    assert_eq!(forwarded_for(&answer)?, ["203.0.113.7"]);
    let v6 = b"PROXY TCP6 2001:db8::42 ::1 40001 80\r\n";
    let answer = exchange(TcpStream::connect(edge.http()?).await?, v6).await?;
    assert_eq!(forwarded_for(&answer)?, ["2001:db8::42"]);
    assert_eq!(metric(&edge, "v1").await?, 2.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_with_tlvs_from_a_trusted_peer_names_the_client() -> anyhow::Result<()> {
    let (_origin, edge) = start("trusted = [\"127.0.0.0/8\"]", |c| c).await?;
    let header = v2_header([198, 51, 100, 23], 51000);
    let answer = exchange(TcpStream::connect(edge.http()?).await?, &header).await?;
    assert_eq!(forwarded_for(&answer)?, ["198.51.100.23"]);
    assert_eq!(metric(&edge, "v2").await?, 1.0);
    Ok(())
}

/// The header comes before the TLS ClientHello; the handshake and the request
/// follow on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_before_tls_names_the_client() -> anyhow::Result<()> {
    let (_origin, edge) = start("trusted = [\"127.0.0.1/32\"]", |c| c).await?;
    let mut tcp = TcpStream::connect(edge.https_addr).await?;
    tcp.write_all(&v2_header([192, 0, 2, 77], 52000)).await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(
        &edge.pki.ca_cert,
    )?)?;
    // An explicit provider: edge's aws-lc-rs feature puts a second one in rustls.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut stream = tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await??;
    stream.write_all(REQUEST).await?;
    let mut received = Vec::new();
    // edge closes TLS without close_notify after `Connection: close` on some
    // paths; what was read is the whole answer either way.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await?;
    let answer = String::from_utf8_lossy(&received);
    assert_eq!(forwarded_for(&answer)?, ["192.0.2.77"]);
    Ok(())
}

/// Only 127.0.0.2 is the load balancer. A client on 127.0.0.1 that sends a
/// header claiming another address is refused on both listeners, and the origin
/// never hears of the claimed address; the same client without a header is
/// served as itself; the real load balancer on 127.0.0.2 is believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_peer_is_refused() -> anyhow::Result<()> {
    let (origin, edge) = start("trusted = [\"127.0.0.2/32\"]", |c| c).await?;
    let spoof = b"PROXY TCP4 203.0.113.66 127.0.0.1 40000 80\r\n";
    let answer = exchange(connect_from("127.0.0.1", edge.http()?).await?, spoof).await?;
    assert!(answer.is_empty(), "a spoofed header was answered: {answer}");
    let v2 = v2_header([203, 0, 113, 66], 40000);
    let answer = exchange(connect_from("127.0.0.1", edge.https_addr).await?, &v2).await?;
    assert!(answer.is_empty(), "a spoofed header was answered: {answer}");
    assert_eq!(origin.requests(), 0, "a spoofed request reached the origin");
    assert_eq!(metric(&edge, "untrusted").await?, 2.0);

    let answer = exchange(connect_from("127.0.0.1", edge.http()?).await?, b"").await?;
    assert_eq!(forwarded_for(&answer)?, ["127.0.0.1"]);
    let answer = exchange(connect_from("127.0.0.2", edge.http()?).await?, spoof).await?;
    assert_eq!(forwarded_for(&answer)?, ["203.0.113.66"]);
    assert_eq!(origin.requests(), 2);
    Ok(())
}

/// `required` (the default): a trusted peer's connection without a header is
/// closed; with `required = false` it is served as the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_without_a_header_is_refused_when_required() -> anyhow::Result<()> {
    let (origin, edge) = start("trusted = [\"127.0.0.1/32\"]", |c| c).await?;
    let answer = exchange(TcpStream::connect(edge.http()?).await?, b"").await?;
    assert!(answer.is_empty(), "answered without a header: {answer}");
    assert_eq!(origin.requests(), 0);
    assert_eq!(metric(&edge, "missing").await?, 1.0);
    drop(edge);

    let (_origin, edge) = start("trusted = [\"127.0.0.1/32\"]\nrequired = false", |c| c).await?;
    let answer = exchange(TcpStream::connect(edge.http()?).await?, b"").await?;
    assert_eq!(forwarded_for(&answer)?, ["127.0.0.1"]);
    Ok(())
}

/// A trusted peer that starts a header and never finishes it (v1 without its
/// CRLF, v2 short of its length), or announces a v2 header over the size limit:
/// each is closed, within the timeout, while a canary on its own connection
/// keeps getting 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_oversized_headers_are_closed_within_the_timeout() -> anyhow::Result<()> {
    const SLOW: usize = 40;
    let (_origin, edge) = start("trusted = [\"127.0.0.0/8\"]\nrequired = false", |c| {
        c.client_setting("header_read_timeout", "\"1s\"")
    })
    .await?;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut s = TcpStream::connect(edge.http()?).await?;
        if i % 2 == 0 {
            s.write_all(b"PROXY TCP4 203.0.113.9 127.0").await?;
        } else {
            s.write_all(&v2_header([203, 0, 113, 9], 1)[..20]).await?;
        }
        slow.push(s);
    }
    canary(&edge).await?;
    let rss = edge.rss_kib()?;
    for mut s in slow {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, s.read_to_end(&mut sink)).await;
        anyhow::ensure!(
            closed.is_ok(),
            "a slow PROXY header was kept open past {DEADLINE:?}"
        );
        assert!(sink.is_empty(), "a slow header was answered");
    }
    let closed_after = started.elapsed();
    eprintln!(
        "{SLOW} slow PROXY headers closed {closed_after:?} after they started; RSS {rss} KiB"
    );
    assert_eq!(metric(&edge, "timeout").await?, SLOW as f64);

    let mut huge = v2_header([203, 0, 113, 9], 1);
    huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let answer = exchange(TcpStream::connect(edge.http()?).await?, &huge).await?;
    assert!(
        answer.is_empty(),
        "an oversized header was answered: {answer}"
    );
    assert_eq!(metric(&edge, "too_large").await?, 1.0);
    canary(&edge).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_check_refuses_bad_proxy_protocol_settings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("edge.toml");
    let toml = "[pools.default]\nendpoints = [\"127.0.0.1:9\"]\n\n[proxy_protocol]\ntrusted = [\"10.0.0.0/33\"]\nmax_header_bytes = 100\nrequierd = true\n";
    std::fs::write(&path, toml)?;
    let out =
        edge_tests::run_edge(["check", "-c", path.to_str().context("path")?], DEADLINE).await?;
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, Some(0), "edge check accepted it:\n{text}");
    for want in [
        "proxy_protocol.trusted",
        "proxy_protocol.max_header_bytes",
        "proxy_protocol.requierd",
    ] {
        assert!(text.contains(want), "{want} not named:\n{text}");
    }
    Ok(())
}
