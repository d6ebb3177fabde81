//! Opening connections to one endpoint and driving them until they close or idle out.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::clock::now_ms;
use crate::endpoint::EndpointAddr;
use crate::error::{is_local_resource, Error};
use crate::pool::{PoolConfig, Protocol, ReqBody};

/// What every pooled connection shares with the responses it carries.
pub(crate) struct ConnState {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) last_active_ms: AtomicU64,
}

impl ConnState {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now_ms()),
        })
    }

    /// Idle for at least `idle` with nothing in flight.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        let since = now_ms().saturating_sub(self.last_active_ms.load(Ordering::Acquire));
        self.in_flight.load(Ordering::Acquire) == 0 && u128::from(since) >= idle.as_millis()
    }
}

/// A freshly opened connection's request handle.
pub(crate) enum Sender<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

/// Opens connections for one pool: TCP, optional TLS, then the HTTP handshake.
pub(crate) struct Connector {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) tls: Option<TlsConnector>,
    /// The same roots offering `http/1.1` only, for upgrade connections.
    pub(crate) tls_h1: Option<TlsConnector>,
    /// Connects under way at most; past it a connect fails at once instead of piling up.
    pub(crate) max_pending: usize,
    pub(crate) pending: AtomicUsize,
    /// Requests that may wait for one of an endpoint's HTTP/1.1 connections when
    /// it is at its cap, and for how long.
    pub(crate) queue: usize,
    pub(crate) queue_timeout: Duration,
    /// The QUIC client of an h3 pool.
    pub(crate) quic: Option<crate::quic::QuicClient>,
}

/// One of an endpoint's HTTP/1.1 connection slots, held by the connection's task
/// until the connection closes.
pub(crate) type Slot = Option<tokio::sync::OwnedSemaphorePermit>;

/// A connect counted against `max_pending` until it ends.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connector {
    /// Opens a connection speaking `protocol`; over TLS, ALPN has the last word.
    pub(crate) async fn connect<B: ReqBody>(
        &self,
        addr: &EndpointAddr,
        protocol: Protocol,
        slot: Slot,
    ) -> Result<(Sender<B>, Arc<ConnState>), Error> {
        let endpoint = || addr.to_string();
        let _pending = Pending(&self.pending);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            return Err(Error::TooManyConnects {
                endpoint: endpoint(),
                limit: self.max_pending,
            });
        }
        let opened = tokio::time::timeout(self.connect_timeout, self.open(addr, &self.tls)).await;
        match opened {
            Err(_) => Err(Error::ConnectTimeout {
                endpoint: endpoint(),
                after: self.connect_timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Io::Plain(tcp))) => self.handshake(tcp, protocol, addr, slot).await,
            Ok(Ok(Io::Tls(tls))) => {
                let negotiated = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Protocol::H2,
                    _ => Protocol::H1,
                };
                self.handshake(tls, negotiated, addr, slot).await
            }
        }
    }

    /// A connection of its own for an HTTP/1.1 upgrade (WebSocket): never
    /// HTTP/2 (over TLS, ALPN offers `http/1.1` only) and never pooled. After a
    /// 101 its socket belongs to the tunnel; after any other answer it closes
    /// once that response has been read and the sender is dropped.
    pub(crate) async fn connect_upgrade<B: ReqBody>(
        &self,
        addr: &EndpointAddr,
    ) -> Result<http1::SendRequest<B>, Error> {
        let _pending = Pending(&self.pending);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            return Err(Error::TooManyConnects {
                endpoint: addr.to_string(),
                limit: self.max_pending,
            });
        }
        let opened =
            tokio::time::timeout(self.connect_timeout, self.open(addr, &self.tls_h1)).await;
        match opened {
            Err(_) => Err(Error::ConnectTimeout {
                endpoint: addr.to_string(),
                after: self.connect_timeout,
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Io::Plain(tcp))) => handshake_upgrade(tcp, addr).await,
            Ok(Ok(Io::Tls(tls))) => handshake_upgrade(tls, addr).await,
        }
    }

    async fn open(&self, addr: &EndpointAddr, tls: &Option<TlsConnector>) -> Result<Io, Error> {
        let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| {
                // Out of descriptors or buffers here is this process's state,
                // not a sign the endpoint is down.
                if is_local_resource(&source) {
                    Error::LocalResource {
                        endpoint: addr.to_string(),
                        source,
                    }
                } else {
                    Error::Connect {
                        endpoint: addr.to_string(),
                        source,
                    }
                }
            })?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(endpoint = %addr, error = %e, "TCP_NODELAY not set");
        }
        let Some(tls) = tls.as_ref().filter(|_| addr.tls) else {
            return Ok(Io::Plain(tcp));
        };
        let name = ServerName::try_from(addr.host.clone()).map_err(|e| Error::Tls {
            endpoint: addr.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let stream = tls.connect(name, tcp).await.map_err(|source| Error::Tls {
            endpoint: addr.to_string(),
            source,
        })?;
        Ok(Io::Tls(Box::new(stream)))
    }

    async fn handshake<B: ReqBody, I>(
        &self,
        io: I,
        protocol: Protocol,
        addr: &EndpointAddr,
        slot: Slot,
    ) -> Result<(Sender<B>, Arc<ConnState>), Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let failed = |source| Error::Handshake {
            endpoint: addr.to_string(),
            source,
        };
        let state = ConnState::new();
        let sender = match protocol {
            // Over TCP an h3 pool speaks h2 (its fallback).
            Protocol::H2 | Protocol::H3 => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .adaptive_window(true)
                    .handshake(io)
                    .await
                    .map_err(failed)?;
                tokio::spawn(drive(
                    conn,
                    state.clone(),
                    self.idle_timeout,
                    addr.clone(),
                    slot,
                ));
                Sender::H2(send)
            }
            Protocol::H1 => {
                // hyper's default read buffer grows to ~400 KiB, and each body
                // chunk cut from it pins it whole: a response waiting on a slow
                // client held ~770 KiB. 64 KiB bounds that (and response heads).
                let (send, conn) = http1::Builder::new()
                    .max_buf_size(64 * 1024)
                    .handshake(io)
                    .await
                    .map_err(failed)?;
                tokio::spawn(drive(
                    conn,
                    state.clone(),
                    self.idle_timeout,
                    addr.clone(),
                    slot,
                ));
                Sender::H1(send)
            }
        };
        Ok((sender, state))
    }
}

