//! HTTP/1.1 client connections that hold no hyper state while idle.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and its dispatcher
//! alive for a connection's whole life, which made an idle keep-alive connection
//! cost about 33 KiB. Here a connection alternates between two phases:
//!
//! - **parked**: only the socket (plus any bytes a client sent ahead) and a small
//!   task. It waits for readability, the header/idle deadline or draining.
//! - **burst**: a hyper HTTP/1.1 connection serves requests as usual. As soon as
//!   hyper is provably idle — no request in flight, every response byte flushed,
//!   the last request had no body left to read, keep-alive intact — it is taken
//!   apart with `into_parts` (which hands back the socket and any read-ahead, so
//!   pipelined bytes survive) and the connection parks again.
//!
//! hyper never sees the parking: it never sends `Connection: close` for it, and a
//! request that closes the connection (HTTP/1.0, `Connection: close`, an error)
//! is finished by hyper itself exactly as before.
//!
//! A client that accepts no response byte for `client.write_idle_timeout` (a
//! slow reader) has its connection reset, which drops the response body and
//! with it the upstream request. What waits for such a client meanwhile is
//! hyper's write buffer (`max_buf_size`, plus the body chunks it holds) and,
//! upstream, the client connection's read buffer (HTTP/1.1) or the stream's
//! flow-control window (h2).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::early::EarlyRequests;
use super::tcp::TcpServer;
use crate::body::Body;
use crate::metrics::Proto;
use crate::pipeline::{Peer, Tunnel};

/// A client transport that can wait for the next request without a read buffer.
pub(crate) trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath, to wait on its readability.
    fn tcp(&self) -> &TcpStream;
    /// Bytes already decoded in user space (TLS plaintext) that a read returns at once.
    fn has_buffered(&self) -> bool;
}

impl Parkable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn has_buffered(&self) -> bool {
        false
    }
}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn has_buffered(&self) -> bool {
        // rustls wants more TLS records unless plaintext (or a close) is waiting.
        !self.get_ref().1.wants_read()
    }
}

impl<I: Parkable> Parkable for Box<I> {
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }

    fn has_buffered(&self) -> bool {
        (**self).has_buffered()
    }
}

/// The socket between bursts, with what the client sent ahead of the last one.
pub(crate) struct Parked<I> {
    io: I,
    ahead: Bytes,
}

/// How a burst ended.
enum Burst<I> {
    /// hyper finished the connection (close, error, drain or idle timeout).
    Ended,
    /// hyper wrote a 101 the pipeline agreed to: the connection is a tunnel now.
    Switched(super::tunnel::Switched),
    /// hyper was idle and handed the socket back; `served` requests in this burst.
    Parked(Parked<I>, usize),
}

