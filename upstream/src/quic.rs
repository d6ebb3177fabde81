//! HTTP/3 to endpoints (`protocol = "h3"`): one QUIC connection per endpoint,
//! shared by all its requests like the HTTP/2 one, opened by quinn from a
//! client endpoint (UDP socket) per address family and pool; h3 on top.
//!
//! What does not connect over QUIC (no answer within the connect timeout: UDP
//! blocked, nothing listening on the UDP port; a refused handshake) is not an
//! error for the request: the backend sends it over TCP (h2 by ALPN) and, when
//! TCP connects, marks the endpoint "QUIC broken" for [`QUIC_BROKEN_FOR`]; see
//! `backend/h3_exchange.rs`.
//!
//! The request body streams in a task of its own (`send_data`, then `finish`,
//! or a reset if it fails, so a broken upload never looks complete); the
//! response body is read off the stream as the consumer polls it, so QUIC flow
//! control is the back-pressure.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::Outgoing;
use crate::conn::ConnState;
use crate::endpoint::EndpointAddr;
use crate::h3_read::ReadState;
use crate::pool::{PoolConfig, ReqBody};
use crate::BoxError;

/// How long an endpoint whose QUIC connect failed is reached over TCP only
/// before QUIC is tried again.
pub const QUIC_BROKEN_FOR: Duration = Duration::from_secs(300);

/// Silence from an endpoint this long closes its QUIC connection (keep-alive
/// PINGs every third of it keep a healthy one talking).
const QUIC_DEAD_AFTER: Duration = Duration::from_secs(6);

pub(crate) type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3Recv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
type H3Upload = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type H3Driver = h3::client::Connection<h3_quinn::Connection, Bytes>;

/// Why a QUIC connection could not be opened (the request then goes over TCP).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuicFailed {
    #[error("cannot resolve the endpoint's host: {0}")]
    Resolve(std::io::Error),
    #[error("no local UDP socket: {0}")]
    Bind(std::io::Error),
    #[error("QUIC connect not started: {0}")]
    Connect(quinn::ConnectError),
    #[error("QUIC handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("QUIC handshake failed: {0}")]
    Handshake(quinn::ConnectionError),
    #[error("HTTP/3 setup on the QUIC connection failed: {0}")]
    H3(h3::error::ConnectionError),
}

/// A pool's QUIC client: its TLS settings (ALPN h3) and its UDP sockets, bound
/// on first use (0.0.0.0:0 and [::]:0: the kernel picks the source address).
pub(crate) struct QuicClient {
    config: quinn::ClientConfig,
    v4: Mutex<Option<quinn::Endpoint>>,
    v6: Mutex<Option<quinn::Endpoint>>,
    /// Requests sent over TCP because QUIC would not connect.
    pub(crate) fallbacks: AtomicU64,
}

/// The shared QUIC connection of one endpoint.
pub(crate) struct H3Conn {
    pub(crate) send: H3Send,
    quic: quinn::Connection,
    pub(crate) state: Arc<ConnState>,
}

impl H3Conn {
    pub(crate) fn is_closed(&self) -> bool {
        self.quic.close_reason().is_some()
    }
}

