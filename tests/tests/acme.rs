//! ACME against a real Pebble (Debian's `pebble`): an edge with no certificate
//! orders one by TLS-ALPN-01 or HTTP-01 and serves it on h1, h2 and h3 without
//! a restart; a restart serves the stored certificate without a new order; a
//! renewal swaps it in place while open connections keep serving; two edges
//! sharing Redis make one order; an unreachable directory leaves the local
//! CA's certificate serving, counted as failed orders retried with back-off.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use edge_tests::pebble::{free_tcp_port, DOMAIN};
use edge_tests::{
    curl, eventually, h3_requests_sni, run_edge, toml_path, toml_str, Edge, Origin, Pebble, Pki,
};

/// An order against Pebble (validation included) is a few seconds; this bounds it.
const ORDER_DEADLINE: Duration = Duration::from_secs(90);

/// Loopback ports for an edge (TCP+UDP for TLS and QUIC, TCP for plaintext),
/// held until dropped so that nothing started meanwhile (Pebble, dnsmasq) is
/// given one of them.
struct Ports {
    tls: u16,
    http: u16,
    _held: (UdpSocket, TcpListener, TcpListener),
}

fn reserve() -> anyhow::Result<Ports> {
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let tls = udp.local_addr()?.port();
        let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, tls)) else {
            continue;
        };
        let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let http = plain.local_addr()?.port();
        return Ok(Ports {
            tls,
            http,
            _held: (udp, tcp, plain),
        });
    }
    anyhow::bail!("no port free for both UDP and TCP")
}

/// An edge config with no certificate: the local CA serves until ACME's arrives.
fn edge_toml(origin: &Origin, tls_port: u16, http_port: u16, acme: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{tls_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
         admin = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"default\"\n\n\
         [pools.default]\nendpoints = [{}]\n\n[log]\naccess = \"off\"\n\n\
         [drain]\ndelay = \"0s\"\n\n{acme}",
        toml_str(&origin.url())
    )
}

async fn start_edge(toml: &str) -> anyhow::Result<Edge> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    Edge::start_with_toml(dir, pki, toml).await
}

/// `proxy_acme_orders_total{result}`, 0 when absent.
async fn orders(edge: &Edge, result: &str) -> anyhow::Result<f64> {
    let series = format!("proxy_acme_orders_total{{result=\"{result}\"}}");
    Ok(edge.metric(&series).await?.0.unwrap_or(0.0))
}

/// Waits for the first successful order.
async fn ordered(edge: &Edge) -> anyhow::Result<()> {
    eventually("a certificate from pebble", ORDER_DEADLINE, || async {
        anyhow::ensure!(
            orders(edge, "error").await? == 0.0,
            "an order failed:\n{}",
            edge.log()
        );
        Ok((orders(edge, "ok").await? >= 1.0).then_some(()))
    })
    .await
}

/// curl over `version` (`--http1.1`, `--http2`) to `domain` at edge's TLS
/// port, trusting only `root`: the status and the HTTP version spoken.
async fn get(
    edge: &Edge,
    domain: &str,
    root: &Path,
    version: &str,
) -> anyhow::Result<(u16, String)> {
    let port = edge.https_addr.port();
    let resp = curl(&[
        "-sS".to_owned(),
        version.to_owned(),
        "--cacert".to_owned(),
        root.to_string_lossy().into_owned(),
        "--resolve".to_owned(),
        format!("{domain}:{port}:127.0.0.1"),
        format!("https://{domain}:{port}/"),
    ])
    .await?;
    Ok((resp.status, resp.http_version))
}

/// h1, h2 and h3 requests for `domain`, each trusting only Pebble's root.
async fn serves_on_every_protocol(
    edge: &mut Edge,
    domain: &str,
    root: &Path,
) -> anyhow::Result<()> {
    assert_eq!(
        get(edge, domain, root, "--http1.1").await?,
        (200, "1.1".to_owned())
    );
    assert_eq!(
        get(edge, domain, root, "--http2").await?,
        (200, "2".to_owned())
    );
    edge.pki.ca_cert = root.to_path_buf();
    let spec = serde_json::json!([{"path": "/", "headers": []}]);
    let out = h3_requests_sni(edge, domain, true, &spec).await?;
    assert_eq!(out["results"][0]["status"], 200, "h3: {out}");
    Ok(())
}

