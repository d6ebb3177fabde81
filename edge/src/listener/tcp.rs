//! TCP listeners: TLS (HTTP/1.1 and HTTP/2 by ALPN) and plaintext (HTTP/1.1 and
//! h2c by prior knowledge). Both advertise HTTP/3 with Alt-Svc.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::ALT_SVC;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

use super::h1::Parkable;
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
    pub(super) h1: hyper::server::conn::http1::Builder,
    h2: auto::Builder<TokioExecutor>,
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(c.max_concurrent_streams)
            .max_header_list_size(u32::try_from(backstop(c.max_header_bytes)).unwrap_or(u32::MAX))
            .adaptive_window(true)
            .initial_connection_window_size(1024 * 1024);
        Self {
            h1,
            h2: builder.http2_only(),
            shared,
            tls,
            alt_svc,
            redirect: None,
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

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Some(tls) = self.tls.clone() {
            // Boxed: a plaintext connection's task stays the size of its own state,
            // not of a TLS handshake's (about 7 KiB when inline).
            return Box::pin(self.serve_tls(tls, stream, peer)).await;
        }
        let client = &self.shared.config.client;
        let Some(proto) = sniff_h2c(&stream, client.header_read_timeout).await else {
            return;
        };
        self.serve_http(stream, peer, proto, None).await
    }

    async fn serve_tls(self: Arc<Self>, tls: TlsAcceptor, stream: TcpStream, peer: SocketAddr) {
        // Boxed too: the handshake's state is dropped once it is done.
        let accept = Box::pin(tls.accept(stream));
        let handshake =
            tokio::time::timeout(self.shared.config.tls.handshake_timeout, accept).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let proto = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::H2,
            _ => Proto::H1,
        };
        let sni = stream.get_ref().1.server_name();
        let sni = self.shared.certs.zip(sni).map(|(c, n)| Sni::new(c, n));
        self.serve_http(stream, peer, proto, sni).await;
    }

    async fn serve_http<I: Parkable>(
        self: Arc<Self>,
        io: I,
        peer: SocketAddr,
        proto: Proto,
        sni: Option<Sni>,
    ) {
        let _open = self.shared.metrics.connection(proto);
        let peer = Peer {
            ip: peer.ip(),
            tls: self.tls.is_some(),
            sni,
        };
        if proto == Proto::H1 {
            return super::h1::serve(self, io, peer).await;
        }
        // Boxed: the HTTP/2 state stays out of the (small) parked HTTP/1.1 task.
        Box::pin(self.serve_h2(io, peer)).await;
    }

    async fn serve_h2<I: Parkable>(self: Arc<Self>, io: I, peer: Peer) {
        let active = Arc::new(AtomicBool::new(true));
        let io = TokioIo::new(Tracked {
            io,
            active: active.clone(),
        });
        let server = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.respond(peer, req).await) }
        });
        let conn = self.h2.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = self.shared.config.client.idle_timeout;
        let mut watch = IdleWatch::new(idle, active);
        let mut closing = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(peer = %peer.ip, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                () = watch.idle(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = self.shared.draining.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }

    pub(super) async fn respond(&self, peer: Peer, req: Request<Incoming>) -> Response<Body> {
        if let Some(resp) = self
            .redirect
            .and_then(|p| super::redirect::to_https(&req, p))
        {
            return resp;
        }
        let proxy = self.shared.proxy.load();
        let mut resp =
            pipeline::handle(&proxy, &self.shared.metrics, peer, req.map(Body::Incoming)).await;
        if let Some(v) = &self.alt_svc {
            resp.headers_mut().insert(ALT_SVC, v.clone());
        }
        resp
    }
}

/// The protocol libraries' own header limit: twice the configured one.
pub(crate) fn backstop(limit: usize) -> usize {
    limit.saturating_mul(2)
}

/// Tells HTTP/2 prior knowledge (the `PRI * HTTP/2.0` preface) from HTTP/1.1 by
/// peeking, without consuming. `None` when the client closed or sent nothing in time.
async fn sniff_h2c(stream: &TcpStream, timeout: Duration) -> Option<Proto> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
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
            return Some(Proto::H1);
        }
        if n >= 4 {
            return Some(Proto::H2);
        }
        // "P" or "PR" alone could still become POST or PRI: wait for more bytes.
        tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
            .await
            .ok()?;
    }
}

/// Closes a connection that moved no bytes for the idle timeout. The IO marks
/// activity with one relaxed store; a timer checks it four times per period.
struct IdleWatch {
    tick: Duration,
    quiet_ticks: u32,
    active: Arc<AtomicBool>,
}

impl IdleWatch {
    fn new(idle: Duration, active: Arc<AtomicBool>) -> Self {
        Self {
            tick: (idle / 4).max(Duration::from_millis(10)),
            quiet_ticks: 0,
            active,
        }
    }

    async fn idle(&mut self) {
        loop {
            tokio::time::sleep(self.tick).await;
            if self.active.swap(false, Ordering::Relaxed) {
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= 4 {
                    return;
                }
            }
        }
    }
}

/// An IO that records that bytes moved.
struct Tracked<I> {
    io: I,
    active: Arc<AtomicBool>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if polled.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.active.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