/// Serves one HTTP/1.1 connection until it closes.
pub(crate) async fn serve<I: Parkable>(
    server: Arc<TcpServer>,
    io: I,
    peer: Peer,
    early: EarlyRequests,
) {
    let client = &server.shared.config.client;
    let wait = client.header_read_timeout.min(client.idle_timeout);
    let mut parked = Parked {
        io,
        ahead: Bytes::new(),
    };
    // A burst that ends with part of a request head read and nothing served made no
    // progress: wait for more bytes, within the deadline the head began under.
    let mut deadline = Instant::now() + wait;
    let mut must_wait = false;
    // When the last burst parked; None before the first request.
    let mut parked_at: Option<Instant> = None;
    loop {
        // Park as soon as hyper is idle, unless the client came back quickly last time.
        let mut eager = false;
        if must_wait || (parked.ahead.is_empty() && !parked.io.has_buffered()) {
            let _parked = server.shared.metrics.parked();
            // Overload sheds parked connections first (oldest first).
            let ticket = server.shared.overload.idle();
            let shed = async {
                match &ticket {
                    Some(t) => t.shed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = parked.io.tcp().readable() => if ready.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
                () = server.shared.draining.cancelled() => return,
                () = shed => return,
            }
            eager = parked_at.is_none_or(|at| at.elapsed() >= PARK_AFTER);
        }
        // Boxed so the parked task holds only the socket, not the burst's state.
        match Box::pin(burst(&server, parked, peer.clone(), &early, eager)).await {
            Burst::Ended => return,
            Burst::Switched(s) => {
                return Box::pin(super::tunnel::run(&server.shared, s, peer)).await
            }
            Burst::Parked(p, served) => {
                // Part of a head and nothing served: hyper read all there was.
                must_wait = !p.ahead.is_empty() && served == 0;
                if !must_wait {
                    deadline = Instant::now() + wait;
                }
                parked = p;
                parked_at = Some(Instant::now());
            }
        }
    }
}

/// Runs hyper on the connection until it ends or is idle: at once when `eager`,
/// else once it has been quiet for a tick of the watch.
async fn burst<I: Parkable>(
    server: &Arc<TcpServer>,
    parked: Parked<I>,
    peer: Peer,
    early: &EarlyRequests,
    eager: bool,
) -> Burst<I> {
    let state = Arc::new(BurstState::default());
    let io = TokioIo::new(BurstIo {
        io: parked.io,
        ahead: parked.ahead,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let svc_server = server.clone();
    let svc_peer = peer.clone();
    let svc_early = early.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        svc_state.begin(&req);
        // hyper's half of an upgrade the request asked for; it completes only
        // if the response is a 101.
        let client_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let server = svc_server.clone();
        let state = svc_state.clone();
        let mut peer = svc_peer.clone();
        // Here, not in the future: hyper calls this in request order.
        peer.early_data = svc_early.next();
        async move {
            let mut resp = server.respond(peer, req.map(Body::Incoming)).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                state.switch(&mut resp, client_upgrade);
            }
            state.respond(resp.headers());
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, state }))
        }
    });
    let mut conn = server.h1.serve_connection(io, service).with_upgrades();
    let client = &server.shared.config.client;
    let watch = watch(&state, client.idle_timeout, client.write_idle_timeout);
    let draining = server.shared.draining.cancelled();
    tokio::pin!(watch, draining);
    let mut closing = false;
    let ended = std::future::poll_fn(|cx| {
        // A stalled writer is cut off even while closing: graceful shutdown
        // waits for the response, which this client never takes. Once shut
        // down, the watch only ever reports a stall.
        match watch.as_mut().poll(cx) {
            Poll::Ready(Watch::Park) => return Poll::Ready(Ended::Park),
            Poll::Ready(Watch::Stalled) => return Poll::Ready(Ended::Stalled),
            Poll::Ready(Watch::Idle) => closing = true,
            Poll::Pending if !closing => closing = draining.as_mut().poll(cx).is_ready(),
            Poll::Pending => {}
        }
        if closing && !state.shut_down.swap(true, Ordering::Relaxed) {
            Pin::new(&mut conn).graceful_shutdown();
        }
        if let Poll::Ready(done) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(Ended::Done(done));
        }
        if eager && !closing && state.idle() {
            return Poll::Ready(Ended::Park);
        }
        Poll::Pending
    })
    .await;
    match ended {
        Ended::Park => {}
        Ended::Done(done) => {
            let switched = state.switched.lock().map(|mut s| s.take());
            if let (Ok(Some(s)), Ok(())) = (switched, &done) {
                return Burst::Switched(s);
            }
            if let Err(e) = done {
                tracing::debug!(peer = %peer.ip, error = %e, "client connection ended with an error");
            }
            return Burst::Ended;
        }
        Ended::Stalled => {
            server.shared.metrics.write_idle_timeout(Proto::H1);
            tracing::debug!(peer = %peer.ip, "client took no response byte for client.write_idle_timeout: reset");
            if let Some(parts) = conn.into_parts() {
                reset(parts.io.into_inner().io.tcp());
            }
            return Burst::Ended;
        }
    }
    // `None` only after an upgrade, which ends the burst as `Done`.
    let Some(parts) = conn.into_parts() else {
        return Burst::Ended;
    };
    let io = parts.io.into_inner();
    // What hyper read but did not parse comes first, then what it never read. A
    // copy, so the parked connection does not pin hyper's 8 KiB read buffer.
    let ahead = if parts.read_buf.is_empty() {
        io.ahead
    } else {
        let mut both = Vec::with_capacity(parts.read_buf.len() + io.ahead.len());
        both.extend_from_slice(&parts.read_buf);
        both.extend_from_slice(&io.ahead);
        Bytes::from(both)
    };
    let served = state.served.load(Ordering::Relaxed);
    Burst::Parked(Parked { io: io.io, ahead }, served)
}