/// A keep-alive TLS connection to `domain` at edge's TLS port, trusting only
/// `root`, with the certificate it was shown.
async fn connect(
    edge: &Edge,
    domain: &str,
    root: &Path,
) -> anyhow::Result<(TlsStream<TcpStream>, CertificateDer<'static>)> {
    connect_alpn(edge, domain, root, b"http/1.1").await
}

/// [`connect`] offering only the ALPN protocol `alpn`.
async fn connect_alpn(
    edge: &Edge,
    domain: &str,
    root: &Path,
    alpn: &[u8],
) -> anyhow::Result<(TlsStream<TcpStream>, CertificateDer<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(edge.https_addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(domain.to_owned())?, tcp)
        .await
        .context("TLS handshake with edge")?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .context("no peer certificate")?;
    Ok((tls, cert))
}

/// One keep-alive `GET /` on `tls`: its status code (the origin's bodies are
/// small, so the head and body come within a few reads).
async fn get_on(tls: &mut TlsStream<TcpStream>, domain: &str) -> anyhow::Result<u16> {
    let request = format!("GET / HTTP/1.1\r\nhost: {domain}\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "edge closed the connection");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .context("no content-length")?;
        if body.len() >= len {
            let code = head.split(' ').nth(1).context("no status")?;
            return Ok(code.parse()?);
        }
    }
}

