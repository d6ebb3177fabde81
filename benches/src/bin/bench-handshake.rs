//! A load client for connection churn: every request on a connection of its
//! own, so the proxy pays a handshake per request.
//!
//! `bench-handshake MODE ADDR CA CONNS SECONDS [RATE]`
//!
//! - `MODE`: `tls` (a full TLS 1.3 handshake per request), `resume` (TLS 1.3
//!   resumed with the ticket of that client's previous connection: each client
//!   keeps its own session store), `quic` (a new QUIC
//!   connection per HTTP/3 request, no 0-RTT) or `plain` (HTTP/1.1 over TCP,
//!   `Connection: close`).
//! - `ADDR`: `127.0.0.1:PORT`; `CA`: the PEM certificate the server must
//!   present, byte for byte (the name is `localhost`; see [`Pinned`]); unused
//!   for `plain`.
//! - `CONNS` clients loop for `SECONDS`, each opening one connection after
//!   another; with `RATE`, connections are opened at that many per second
//!   instead (open loop, at most `CONNS` at a time), as clients arriving at a
//!   fixed rate do.
//!
//! Prints one line: `ok window_s p50_ms p99_ms errors`, where the latencies
//! are the handshake's (TCP connect + TLS, or the QUIC handshake; TCP connect
//! for `plain`), then on a second line `resumed N` (how many handshakes
//! rustls reports resumed) and `request_p99_ms X`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tls,
    Resume,
    Quic,
    Plain,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    resumed: AtomicU64,
    /// Handshake and whole-request latencies, microseconds.
    handshake_us: Mutex<Vec<u64>>,
    request_us: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn done(&self, handshake: Duration, request: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        lock(&self.handshake_us).push(us(handshake));
        lock(&self.request_us).push(us(request));
    }

    fn failed(&self, e: &BoxError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_error).get_or_insert_with(|| e.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn percentile_ms(values: &mut [u64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[at.min(values.len() - 1)] as f64 / 1000.0
}

/// What every client shares: where to go and how.
struct Target {
    mode: Mode,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    quic: Option<quinn::Endpoint>,
    request: Bytes,
}

/// Accepts exactly the certificate in `CA` (the harness's self-signed leaf)
/// and skips the handshake's signature check: the client's verification is
/// not the proxy's cost, and at a new connection per request it was most of
/// what kept this single-core client from saturating a fast proxy (h2load
/// and `openssl s_time` do not verify at all). The proxy still signs every
/// handshake, so its work is unchanged.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

fn tls_config(ca: &str, mode: Mode) -> Result<rustls::ClientConfig, BoxError> {
    let cert = CertificateDer::pem_file_iter(ca)?
        .next()
        .ok_or("no certificate in CA")??;
    // aws-lc-rs: the cheaper X25519 of the two providers, for the client.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = Arc::new(Pinned {
        cert,
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_no_client_auth();
    cfg.resumption = match mode {
        // Enough room for every client's latest ticket.
        Mode::Resume => rustls::client::Resumption::in_memory_sessions(4096),
        _ => rustls::client::Resumption::disabled(),
    };
    cfg.alpn_protocols = vec![if mode == Mode::Quic {
        b"h3".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(cfg)
}

/// One connection, one request, read to the end; the handshake's duration.
/// `own`: the client's own TLS connector (its own session store, in `resume`
/// mode: each simulated client resumes its own last session, as a browser
/// does), else the shared one.
async fn once(
    t: &Target,
    own: Option<&tokio_rustls::TlsConnector>,
    tally: &Tally,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    match t.mode {
        Mode::Quic => {
            let endpoint = t.quic.as_ref().ok_or("no QUIC endpoint")?;
            let conn = endpoint.connect(t.addr, "localhost")?.await?;
            let handshake = start.elapsed();
            let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
                .await
                .map_err(|e| format!("h3 setup: {e}"))?;
            let drive =
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
            let req =
                http::Request::get(format!("https://localhost:{}/", t.addr.port())).body(())?;
            let mut stream = send.send_request(req).await?;
            stream.finish().await?;
            let resp = stream.recv_response().await?;
            while let Some(mut chunk) = stream.recv_data().await? {
                chunk.advance(chunk.remaining());
            }
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()).into());
            }
            conn.close(quinn::VarInt::from_u32(0x100), b"");
            drive.abort();
            Ok(handshake)
        }
        Mode::Plain => {
            let mut tcp = TcpStream::connect(t.addr).await?;
            tcp.set_nodelay(true)?;
            let handshake = start.elapsed();
            exchange(&mut tcp, &t.request).await?;
            Ok(handshake)
        }
        Mode::Tls | Mode::Resume => {
            let tcp = TcpStream::connect(t.addr).await?;
            tcp.set_nodelay(true)?;
            let connector = own.or(t.tls.as_ref()).ok_or("no TLS connector")?;
            let name = ServerName::try_from("localhost")?;
            let mut tls = connector.connect(name, tcp).await?;
            let handshake = start.elapsed();
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                tally.resumed.fetch_add(1, Ordering::Relaxed);
            }
            exchange(&mut tls, &t.request).await?;
            Ok(handshake)
        }
    }
}