/// A client that sends its next request sooner than this after a park is busy: its
/// next burst parks only after a quiet tick of this length. Parking after every
/// response would rebuild hyper's state (buffers, dispatcher, about 20k
/// instructions) for every request of a busy keep-alive connection.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// Why a burst's poll loop stopped.
enum Ended {
    /// hyper is idle: take the socket back.
    Park,
    /// hyper finished the connection.
    Done(Result<(), hyper::Error>),
    /// The client took no response byte for the write-idle timeout.
    Stalled,
}

/// Closes with a reset: the unsent response is dropped at once, in the kernel too,
/// instead of waiting in the send buffer for a client that does not read.
fn reset(tcp: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER not set");
    }
}

/// What the burst's watch saw.
enum Watch {
    /// hyper is idle and no bytes moved for a whole tick: take the socket back.
    Park,
    /// No bytes moved for the idle timeout (a stalled exchange): close.
    Idle,
    /// Response bytes waited on the client for the write-idle timeout: reset.
    Stalled,
}

/// Ticks every `PARK_AFTER` (or a quarter of either timeout, if shorter); a
/// periodic timer rather than one reset per request keeps this off the hot path.
async fn watch(state: &BurstState, idle: Duration, write_idle: Duration) -> Watch {
    let tick = PARK_AFTER
        .min(idle / 4)
        .min(write_idle / 4)
        .max(Duration::from_millis(10));
    let mut quiet = Duration::ZERO;
    let mut stalled = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let wrote = state.wrote.swap(false, Ordering::Relaxed);
        if wrote || !state.write_blocked.load(Ordering::Relaxed) {
            stalled = Duration::ZERO;
        } else {
            stalled += tick;
            if stalled >= write_idle {
                return Watch::Stalled;
            }
        }
        if state.shut_down.load(Ordering::Relaxed) {
            continue;
        }
        if state.active.swap(false, Ordering::Relaxed) {
            quiet = Duration::ZERO;
            continue;
        }
        if state.idle() {
            return Watch::Park;
        }
        quiet += tick;
        if quiet >= idle {
            return Watch::Idle;
        }
    }
}

/// What the service, the response bodies and the IO tell the burst about hyper's state.
#[derive(Default)]
pub(crate) struct BurstState {
    /// Bytes moved since the watch last looked.
    pub(crate) active: AtomicBool,
    /// Requests whose response body hyper still holds.
    in_flight: AtomicUsize,
    /// Requests started in this burst.
    served: AtomicUsize,
    /// The last request had a body hyper may still be reading.
    body_pending: AtomicBool,
    /// hyper will close the connection after the current exchange.
    closing: AtomicBool,
    /// Bytes were written since the IO was last flushed.
    unflushed: AtomicBool,
    /// Response bytes reached the socket since the watch last looked.
    wrote: AtomicBool,
    /// The last write or flush found the socket full: the client is not reading.
    write_blocked: AtomicBool,
    /// hyper was told to finish: from then on only a stall ends the burst early.
    shut_down: AtomicBool,
    /// The tunnel a 101 being written opens, once hyper hands the socket over.
    switched: std::sync::Mutex<Option<super::tunnel::Switched>>,
}