/// A Pebble validating on fresh edge ports, an origin, and an edge ordering
/// `domain` by `challenge`, already serving.
async fn ordering_edge(
    domain: &str,
    challenge: &str,
    extra: &str,
) -> anyhow::Result<(Pebble, Origin, Edge)> {
    let ports = reserve()?;
    let pebble = Pebble::start(ports.http, ports.tls).await?;
    let origin = Origin::start().await?;
    let acme = pebble.acme_section(&[domain], challenge) + extra;
    let (tls_port, http_port) = (ports.tls, ports.http);
    drop(ports);
    let edge = start_edge(&edge_toml(&origin, tls_port, http_port, &acme)).await?;
    Ok((pebble, origin, edge))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_is_obtained_and_served_on_h1_h2_h3() -> anyhow::Result<()> {
    let domain = format!("alpn.{DOMAIN}");
    let (pebble, _origin, mut edge) = ordering_edge(&domain, "tls-alpn-01", "").await?;
    ordered(&edge).await?;
    serves_on_every_protocol(&mut edge, &domain, &pebble.root).await?;
    // The expiry gauge names the ACME certificate.
    let series = format!("proxy_cert_expiry_timestamp_seconds{{cert=\"acme:{domain}\"}}");
    let (expiry, page) = edge.metric(&series).await?;
    assert!(expiry.is_some_and(|t| t > 1.7e9), "{series} in:\n{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_certificate_is_obtained_and_served_on_h1_h2_h3() -> anyhow::Result<()> {
    let domain = format!("http.{DOMAIN}");
    let (pebble, _origin, mut edge) = ordering_edge(&domain, "http-01", "").await?;
    ordered(&edge).await?;
    serves_on_every_protocol(&mut edge, &domain, &pebble.root).await?;
    // With ACME on, plaintext requests are redirected by default.
    let http = edge.http()?;
    let resp = curl(&[
        "-sS".to_owned(),
        "--resolve".to_owned(),
        format!("{domain}:{}:127.0.0.1", http.port()),
        format!("http://{domain}:{}/page", http.port()),
    ])
    .await?;
    assert_eq!(resp.status, 308);
    let https = edge.https_addr.port();
    assert_eq!(
        resp.header("location"),
        Some(format!("https://{domain}:{https}/page").as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_stored_certificate_without_ordering() -> anyhow::Result<()> {
    let domain = format!("restart.{DOMAIN}");
    let storage = tempfile::tempdir()?;
    let extra = format!("storage = {}\n", toml_path(storage.path()));
    let (pebble, origin, mut first) = ordering_edge(&domain, "tls-alpn-01", &extra).await?;
    ordered(&first).await?;
    let stored: Vec<_> = std::fs::read_dir(storage.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cert-"))
        })
        .collect();
    assert_eq!(stored.len(), 1, "one stored certificate: {stored:?}");
    let before = std::fs::read(&stored[0])?;
    first.terminate().await?;
    first.wait_exit(Duration::from_secs(10)).await?;

    let (tls_port, http_port) = {
        let p = reserve()?;
        (p.tls, p.http)
    };
    let acme = pebble.acme_section(&[&domain], "tls-alpn-01") + &extra;
    let mut second = start_edge(&edge_toml(&origin, tls_port, http_port, &acme)).await?;
    // Served from the first handshake, before any order could have finished.
    serves_on_every_protocol(&mut second, &domain, &pebble.root).await?;
    assert!(
        second.log().contains("serving the stored certificate"),
        "{}",
        second.log()
    );
    assert_eq!(orders(&second, "ok").await?, 0.0);
    assert_eq!(orders(&second, "error").await?, 0.0);
    // The next order is a renewal far ahead, not one now.
    let (next, page) = second
        .metric("proxy_acme_next_order_timestamp_seconds")
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        next.is_some_and(|t| t > now + 86_400.0),
        "next order in:\n{page}"
    );
    assert_eq!(
        std::fs::read(&stored[0])?,
        before,
        "the stored certificate is unchanged"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_directory_keeps_the_local_certificate_serving() -> anyhow::Result<()> {
    let closed = free_tcp_port()?;
    let origin = Origin::start().await?;
    let (tls_port, http_port) = {
        let p = reserve()?;
        (p.tls, p.http)
    };
    let acme = format!(
        "[acme]\ndirectory = \"https://127.0.0.1:{closed}/dir\"\ndomains = [\"down.{DOMAIN}\"]\n"
    );
    let edge = start_edge(&edge_toml(&origin, tls_port, http_port, &acme)).await?;
    // The first order fails at once and the retry after back-off fails too.
    eventually("two failed orders", ORDER_DEADLINE, || async {
        Ok((orders(&edge, "error").await? >= 2.0).then_some(()))
    })
    .await?;
    assert_eq!(orders(&edge, "ok").await?, 0.0);
    let ca = edge.dir.path().join("state/local-ca/ca.pem");
    assert_eq!(
        get(&edge, "localhost", &ca, "--http2").await?,
        (200, "2".to_owned())
    );
    // No order open: a TLS-ALPN-01 handshake gets no certificate, an HTTP-01
    // token 404 from edge itself (never the origin, never a redirect).
    let probe = connect_alpn(&edge, &format!("down.{DOMAIN}"), &ca, b"acme-tls/1").await;
    assert!(
        probe.is_err(),
        "an acme-tls/1 handshake with no order open succeeded"
    );
    let http = edge.http()?;
    let token = curl(&[format!("http://{http}/.well-known/acme-challenge/guess")]).await?;
    assert_eq!(token.status, 404);
    assert_eq!(
        get(&edge, "localhost", &ca, "--http1.1").await?,
        (200, "1.1".to_owned())
    );
    let log = edge.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("the current certificate keeps serving"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_bad_acme_settings_with_key_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("edge.toml");
    let toml =
        "listen = \"127.0.0.1:0\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:1\"]\n\n\
                [acme]\ndirectory = \"http://ca.example/dir\"\ncontact = [\"ops@example.com\"]\n\
                domains = [\"*.example.com\"]\nchallenge = \"http-01\"\nrenew_before = \"0s\"\n";
    std::fs::write(&file, toml)?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), file.as_os_str()],
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for (key, line, reason) in [
        ("acme.directory", 7, "not an https:// URL"),
        ("acme.contact", 8, "mailto:"),
        ("acme.domains", 9, "DNS-01"),
        ("acme.challenge", 10, "set http_listen"),
        ("acme.renew_before", 11, "greater than zero"),
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&format!(":{line}: {key}: ")) && l.contains(reason)),
            "{key} at line {line} ({reason}) in:\n{}",
            out.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_in_place_and_open_connections_keep_serving(
) -> anyhow::Result<()> {
    let domain = format!("renew.{DOMAIN}");
    let ports = reserve()?;
    // 60 s certificates renewed with 50 s (plus up to 5 s of jitter) left: the
    // renewal comes 5 to 10 s after each issuance.
    let validity = Some(Duration::from_secs(60));
    let pebble = Pebble::start_issuing_for(ports.http, ports.tls, validity).await?;
    let (tls_port, http_port) = (ports.tls, ports.http);
    drop(ports);
    let origin = Origin::start().await?;
    // The open connection idles across the renewal: keep-alive outlasts it.
    let acme = pebble.acme_section(&[&domain], "tls-alpn-01")
        + "renew_before = \"50s\"\n\n[client]\nheader_read_timeout = \"60s\"\n";
    let mut edge = start_edge(&edge_toml(&origin, tls_port, http_port, &acme)).await?;
    ordered(&edge).await?;
    let (mut open, first) = connect(&edge, &domain, &pebble.root).await?;
    assert_eq!(get_on(&mut open, &domain).await?, 200);
    eventually("a renewal", ORDER_DEADLINE, || async {
        Ok((orders(&edge, "ok").await? >= 2.0).then_some(()))
    })
    .await?;
    assert_eq!(orders(&edge, "error").await?, 0.0, "{}", edge.log());
    // The connection from before the renewal keeps serving.
    assert_eq!(get_on(&mut open, &domain).await?, 200);
    // New handshakes, TCP and QUIC, get the renewed certificate.
    let (mut fresh, renewed) = connect(&edge, &domain, &pebble.root).await?;
    assert_ne!(
        renewed, first,
        "a new TCP handshake still got the first certificate"
    );
    assert_eq!(get_on(&mut fresh, &domain).await?, 200);
    edge.pki.ca_cert = pebble.root.clone();
    let spec = serde_json::json!([{"path": "/", "headers": []}]);
    let out = h3_requests_sni(&edge, &domain, true, &spec).await?;
    assert_eq!(out["results"][0]["status"], 200, "h3: {out}");
    let h3_der = out["peer_certificate"]["der"]
        .as_str()
        .context("no h3 certificate")?;
    let first_der = base64_of(first.as_ref());
    assert_ne!(
        h3_der, first_der,
        "a new QUIC handshake still got the first certificate"
    );
    Ok(())
}

/// Standard base64 with padding (as the h3 client reports DER).
fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_sharing_redis_make_one_order_and_serve_one_certificate() -> anyhow::Result<()> {
    let redis = edge_tests::redis::Redis::start().await?;
    let domain = format!("shared.{DOMAIN}");
    let ports = reserve()?;
    let pebble = Pebble::start(ports.http, ports.tls).await?;
    let (tls_port, http_port) = (ports.tls, ports.http);
    drop(ports);
    let origin = Origin::start().await?;
    let acme = pebble.acme_section(&[&domain], "tls-alpn-01")
        + &format!("\n[redis]\nurl = {}\n", toml_str(&redis.url()));
    let first = start_edge(&edge_toml(&origin, tls_port, http_port, &acme)).await?;
    // The second starts while the first holds the lock, its order under way
    // (Pebble validates only on the first's port: an order of the second's
    // own would fail and count as an error).
    edge_tests::wait_until("the first edge ordering", ORDER_DEADLINE, || {
        first.log().contains("ordering a certificate")
    })
    .await?;
    let (tls_2, http_2) = {
        let p = reserve()?;
        (p.tls, p.http)
    };
    let second = start_edge(&edge_toml(&origin, tls_2, http_2, &acme)).await?;
    ordered(&first).await?;
    let served_second = eventually("the second edge serving it", ORDER_DEADLINE, || async {
        match connect(&second, &domain, &pebble.root).await {
            Ok((_, cert)) => Ok(Some(cert)),
            Err(_) => Ok(None),
        }
    })
    .await?;
    let (_, served_first) = connect(&first, &domain, &pebble.root).await?;
    assert_eq!(
        served_first, served_second,
        "both edges serve one certificate"
    );
    assert_eq!(orders(&first, "ok").await?, 1.0);
    assert_eq!(orders(&second, "ok").await?, 0.0, "{}", second.log());
    assert_eq!(
        orders(&first, "error").await? + orders(&second, "error").await?,
        0.0
    );
    assert!(
        second.log().contains("another edge"),
        "the second waited for or took the first's certificate:\n{}",
        second.log()
    );
    Ok(())
}
