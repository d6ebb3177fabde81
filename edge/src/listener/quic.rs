//! The QUIC listener: HTTP/3 on the same port as the TLS listener.
//!
//! Each connection and each request stream gets its own task. A request that
//! breaks a per-request limit gets its stream answered or reset (431, or
//! H3_REQUEST_REJECTED); the connection and its other streams carry on.
//!
//! With `tls.early_data` a connection is served from its ClientHello on
//! (0.5-RTT): a stream accepted before the handshake ends came in 0-RTT and
//! is marked so for the pipeline (`Peer::early_data`), which answers 425 to
//! unsafe methods. The handshake must still end within `tls.handshake_timeout`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h3::error::Code;
use h3::server::RequestResolver;
use http::header::CONTENT_LENGTH;
use http::Response;
use http_body_util::BodyExt;
use quinn::crypto::rustls::QuicServerConfig;

use super::Shared;
use crate::body::{Body, H3Body};
use crate::metrics::Proto;
use crate::pipeline::{self, Peer};
use crate::tls::{self, CertResolver, Sni};

mod limits;

use limits::{Admit, Limits};

/// Bytes buffered for one connection attempt before the accept loop decides on
/// it, and for all of them together: handshake memory has a ceiling.
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 16 * 1024 * 1024;
/// Attempts waiting for the accept loop at most; later ones are refused by quinn.
const MAX_INCOMING: usize = 4096;

type H3Conn = h3::server::Connection<h3_quinn::Connection, Bytes>;
pub(crate) type H3Send = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Builds the QUIC endpoint on an already bound UDP socket (GSO/GRO come from quinn-udp).
pub fn endpoint(
    socket: UdpSocket,
    resolver: Arc<CertResolver>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    sessions: &tls::Sessions,
    shared: &Shared,
) -> Result<quinn::Endpoint, crate::start::StartError> {
    let client = &shared.config.client;
    let crypto = QuicServerConfig::try_from(tls::quic_config(resolver, clients, sessions)?)
        .map_err(|e| crate::start::StartError::Setup(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(client.max_concurrent_streams.into())
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window(quinn::VarInt::from_u32(256 * 1024))
        .receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30).min(client.idle_timeout))
                .map_err(|e| crate::start::StartError::Setup(e.to_string()))?,
        ));
    server.transport_config(Arc::new(transport));
    server
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| {
        crate::start::StartError::Bind(super::BindError {
            addr,
            transport: "udp",
            source,
        })
    })
}

/// Accepts QUIC connections until draining starts.
/// One limit set (and its metrics) for every endpoint: the caps are the edge's.
pub async fn run(endpoints: Vec<quinn::Endpoint>, shared: Arc<Shared>) {
    let limits = match Limits::new(shared.config.quic.clone(), shared.metrics.registry()) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "QUIC metrics not registered; not listening"),
    };
    let mut loops = tokio::task::JoinSet::new();
    for endpoint in endpoints {
        loops.spawn(accept(endpoint, limits.clone(), shared.clone()));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept(endpoint: quinn::Endpoint, limits: Arc<Limits>, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            () = shared.draining.cancelled() => break,
        };
        let peer = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let overloaded = shared.overload.active();
        let slot = match limits.admit(peer.ip(), validated, incoming.may_retry(), overloaded) {
            Admit::Accept(slot) => slot,
            Admit::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Admit::Refuse => {
                incoming.refuse();
                continue;
            }
        };
        shared
            .tasks
            .spawn(handshake(incoming, slot, shared.clone()));
    }
    // Draining: refuse new connections, let open ones finish (they got GOAWAY).
    endpoint.set_server_config(None);
}

async fn handshake(incoming: quinn::Incoming, mut slot: limits::Slot, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + shared.config.tls.handshake_timeout;
    let early = shared.config.tls.early_data;
    // Boxed, as is `serve_conn`'s HTTP/3 state: this task lives as long as
    // the connection, and inline it was sized for the largest of the
    // handshake, the h3 setup and the accept loop together (10 KiB).
    let done = tokio::time::timeout_at(deadline, Box::pin(establish(incoming, early))).await;
    let (conn, rest) = match done {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            slot.handshake_done();
            shared.metrics.handshake_failed("quic", quic_failure(&e));
            return tracing::debug!(%peer, error = %e, "QUIC handshake failed");
        }
        Err(_) => {
            slot.handshake_done();
            shared.metrics.handshake_failed("quic", "timeout");
            return tracing::debug!(%peer, "QUIC handshake timed out");
        }
    };
    let handshake = match rest {
        Some(rest) => Handshake::Running {
            rest,
            deadline,
            slot: &mut slot,
        },
        None => {
            slot.handshake_done();
            Handshake::Done
        }
    };
    shared.upgrades.arrived_over_quic(peer.ip());
    serve_conn(conn.clone(), peer, shared.clone(), handshake).await;
    // Served from the ClientHello on, a connection whose handshake then failed
    // (a bad client certificate, a client gone) is counted here; edge's own
    // close (the handshake timeout, counted already; overload) is not.
    shared.metrics.quic_connection_ended(&path_of(&conn));
    drop(slot);
}