/// The HTTP/1.1 handshake of an upgrade connection, driven with upgrades on so
/// a 101 hands the socket (and anything read past the 101) to the response's
/// `OnUpgrade`.
async fn handshake_upgrade<B: ReqBody, I>(
    io: I,
    addr: &EndpointAddr,
) -> Result<http1::SendRequest<B>, Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| Error::Handshake {
            endpoint: addr.to_string(),
            source,
        })?;
    let endpoint = addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "upstream upgrade connection ended");
        }
    });
    Ok(send)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Runs a connection until it ends or has been idle for `idle`; dropping it closes
/// the socket, so a pooled connection never outlives the backend's keep-alive.
async fn drive<F>(conn: F, state: Arc<ConnState>, idle: Duration, addr: EndpointAddr, slot: Slot)
where
    F: Future<Output = Result<(), hyper::Error>>,
{
    // Released when the connection is gone, whichever way it ends.
    let _slot = slot;
    let tick = (idle / 4).max(Duration::from_millis(25));
    let idle_out = async {
        loop {
            tokio::time::sleep(tick).await;
            if state.idle_for(idle) {
                return;
            }
        }
    };
    tokio::select! {
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended");
            }
        }
        () = idle_out => tracing::debug!(endpoint = %addr, "closing idle upstream connection"),
    }
}

pub(crate) fn tls_connector(
    cfg: &PoolConfig,
    protocol: Protocol,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut tls = client_tls(cfg)?;
    tls.alpn_protocols = match protocol {
        // An h3 pool's TCP connections are its fallback: h2 by ALPN.
        Protocol::H2 | Protocol::H3 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::H1 => vec![b"http/1.1".to_vec()],
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

/// The pool's TLS client settings (public web roots plus the pool's own), no ALPN yet.
pub(crate) fn client_tls(cfg: &PoolConfig) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}