impl BurstState {
    fn begin(&self, req: &Request<Incoming>) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.body_pending
            .store(!req.body().is_end_stream(), Ordering::Relaxed);
        if req.version() != Version::HTTP_11 || wants_close(req.headers()) {
            self.closing.store(true, Ordering::Relaxed);
        }
    }

    /// A 101 is an upgrade only when the pipeline agreed to one (a
    /// [`Tunnel`] on it) and hyper holds the client's side: then the burst
    /// ends in the tunnel. Any other 101 (a backend switching a request that
    /// offered nothing) would leave the client speaking to nobody: 502.
    fn switch(&self, resp: &mut http::Response<Body>, client: Option<OnUpgrade>) {
        let tunnel = resp.extensions_mut().remove::<Tunnel>();
        if let (Some(tunnel), Some(client)) = (tunnel, client) {
            if let Ok(mut s) = self.switched.lock() {
                *s = Some(super::tunnel::Switched { tunnel, client });
                self.closing.store(true, Ordering::Relaxed);
                return;
            }
        }
        tracing::warn!("a backend answered 101 to a request that offered no upgrade: 502");
        *resp = http::Response::new(Body::Empty);
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
    }

    fn respond(&self, headers: &HeaderMap) {
        if wants_close(headers) {
            self.closing.store(true, Ordering::Relaxed);
        }
    }

    /// hyper waits for the next request head and has nothing left to write.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.body_pending.load(Ordering::Relaxed)
            && !self.closing.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }
}

/// `Connection: close` (any token `close`, case-insensitive).
fn wants_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// A response body that tells the burst when hyper is done with it.
struct Tracked {
    body: Body,
    state: Arc<BurstState>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket during a burst: replays bytes read ahead, records activity for the
/// watch and whether everything written has been flushed.
struct BurstIo<I> {
    io: I,
    ahead: Bytes,
    state: Arc<BurstState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for BurstIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.state.active.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for BurstIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        // hyper flushes the IO only once its own write buffer is empty.
        match polled {
            Poll::Ready(Ok(())) => {
                self.state.unflushed.store(false, Ordering::Relaxed);
                self.state.write_blocked.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<I> BurstIo<I> {
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => {
                self.state.active.store(true, Ordering::Relaxed);
                self.state.write_blocked.store(false, Ordering::Relaxed);
                if *n > 0 {
                    self.state.unflushed.store(true, Ordering::Relaxed);
                    self.state.wrote.store(true, Ordering::Relaxed);
                }
            }
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
    }
}

/// hyper parses up to this many header fields in arrays on the stack; any
/// explicit `max_headers` makes it allocate and fill two arrays of that size on
/// the heap for every request (3% of h1 throughput at 200, measured).
const HYPER_STACK_HEADERS: usize = 100;

/// hyper's own header-count limit for a configured one. While the configured
/// limit fits in hyper's stack arrays, `None`: a request over the configured
/// limit gets edge's 431 page (with its request id) up to 100 fields, and
/// hyper's bare 431 beyond. Above 100, twice the configured limit, as for bytes.
pub(crate) fn header_backstop(configured: usize) -> Option<usize> {
    (configured > HYPER_STACK_HEADERS).then(|| configured.saturating_mul(2))
}

/// hyper's HTTP/1.1 server settings for client connections.
pub(crate) fn builder(
    header_read_timeout: Duration,
    max_headers: Option<usize>,
    max_buf_size: usize,
) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(max_buf_size)
        // 103 Early Hints from backends (`tcp::Server::respond`).
        .informational(true);
    if let Some(n) = max_headers {
        b.max_headers(n);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close_tokens() {
        let mut h = HeaderMap::new();
        assert!(!wants_close(&h));
        h.insert(CONNECTION, http::HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&h));
        h.insert(CONNECTION, http::HeaderValue::from_static("Upgrade, Close"));
        assert!(wants_close(&h));
    }
}