/// The connection once it may carry requests: when its handshake is done, or,
/// with `tls.early_data`, as soon as the ClientHello is read (its SNI decides
/// 421, so not before), the rest of the handshake still to come.
async fn establish(
    incoming: quinn::Incoming,
    early: bool,
) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), quinn::ConnectionError> {
    let mut connecting = incoming.accept()?;
    if !early {
        return Ok((connecting.await?, None));
    }
    connecting.handshake_data().await?;
    match connecting.into_0rtt() {
        Ok((conn, rest)) => Ok((conn, Some(rest))),
        Err(connecting) => Ok((connecting.await?, None)),
    }
}

/// Where a connection's handshake stands as it starts serving.
enum Handshake<'s> {
    Done,
    /// Served in 0.5-RTT (`tls.early_data`): a request stream accepted before
    /// `rest` resolves arrived in early data. The handshake must still end by
    /// `deadline`, and holds its handshake slot until it does.
    Running {
        rest: quinn::ZeroRttAccepted,
        deadline: tokio::time::Instant,
        slot: &'s mut limits::Slot,
    },
}

impl Handshake<'_> {
    fn running(&self) -> bool {
        matches!(self, Handshake::Running { .. })
    }

    /// Whether a running handshake has ended (then it is `Done`), asked as a
    /// stream is accepted. quinn reports the end of the handshake before the
    /// streams that came with the client's Finished (one datagram, on a full
    /// handshake): such a stream is then not taken for early data.
    fn ended_now(&mut self) -> bool {
        let Handshake::Running { rest, .. } = self else {
            return false;
        };
        if futures_util::FutureExt::now_or_never(rest).is_none() {
            return false;
        }
        self.finish();
        true
    }

    /// Resolves when a running handshake ends: `true` when it ended in time
    /// (completed, or the connection failed, which the accept loop then sees),
    /// `false` past its deadline. Never resolves once done.
    async fn end(&mut self) -> bool {
        match self {
            Handshake::Done => std::future::pending().await,
            Handshake::Running { rest, deadline, .. } => {
                tokio::time::timeout_at(*deadline, rest).await.is_ok()
            }
        }
    }

    fn finish(&mut self) {
        if let Handshake::Running { slot, .. } = self {
            slot.handshake_done();
        }
        *self = Handshake::Done;
    }
}