impl QuicClient {
    pub(crate) fn new(cfg: &PoolConfig) -> Result<Self, rustls::Error> {
        let mut tls = crate::conn::client_tls(cfg)?;
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| rustls::Error::General(format!("QUIC client TLS: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // A dead or restarted endpoint sends no RST over UDP (its stateless
        // reset carries a key the old process took with it): without
        // keep-alives the connection would look alive, and take requests, until
        // the idle timeout. With them, silence for QUIC_DEAD_AFTER closes it
        // and the next request opens a new one. Idle pooling (`idle_timeout`)
        // is `drive`'s job, not QUIC's.
        transport.keep_alive_interval(Some(QUIC_DEAD_AFTER / 3));
        transport.max_idle_timeout(
            quinn::IdleTimeout::try_from(QUIC_DEAD_AFTER.min(cfg.idle_timeout)).ok(),
        );
        config.transport_config(Arc::new(transport));
        Ok(Self {
            config,
            v4: Mutex::new(None),
            v6: Mutex::new(None),
            fallbacks: AtomicU64::new(0),
        })
    }

    fn endpoint(&self, v4: bool) -> Result<quinn::Endpoint, QuicFailed> {
        let slot = if v4 { &self.v4 } else { &self.v6 };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let local: SocketAddr = if v4 {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(local).map_err(QuicFailed::Bind)?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Opens a QUIC connection to `addr` and starts h3 on it, all within
    /// `timeout`; the connection is closed once idle for `idle`.
    pub(crate) async fn connect(
        &self,
        addr: &EndpointAddr,
        timeout: Duration,
        idle: Duration,
    ) -> Result<H3Conn, QuicFailed> {
        let opened = tokio::time::timeout(timeout, self.open(addr)).await;
        let (driver, send, quic) = match opened {
            Err(_) => return Err(QuicFailed::Timeout(timeout)),
            Ok(r) => r?,
        };
        let state = ConnState::new();
        tokio::spawn(drive(
            driver,
            quic.clone(),
            state.clone(),
            idle,
            addr.clone(),
        ));
        Ok(H3Conn { send, quic, state })
    }

    async fn open(
        &self,
        addr: &EndpointAddr,
    ) -> Result<(H3Driver, H3Send, quinn::Connection), QuicFailed> {
        let target = resolve(addr).await?;
        let endpoint = self.endpoint(target.is_ipv4())?;
        let quic = endpoint
            .connect_with(self.config.clone(), target, &addr.host)
            .map_err(QuicFailed::Connect)?
            .await
            .map_err(QuicFailed::Handshake)?;
        let (driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(QuicFailed::H3)?;
        Ok((driver, send, quic))
    }
}

/// The endpoint's address: an IP literal as it is, a name by lookup, its first
/// IPv4 address preferred (QUIC gets one address; TCP tries them in turn).
async fn resolve(addr: &EndpointAddr) -> Result<SocketAddr, QuicFailed> {
    if let Ok(ip) = addr.host.parse::<IpAddr>() {
        return Ok((ip, addr.port).into());
    }
    let all: Vec<SocketAddr> = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(QuicFailed::Resolve)?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| QuicFailed::Resolve(std::io::Error::other("no address")))
}

/// Runs the h3 connection until it closes, or closes it once idle for `idle`
/// (nothing in flight), so a pooled connection never outlives the backend's
/// keep-alive.
async fn drive(
    mut driver: H3Driver,
    quic: quinn::Connection,
    state: Arc<ConnState>,
    idle: Duration,
    addr: EndpointAddr,
) {
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
        e = std::future::poll_fn(|cx| driver.poll_close(cx)) => {
            tracing::debug!(endpoint = %addr, error = %e, "upstream QUIC connection ended");
        }
        () = idle_out => {
            tracing::debug!(endpoint = %addr, "closing idle upstream QUIC connection");
            quic.close(quinn::VarInt::from_u32(0x100), b"idle");
        }
    }
}

/// The request body's upload, aborted (and its stream reset) when the exchange
/// ends first: the response was dropped, or never came.
pub(crate) struct Upload(tokio::task::AbortHandle);

impl Drop for Upload {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `body` on `tx` in a task of its own: DATA frames, trailers if any,
/// then the end of the stream. A body that fails (the watch keeps why), or an
/// upload cut short, resets the stream: quinn would otherwise finish it on
/// drop and the backend would see a truncated body as complete.
pub(crate) fn upload<B: ReqBody>(tx: H3Upload, body: Outgoing<B>) -> Upload {
    let task = tokio::spawn(async move {
        let mut tx = Resetting { tx, done: false };
        let mut body = body;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => break,
                Some(Err(_)) => return,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if tx.tx.send_data(data).await.is_err() {
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if tx.tx.send_trailers(trailers).await.is_err() {
                                return;
                            }
                        }
                    }
                },
            }
        }
        if tx.tx.finish().await.is_ok() {
            tx.done = true;
        }
    });
    Upload(task.abort_handle())
}

/// A request stream's sending side, reset when dropped before it finished.
struct Resetting {
    tx: H3Upload,
    done: bool,
}

impl Drop for Resetting {
    fn drop(&mut self) {
        if !self.done {
            self.tx.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        }
    }
}

/// A response body read off an HTTP/3 request stream: DATA, then trailers.
pub(crate) struct H3Body {
    rx: H3Recv,
    state: ReadState,
    /// Bytes still to come, from the response's content-length.
    len: Option<u64>,
    /// Keeps the request body uploading while the response is read.
    _upload: Option<Upload>,
    /// Keeps the connection open while the response is read, even once the
    /// endpoint has a newer one: h3 closes a connection with its last sender.
    _conn: Arc<H3Conn>,
}

impl H3Body {
    pub(crate) fn new(
        rx: H3Recv,
        len: Option<u64>,
        upload: Option<Upload>,
        conn: Arc<H3Conn>,
    ) -> Self {
        Self {
            rx,
            state: ReadState::Data,
            len,
            _upload: upload,
            _conn: conn,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = this.state.poll_frame(&mut this.rx, cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.len = this.len.map(|n| n.saturating_sub(data.len() as u64));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.state == ReadState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (self.state, self.len) {
            (ReadState::Done, _) => SizeHint::with_exact(0),
            (ReadState::Data, Some(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