/// Writes the request and reads until the server closes (`Connection: close`);
/// the answer must be a 2xx.
async fn exchange<S>(io: &mut S, request: &[u8]) -> Result<(), BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
    }
    if buf.starts_with(b"HTTP/1.1 2") || buf.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
        Err(format!("unexpected answer {head:?}").into())
    }
}

async fn one_and_tally(t: &Target, own: Option<&tokio_rustls::TlsConnector>, tally: &Tally) {
    let start = Instant::now();
    match once(t, own, tally).await {
        Ok(handshake) => tally.done(handshake, start.elapsed()),
        Err(e) => tally.failed(&e),
    }
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench-handshake tls|resume|quic|plain ADDR CA CONNS SECONDS [RATE]";
    if args.len() < 5 {
        return Err(usage.into());
    }
    let mode = match args[0].as_str() {
        "tls" => Mode::Tls,
        "resume" => Mode::Resume,
        "quic" => Mode::Quic,
        "plain" => Mode::Plain,
        _ => return Err(usage.into()),
    };
    let addr: SocketAddr = args[1].parse()?;
    let ca = args[2].clone();
    let conns: usize = args[3].parse()?;
    let seconds: f64 = args[4].parse()?;
    let rate: Option<f64> = args.get(5).map(|r| r.parse()).transpose()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tls_base = match mode {
            Mode::Tls | Mode::Resume => Some(Arc::new(tls_config(&ca, mode)?)),
            _ => None,
        };
        let tls = tls_base.clone().map(tokio_rustls::TlsConnector::from);
        let quic = if mode == Mode::Quic {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_config(&ca, mode)?)?;
            let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            Some(endpoint)
        } else {
            None
        };
        let request = Bytes::from(format!(
            "GET / HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: bench-handshake\r\nConnection: close\r\n\r\n",
            addr.port()
        ));
        let target = Arc::new(Target {
            mode,
            addr,
            tls,
            quic,
            request,
        });
        let tally = Arc::new(Tally::default());
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        match rate {
            None => {
                for _ in 0..conns {
                    let (t, tally) = (target.clone(), tally.clone());
                    // A store of its own per client: 50 clients sharing one
                    // store would compete for its few tickets per server.
                    let own = match (mode, &tls_base) {
                        (Mode::Resume, Some(base)) => {
                            let mut cfg = (**base).clone();
                            cfg.resumption = rustls::client::Resumption::in_memory_sessions(8);
                            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
                        }
                        _ => None,
                    };
                    tasks.spawn(async move {
                        while Instant::now() < deadline {
                            one_and_tally(&t, own.as_ref(), &tally).await;
                        }
                    });
                }
            }
            Some(rate) => {
                let slots = Arc::new(tokio::sync::Semaphore::new(conns));
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while Instant::now() < deadline {
                    tick.tick().await;
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Every slot busy: this arrival is refused, and counted.
                        tally.failed(&"no free client slot at the fixed rate".into());
                        continue;
                    };
                    let (t, tally) = (target.clone(), tally.clone());
                    tasks.spawn(async move {
                        one_and_tally(&t, None, &tally).await;
                        drop(slot);
                    });
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        let window = start.elapsed().as_secs_f64();
        let mut hs = std::mem::take(&mut *lock(&tally.handshake_us));
        let mut req = std::mem::take(&mut *lock(&tally.request_us));
        println!(
            "{} {:.3} {:.3} {:.3} {}",
            tally.ok.load(Ordering::Relaxed),
            window,
            percentile_ms(&mut hs, 0.50),
            percentile_ms(&mut hs, 0.99),
            tally.errors.load(Ordering::Relaxed)
        );
        println!(
            "resumed {} request_p99_ms {:.3}",
            tally.resumed.load(Ordering::Relaxed),
            percentile_ms(&mut req, 0.99)
        );
        if let Some(e) = lock(&tally.first_error).as_ref() {
            eprintln!("bench-handshake: first error: {e}");
        }
        Ok::<_, BoxError>(())
    })
}