async fn serve_conn(
    conn: quinn::Connection,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut handshake: Handshake<'_>,
) {
    let _open = shared.metrics.connection(Proto::H3);
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let limit = super::tcp::backstop(shared.config.client.max_header_bytes);
    let max_field_section = u64::try_from(limit).unwrap_or(u64::MAX);
    let quic = conn.clone();
    let built = Box::pin(
        h3::server::builder()
            .max_field_section_size(max_field_section)
            // No reserved-type stream (RFC 9114 6.2.3 makes greasing optional):
            // each one costs a stream and draws a STOP_SENDING from the client,
            // on every connection, for nothing the client can use.
            .send_grease(false)
            // RFC 9220: WebSocket over extended CONNECT, as on h2 (RFC 8441).
            .enable_extended_connect(shared.config.upgrade.allows("websocket").is_some())
            .build(h3_quinn::Connection::new(conn)),
    )
    .await;
    let mut h3: Box<H3Conn> = match built {
        Ok(c) => Box::new(c),
        // A handshake served from the ClientHello on can fail while h3 opens
        // its control stream (a client certificate refused within a round trip).
        Err(_) if handshake.running() && handshake_failed(&quic, &shared, peer.ip()) => return,
        Err(e) => return tracing::debug!(%peer, error = %e, "HTTP/3 setup failed"),
    };
    let mut peer = Peer {
        ip: peer.ip(),
        tls: true,
        sni: shared
            .certs
            .zip(sni.as_deref())
            .map(|(c, n)| Sni::new(c, n)),
        // A resumed session's certificate is known from the ClientHello on;
        // a full handshake's once it is done (read again then, below).
        client_cert: client_cert(&quic),
        early_data: false,
    };
    let mut draining = false;
    // Made once, not per accepted request.
    let drain = shared.draining.cancelled();
    tokio::pin!(drain);
    // Under overload idle connections are shed oldest first: this one holds its
    // place from the start, and re-queues if its turn comes mid-request.
    let overload = &shared.overload;
    let mut ticket = overload.idle();
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        let shed = async {
            match &ticket {
                Some(t) => t.shed().await,
                None => std::future::pending().await,
            }
        };
        let mut shed_now = false;
        // Biased: the end of the handshake is seen before what it wakes (a
        // failed one ends the accept too, and h3 then closes the connection
        // over the reason); drain and shed fire once each.
        let next = tokio::select! {
            biased;
            in_time = handshake.end() => {
                if !in_time {
                    shared.metrics.handshake_failed("quic", "timeout");
                    tracing::debug!(peer = %peer.ip, "QUIC handshake timed out after early data");
                    quic.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"handshake timeout");
                    return;
                }
                // Served from the ClientHello on, a connection whose handshake
                // failed (a bad client certificate, a client gone) is counted here.
                if handshake_failed(&quic, &shared, peer.ip) {
                    return;
                }
                handshake.finish();
                peer.client_cert = client_cert(&quic);
                None
            }
            () = &mut drain, if !draining => {
                draining = true;
                if let Err(e) = Box::pin(h3.shutdown(0)).await {
                    tracing::debug!(error = %e, "HTTP/3 GOAWAY failed");
                }
                None
            }
            () = shed => {
                shed_now = true;
                None
            }
            n = h3.accept() => Some(n),
        };
        if shed_now {
            if in_flight.load(Ordering::Relaxed) == 0 {
                tracing::debug!(peer = %peer.ip, "overload: idle HTTP/3 connection shed");
                quic.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"overloaded");
                return;
            }
            ticket = overload.idle();
        }
        let Some(next) = next else { continue };
        match next {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                let in_flight = InFlight::enter(&in_flight);
                if handshake.ended_now() {
                    peer.client_cert = client_cert(&quic);
                }
                let mut peer = peer.clone();
                peer.early_data = handshake.running();
                tokio::spawn(async move {
                    serve_stream(resolver, peer, shared).await;
                    drop(in_flight);
                });
            }
            Ok(None) => return,
            Err(e) => {
                return tracing::debug!(peer = %peer.ip, error = %e, "HTTP/3 connection ended")
            }
        }
    }
}

/// The client certificate the connection presented, as the upstream header's value.
fn client_cert(conn: &quinn::Connection) -> Option<http::HeaderValue> {
    let chain = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    tls::client_cert_value(chain.as_deref().map(Vec::as_slice))
}

/// Whether a connection served before its handshake ended (0.5-RTT) has
/// closed without completing it; such a failure is counted and logged here.
fn handshake_failed(quic: &quinn::Connection, shared: &Shared, peer: std::net::IpAddr) -> bool {
    if quic.stats().frame_tx.handshake_done != 0 {
        return false;
    }
    let Some(e) = quic.close_reason() else {
        return false;
    };
    shared.metrics.handshake_failed("quic", quic_failure(&e));
    tracing::debug!(%peer, error = %e, "QUIC handshake failed");
    true
}

/// Why a QUIC handshake failed, as one of a few metric labels.
fn quic_failure(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => "timeout",
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => "peer_closed",
        E::Reset => "reset",
        E::TransportError(t) => match u64::from(t.code) {
            // CRYPTO_ERROR carrying TLS alert 120 (no_application_protocol).
            0x178 => "no_shared_protocol",
            // CRYPTO_ERROR with a certificate alert (42..=49).
            0x12a..=0x131 => "bad_certificate",
            0x100..=0x1ff => "alert",
            _ => "transport",
        },
        _ => "other",
    }
}

/// A connection's path figures from quinn's stats, for the metrics.
fn path_of(conn: &quinn::Connection) -> crate::metrics::QuicPath {
    let s = conn.stats();
    crate::metrics::QuicPath {
        rtt: s.path.rtt,
        cwnd: s.path.cwnd,
        sent_packets: s.path.sent_packets,
        lost_packets: s.path.lost_packets,
        congestion_events: s.path.congestion_events,
        datagrams_in: s.udp_rx.datagrams,
        datagrams_out: s.udp_tx.datagrams,
    }
}

/// H3_NO_ERROR (RFC 9114 8.1).
const H3_NO_ERROR: u32 = 0x100;

