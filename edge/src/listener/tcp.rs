//! TCP listeners: TLS (HTTP/1.1 and HTTP/2 by ALPN) and plaintext (HTTP/1.1 and
//! h2c by prior knowledge). Both advertise HTTP/3 with Alt-Svc. This module
//! accepts, shakes hands and tells the protocol; `h1` and `h2` serve it. TLS
//! early data (`tls.early_data`) is put back in front of the stream and its
//! requests marked (`early`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::ALT_SVC;
use http::{HeaderValue, Request, Response};
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use super::early::{EarlyRequests, Prefixed};
use super::h1::Parkable;
use super::proxy_protocol::Accepted;
use super::{accept_backoff, Shared};
use crate::body::Body;
use crate::metrics::Proto;
use crate::pipeline::{self, Peer};
use crate::tls::Sni;

/// One TCP listener's fixed settings.
pub struct TcpServer {
    pub shared: Arc<Shared>,
    pub tls: Option<TlsAcceptor>,
    /// `h3=":PORT"; ma=N`, when HTTP/3 is advertised.
    pub alt_svc: Option<HeaderValue>,
    /// The https port to send plaintext requests to (`http_mode = "redirect"`).
    pub redirect: Option<u16>,
    /// The open ACME order's HTTP-01 answers (plaintext listener, `[acme]` on).
    pub acme: Option<Arc<crate::acme::Challenges>>,
    pub(super) h1: hyper::server::conn::http1::Builder,
    pub(super) h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl TcpServer {
    pub fn new(
        shared: Arc<Shared>,
        tls: Option<TlsAcceptor>,
        alt_svc: Option<HeaderValue>,
    ) -> Self {
        let c = &shared.config.client;
        // hyper's header timer only runs with a timer set. The max_* are backstops
        // only: the pipeline enforces the configured limits with a proper 431 page;
        // these stop what is far past them before it is parsed.
        let h1 = super::h1::builder(
            c.header_read_timeout,
            super::h1::header_backstop(c.max_headers),
            backstop(c.max_header_bytes).max(8192),
        );
        let h2 = super::h2::builder(
            c,
            u32::try_from(backstop(c.max_header_bytes)).unwrap_or(u32::MAX),
            shared.config.upgrade.allows("websocket").is_some(),
        );
        Self {
            h1,
            h2,
            shared,
            tls,
            alt_svc,
            redirect: None,
            acme: None,
        }
    }

    /// Accepts until draining starts, within the connection slots and only while
    /// the overload guard lets it.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let shared = &self.shared;
        loop {
            let room = async {
                shared.overload.accepting().await;
                shared.slots.global().await
            };
            let permit = tokio::select! {
                p = room => match p {
                    Some(p) => p,
                    None => return,
                },
                () = shared.draining.cancelled() => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shared.draining.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn(stream, peer, permit),
                Err(e) => {
                    let name = if self.tls.is_some() { "https" } else { "http" };
                    shared.slots.accept_failed(&e, &shared.metrics, name);
                    if let Some(pause) = accept_backoff(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Serves an accepted connection on a task of its own, or closes it at once
    /// when its source already holds its share of the slots.
    fn spawn(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let metrics = &self.shared.metrics;
        let Some(slot) = self.shared.slots.admit(permit, peer.ip(), metrics) else {
            // A reset rather than a FIN: nothing for the peer to hold half-open.
            if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
                tracing::debug!(error = %e, "SO_LINGER not set");
            }
            return;
        };
        let server = self.clone();
        self.shared.tasks.spawn(async move {
            server.serve(stream, peer).await;
            drop(slot);
        });
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let Some(peer) = self.proxy_header(&mut stream, peer).await else {
            return;
        };
        if let Some(tls) = self.tls.clone() {
            // Boxed: a plaintext connection's task stays the size of its own state,
            // not of a TLS handshake's (about 7 KiB when inline).
            return Box::pin(self.serve_tls(tls, stream, peer)).await;
        }
        let client = &self.shared.config.client;
        let Some(proto) = sniff_h2c(&stream, client.header_read_timeout).await else {
            return;
        };
        self.serve_http(stream, peer, proto, None, None, EarlyRequests::default())
            .await
    }

    /// The client's address: the peer's, or what a trusted load balancer's
    /// PROXY header names. `None` when the connection is to be closed.
    async fn proxy_header(&self, stream: &mut TcpStream, peer: SocketAddr) -> Option<IpAddr> {
        let config = &self.shared.config;
        if !config.proxy_protocol.enabled() {
            return Some(peer.ip());
        }
        let timeout = config.client.header_read_timeout;
        let read = super::proxy_protocol::read(stream, peer.ip(), &config.proxy_protocol, timeout);
        match read.await {
            Ok(Accepted::None) => Some(peer.ip()),
            Ok(Accepted::Local) => {
                self.shared.metrics.proxy_protocol("local");
                Some(peer.ip())
            }
            Ok(Accepted::Client { ip, label }) => {
                self.shared.metrics.proxy_protocol(label);
                Some(ip)
            }
            Err(refused) => {
                if let Some(label) = refused.label() {
                    self.shared.metrics.proxy_protocol(label);
                    tracing::debug!(%peer, reason = label, "PROXY protocol: connection closed");
                }
                None
            }
        }
    }

    async fn serve_tls(self: Arc<Self>, tls: TlsAcceptor, stream: TcpStream, peer: IpAddr) {
        // Boxed too: the handshake's state is dropped once it is done.
        let accept = Box::pin(tls.accept(stream));
        let handshake =
            tokio::time::timeout(self.shared.config.tls.handshake_timeout, accept).await;
        // Boxed: the connection's futures move the stream (rustls' whole state,
        // about 1.1 KiB) into each layer's state, and a moved-from value keeps
        // its slot, so inline it was there several times over (a 10 KiB task).
        let mut stream = match handshake {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                self.shared.metrics.handshake_failed("tls", tls_failure(&e));
                return tracing::debug!(%peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.shared.metrics.handshake_failed("tls", "timeout");
                return tracing::debug!(%peer, "TLS handshake timed out");
            }
        };
        let proto = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::H2,
            // A TLS-ALPN-01 validation: the handshake was the answer.
            Some(crate::tls::ACME_TLS_ALPN) => {
                let mut stream = stream;
                if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut stream).await {
                    tracing::debug!(%peer, error = %e, "closing an acme-tls/1 validation");
                }
                return;
            }
            _ => Proto::H1,
        };
        let tls = stream.get_ref().1;
        let sni = self
            .shared
            .certs
            .zip(tls.server_name())
            .map(|(c, n)| Sni::new(c, n));
        let client_cert = crate::tls::client_cert_value(tls.peer_certificates());
        // What the client sent in 0-RTT (tls.early_data), read before the stream.
        let ahead = super::early::take(stream.get_mut().1);
        let early = EarlyRequests::of(&ahead, proto);
        let stream = Prefixed { io: stream, ahead };
        self.serve_http(stream, peer, proto, sni, client_cert, early)
            .await;
    }

    async fn serve_http<I: Parkable>(
        self: Arc<Self>,
        io: I,
        peer: IpAddr,
        proto: Proto,
        sni: Option<Sni>,
        client_cert: Option<http::HeaderValue>,
        early: EarlyRequests,
    ) {
        let _open = self.shared.metrics.connection(proto);
        let peer = Peer {
            ip: peer,
            tls: self.tls.is_some(),
            sni,
            client_cert,
            early_data: false,
        };
        if proto == Proto::H1 {
            return super::h1::serve(self, io, peer, early).await;
        }
        // Boxed: the HTTP/2 state stays out of the (small) parked HTTP/1.1 task.
        Box::pin(super::h2::serve(self, io, peer, early)).await;
    }

    pub(super) async fn respond(&self, peer: Peer, mut req: Request<Body>) -> Response<Body> {
        // hyper's way to write a 1xx before the response, as the pool's sink.
        if let Some(tx) = req
            .extensions_mut()
            .remove::<hyper::ext::InformationalSender>()
        {
            let proto = if req.version() == http::Version::HTTP_2 {
                Proto::H2
            } else {
                Proto::H1
            };
            let passed = self.shared.metrics.early_hints(proto);
            req.extensions_mut().insert(super::hint_sink(tx, passed));
        }
        if let Some(resp) = self
            .acme
            .as_ref()
            .and_then(|c| super::redirect::acme_answer(c, &req))
        {
            return resp;
        }
        if let Some(resp) = self
            .redirect
            .and_then(|p| super::redirect::to_https(&req, p))
        {
            return resp;
        }
        let proxy = self.shared.proxy.load();
        let ip = peer.ip;
        let mut resp = pipeline::handle(&proxy, &self.shared.metrics, peer, req).await;
        if let Some(v) = &self.alt_svc {
            resp.headers_mut().insert(ALT_SVC, v.clone());
            self.shared.upgrades.advertised(ip);
        }
        resp
    }
}

/// The protocol libraries' own header limit: twice the configured one.
pub(crate) fn backstop(limit: usize) -> usize {
    limit.saturating_mul(2)
}

/// Tells HTTP/2 prior knowledge (the `PRI * HTTP/2.0` preface) from HTTP/1.1 by
/// peeking, without consuming. `None` when the client closed or sent nothing in
/// time, or sent a broken h2 preface: one that starts `PRI * HTTP/2.0` (no
/// HTTP/1.1 request does) and goes wrong after; that client gets an h2
/// GOAWAY(PROTOCOL_ERROR) rather than an HTTP/1.1 400 it cannot parse.
async fn sniff_h2c(stream: &TcpStream, timeout: Duration) -> Option<Proto> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const H2_ONLY: usize = b"PRI * HTTP/2.0".len();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            if n >= H2_ONLY && buf[..H2_ONLY] == PREFACE[..H2_ONLY] {
                refuse_preface(stream);
                return None;
            }
            return Some(Proto::H1);
        }
        if n == PREFACE.len() {
            return Some(Proto::H2);
        }
        // A prefix alone ("P" could still become POST, "PRI * HTTP/2.0\r\n" a
        // broken preface): wait for more bytes.
        tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
            .await
            .ok()?;
    }
}

/// Answers a broken h2 preface with GOAWAY(PROTOCOL_ERROR, last stream 0) and
/// half-closes. What the client sent is read off first, so the close that
/// follows is a FIN and the GOAWAY is not lost to a reset.
fn refuse_preface(stream: &TcpStream) {
    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    if let Err(e) = stream.try_write(&GOAWAY) {
        tracing::debug!(error = %e, "GOAWAY for a broken h2 preface not sent");
    }
    if let Err(e) = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write) {
        tracing::debug!(error = %e, "shutdown after a broken h2 preface");
    }
}

/// Why a TLS handshake failed, as one of a few metric labels.
fn tls_failure(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoApplicationProtocol | E::PeerIncompatible(_)) => "no_shared_protocol",
        Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => "bad_certificate",
        Some(E::AlertReceived(_)) => "alert",
        Some(
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_),
        ) => "bad_message",
        Some(_) => "other",
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "other",
        },
    }
}