/// One request stream being served on a connection, counted while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_stream(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    peer: Peer,
    shared: Arc<Shared>,
) {
    // Past the backstop, h3 itself answers 431; malformed requests are reset with
    // H3_MESSAGE_ERROR. Both end only this stream.
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => return tracing::debug!(peer = %peer.ip, error = %e, "HTTP/3 request refused"),
    };
    let (mut send, mut recv) = stream.split();
    if shared.draining.is_cancelled() {
        send.stop_stream(Code::H3_REQUEST_REJECTED);
        return;
    }
    if connection_specific(req.headers()) {
        // Malformed (RFC 9114 4.2): reset both halves, as h2 does for its own.
        recv.stop_sending(Code::H3_MESSAGE_ERROR);
        send.stop_stream(Code::H3_MESSAGE_ERROR);
        return;
    }
    let len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // A WebSocket extended CONNECT (RFC 9220) keeps its stream's receiving
    // half here: it becomes the client's side of the tunnel if the backend
    // switches, so the request itself goes on without a body.
    let websocket = req.method() == http::Method::CONNECT
        && req.extensions().get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEBSOCKET);
    let (mut req, tunnel_recv) = if websocket {
        let mut req = req.map(|()| Body::Empty);
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        (req, Some(recv))
    } else {
        (req.map(|()| Body::H3(H3Body::new(recv, len))), None)
    };
    let proxy = shared.proxy.load();
    let ip = peer.ip;
    let write_idle = shared.config.client.write_idle_timeout;
    // 103 Early Hints go out as the backend sends them, the last ones before
    // the response (hyper's queue and limit, as on h1 and h2).
    let (tx, mut hints) = hyper::ext::informational();
    let passed = shared.metrics.early_hints(Proto::H3);
    req.extensions_mut().insert(super::hint_sink(tx, passed));
    let handle = pipeline::handle(&proxy, &shared.metrics, peer.clone(), req);
    tokio::pin!(handle);
    let mut resp = loop {
        tokio::select! {
            resp = &mut handle => break resp,
            hint = std::future::poll_fn(|cx| hints.poll_next(cx)) => {
                write_hints(&mut send, [hint], write_idle).await;
            }
        }
    };
    write_hints(&mut send, hints.close(), write_idle).await;
    let tunnel = resp.extensions_mut().remove::<pipeline::Tunnel>();
    if let (Some(tunnel), Some(recv)) = (tunnel, tunnel_recv) {
        if resp.status().is_success() {
            let (parts, _) = resp.into_parts();
            let head = send.send_response(Response::from_parts(parts, ()));
            match tokio::time::timeout(write_idle, head).await {
                Ok(Ok(())) => super::tunnel::run_h3(&shared, tunnel, send, recv, peer).await,
                Ok(Err(e)) => tracing::debug!(peer = %ip, error = %e, "HTTP/3 tunnel not opened"),
                Err(_) => send.stop_stream(Code::H3_REQUEST_CANCELLED),
            }
            return;
        }
    }
    if let Err(e) = write_response(&mut send, resp, write_idle).await {
        if e.is::<WriteIdle>() {
            shared.metrics.write_idle_timeout(Proto::H3);
        }
        tracing::debug!(peer = %ip, error = %e, "HTTP/3 response not completed");
    }
}

/// Interim responses, each a HEADERS frame; a stream that takes none within
/// `write_idle` is left to the final response's write to find broken.
async fn write_hints(
    send: &mut H3Send,
    hints: impl IntoIterator<Item = Response<()>>,
    write_idle: Duration,
) {
    for hint in hints {
        match tokio::time::timeout(write_idle, send.send_response(hint)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/3 interim response not sent"),
            Err(_) => return,
        }
    }
}

/// Fields HTTP/3 forbids in a request (RFC 9114 4.2): connection-specific
/// ones, and `te` with anything but `trailers`.
fn connection_specific(h: &http::HeaderMap) -> bool {
    const BANNED: [&str; 5] = [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "proxy-connection",
    ];
    BANNED.iter().any(|n| h.contains_key(*n))
        || h.get_all(http::header::TE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// A response the client took no byte of for `client.write_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client took no response byte for {0:?}")]
struct WriteIdle(Duration);

/// Streams a response onto an HTTP/3 stream; each write waits for QUIC flow
/// control, so a slow client slows the backend read instead of filling memory.
/// A write that waits longer than `write_idle` (a client that opened no window)
/// cancels the stream, which drops the body and frees its upstream.
async fn write_response(
    send: &mut H3Send,
    resp: Response<Body>,
    write_idle: Duration,
) -> Result<(), upstream::BoxError> {
    let stalled = |send: &mut H3Send| -> upstream::BoxError {
        send.stop_stream(Code::H3_REQUEST_CANCELLED);
        Box::new(WriteIdle(write_idle))
    };
    let (parts, mut body) = resp.into_parts();
    match tokio::time::timeout(
        write_idle,
        send.send_response(Response::from_parts(parts, ())),
    )
    .await
    {
        Ok(sent) => sent?,
        Err(_) => return Err(stalled(send)),
    }
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(e);
            }
        };
        match frame.into_data() {
            Ok(data) => match tokio::time::timeout(write_idle, send.send_data(data)).await {
                Ok(sent) => sent?,
                Err(_) => return Err(stalled(send)),
            },
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    return Ok(());
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}
