//! HTTP/2 client connections (TLS with ALPN h2, or h2c by prior knowledge),
//! served by hyper with the bounds hyper and the h2 crate leave to the caller.
//!
//! One periodic tick per connection (a quarter of the shortest timeout) checks:
//!
//! - **preface**: the client preface and its first SETTINGS frame must have
//!   arrived within `client.header_read_timeout`, else the connection is dropped
//!   (hyper waits for it forever, and a graceful shutdown during the handshake
//!   only sets a flag).
//! - **write stall**: output pending and no byte written for
//!   `client.write_idle_timeout` (a client that floods SETTINGS/PING and reads
//!   none of the replies, a full TCP window): reset. h2 itself bounds memory
//!   here — one pending PONG and one pending SETTINGS ACK, and it stops reading
//!   the socket until they are written — but it never gives up.
//! - **idle**: no byte moved for `client.idle_timeout`: graceful shutdown.
//! - **GOAWAY grace**: once edge sent GOAWAY (idle, drain, abuse), the
//!   connection is closed `client.goaway_grace` later whatever the peer does
//!   (h2's two-step shutdown waits for a PING ACK that a peer may never send).
//! - **per-stream write idle**: a response body the client took nothing of for
//!   `client.write_idle_timeout` (zero flow-control window) is severed, which
//!   drops its upstream body and frees the upstream connection.
//! - **premature resets**: streams the client reset before their response was
//!   complete; at ≥ 50% of ≥ 100 streams the connection is told GOAWAY and
//!   closed within a second; streams opened after it are never handed to the
//!   pipeline. hyper only sends a graceful GOAWAY (NO_ERROR), so [`Wire`]
//!   follows the frame boundaries of what hyper writes and, once the connection
//!   is judged abusive, turns the NO_ERROR of its GOAWAY frames into
//!   ENHANCE_YOUR_CALM (RFC 9113 7) in a copy of the outgoing bytes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::early::EarlyRequests;
use super::h1::Parkable;
use super::h2_frames::Frames;
use super::idle::{tick_of, Severable, Streams};
use super::tcp::TcpServer;
use crate::body::Body;
use crate::config::Client;
use crate::metrics::Proto;
use crate::pipeline::Peer;

/// Premature resets are judged once a connection has opened this many streams.
const PREMATURE_MIN_STREAMS: u32 = 100;
/// After an abuse GOAWAY the connection gets at most this long to flush it.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// hyper's HTTP/2 server settings for client connections.
/// With `extended_connect`, SETTINGS_ENABLE_CONNECT_PROTOCOL is sent: clients
/// may open WebSockets over HTTP/2 (RFC 8441).
pub(super) fn builder(
    c: &Client,
    max_header_list: u32,
    extended_connect: bool,
) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    if extended_connect {
        b.enable_connect_protocol();
    }
    b.timer(TokioTimer::new())
        .max_concurrent_streams(c.max_concurrent_streams)
        .max_header_list_size(max_header_list)
        .adaptive_window(true)
        .initial_connection_window_size(1024 * 1024)
        // 103 Early Hints from backends (`tcp::Server::respond`).
        .informational(true);
    b
}

/// Why edge closed an HTTP/2 connection (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    PrefaceTimeout,
    WriteStall,
    GoawayGrace,
    PrematureResets,
}

impl Close {
    fn as_str(self) -> &'static str {
        match self {
            Close::PrefaceTimeout => "preface_timeout",
            Close::WriteStall => "write_stall",
            Close::GoawayGrace => "goaway_grace",
            Close::PrematureResets => "premature_resets",
        }
    }
}

/// What the service and the IO tell the connection's watchdog.
#[derive(Default)]
struct ConnState {
    /// Bytes moved since the last tick.
    active: AtomicBool,
    /// The preface and the first SETTINGS frame have been read.
    preface_done: AtomicBool,
    /// Response bytes reached the socket since the last tick.
    wrote: AtomicBool,
    /// The last write or flush found the socket full.
    write_blocked: AtomicBool,
    /// Streams handed to the service.
    streams: AtomicU32,
    /// Streams whose response head is still being made (the service runs).
    in_service: AtomicU32,
    /// Streams the client reset before their response was complete.
    premature: AtomicU32,
    /// Set once the connection is judged abusive: new streams go nowhere.
    refusing: AtomicBool,
    abusive: Notify,
    watched: Streams,
}

impl ConnState {
    /// No stream in progress: no response being made, none streaming.
    fn idle(&self) -> bool {
        self.in_service.load(Ordering::Relaxed) == 0 && self.watched.is_empty()
    }

    fn premature_reset(&self, n: u32, metrics: &crate::metrics::Metrics) {
        if n == 0 {
            return;
        }
        metrics.h2_premature_resets(u64::from(n));
        let premature = self.premature.fetch_add(n, Ordering::Relaxed) + n;
        let streams = self.streams.load(Ordering::Relaxed);
        if streams >= PREMATURE_MIN_STREAMS && premature.saturating_mul(2) >= streams {
            self.refusing.store(true, Ordering::Relaxed);
            self.abusive.notify_one();
        }
    }
}

/// Counts a stream as reset early unless its response head was produced.
struct Unanswered<'a> {
    state: &'a ConnState,
    server: &'a TcpServer,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.state.in_service.fetch_sub(1, Ordering::Relaxed);
        if !self.answered {
            self.state.premature_reset(1, &self.server.shared.metrics);
        }
    }
}

/// Serves one HTTP/2 connection until it ends or a bound closes it.
pub(super) async fn serve<I: Parkable>(
    server: Arc<TcpServer>,
    io: I,
    peer: Peer,
    early: EarlyRequests,
) {
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Wire {
        io,
        state: state.clone(),
        head: [0; 33],
        seen: 0,
        out: Frames::default(),
    });
    let svc_server = server.clone();
    let svc_state = state.clone();
    let svc_peer = peer.clone();
    let service = hyper::service::service_fn(move |req: Request| {
        let server = svc_server.clone();
        let state = svc_state.clone();
        let mut peer = svc_peer.clone();
        // Here, not in the future: hyper calls this as it accepts each stream,
        // in the order their HEADERS arrived.
        peer.early_data = early.next();
        async move { Ok::<_, Infallible>(stream(&server, &state, peer, req).await) }
    });
    let conn = server.h2.serve_connection(io, service);
    tokio::pin!(conn);
    let c = &server.shared.config.client;
    let mut watch = Watch::new(c);
    let mut ticker = tokio::time::interval(watch.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Under overload (limits.memory_high) idle connections are shed oldest
    // first; this one holds its place in that order from the start, and when
    // its turn comes while a stream is in progress it queues again at the end.
    let overload = &server.shared.overload;
    let mut ticket = overload.idle();
    let closed = loop {
        let shed = async {
            match &ticket {
                Some(t) => t.shed().await,
                None => std::future::pending().await,
            }
        };
        let mut shed_now = false;
        tokio::select! {
            () = shed, if watch.goaway.is_none() => shed_now = true,
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(peer = %peer.ip, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = ticker.tick() => {
                let severed = state.watched.sweep();
                if severed.severed > 0 {
                    for _ in 0..severed.severed {
                        server.shared.metrics.write_idle_timeout(Proto::H2);
                    }
                    tracing::debug!(peer = %peer.ip, n = severed.severed, "h2 streams cut for client.write_idle_timeout");
                }
                let dropped = u32::try_from(severed.dropped).unwrap_or(u32::MAX);
                state.premature_reset(dropped, &server.shared.metrics);
                match watch.check(&state) {
                    Some(Verdict::Shutdown) => conn.as_mut().graceful_shutdown(),
                    Some(Verdict::Close(why)) => break why,
                    None => {}
                }
            }
            () = server.shared.draining.cancelled(), if watch.goaway.is_none() => {
                watch.goaway = Some(Instant::now() + c.goaway_grace);
                conn.as_mut().graceful_shutdown();
            }
            () = state.abusive.notified(), if !watch.abusive => {
                watch.abusive = true;
                let by = Instant::now() + ABUSE_GRACE.min(c.goaway_grace);
                watch.goaway = Some(watch.goaway.map_or(by, |g| g.min(by)));
                tracing::info!(peer = %peer.ip, "h2 client reset most streams before their response: GOAWAY");
                conn.as_mut().graceful_shutdown();
            }
        }
        if shed_now {
            if state.idle() {
                tracing::debug!(peer = %peer.ip, "overload: idle h2 connection shed");
                watch.goaway = Some(Instant::now() + c.goaway_grace);
                conn.as_mut().graceful_shutdown();
                ticket = None;
            } else {
                ticket = overload.idle();
            }
        }
    };
    let why = if closed == Close::GoawayGrace && watch.abusive {
        Close::PrematureResets
    } else {
        closed
    };
    server.shared.metrics.h2_connection_closed(why.as_str());
    tracing::debug!(peer = %peer.ip, reason = why.as_str(), "h2 connection closed by edge");
}

type Request = hyper::Request<Incoming>;

/// One stream: the pipeline's answer, its body watched for write progress.
async fn stream(
    server: &TcpServer,
    state: &ConnState,
    peer: Peer,
    mut req: Request,
) -> hyper::Response<Severable<Body>> {
    state.streams.fetch_add(1, Ordering::Relaxed);
    state.in_service.fetch_add(1, Ordering::Relaxed);
    if state.refusing.load(Ordering::Relaxed) {
        // After an abuse GOAWAY: held until the connection closes, never forwarded.
        std::future::pending::<()>().await;
    }
    let mut guard = Unanswered {
        state,
        server,
        answered: false,
    };
    // hyper's half of an extended CONNECT (RFC 8441); it completes only if
    // the response is a 2xx.
    let client_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let mut resp = server
        .respond(peer.clone(), req.map(|b| Body::boxed(DrainOnDrop(Some(b)))))
        .await;
    if let Some(tunnel) = resp.extensions_mut().remove::<crate::pipeline::Tunnel>() {
        tunnel_stream(server, peer, tunnel, client_upgrade, &mut resp);
    }
    guard.answered = true;
    resp.map(|body| {
        let (body, sever) = Severable::new(body);
        state.watched.register(sever);
        body
    })
}

/// Runs the tunnel of an extended CONNECT the backend switched (its 200 is on
/// its way) on a task of its own, tracked for drain like the connection. A
/// tunnel without hyper's half of the stream (never a CONNECT) is a 502.
fn tunnel_stream(
    server: &TcpServer,
    peer: Peer,
    tunnel: crate::pipeline::Tunnel,
    client: Option<hyper::upgrade::OnUpgrade>,
    resp: &mut hyper::Response<Body>,
) {
    let Some(client) = client.filter(|_| resp.status().is_success()) else {
        *resp = hyper::Response::new(Body::Empty);
        *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
        return;
    };
    let shared = server.shared.clone();
    server.shared.tasks.spawn(async move {
        let switched = super::tunnel::Switched { tunnel, client };
        super::tunnel::run(&shared, switched, peer).await;
    });
}

/// How long, and how far, a request body the answer did not wait for is read on.
const DRAIN_FOR: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

/// A client's request body that, dropped before its end (the answer went out
/// first, as when a backend replies without reading the upload), is read on in
/// the background for at most [`DRAIN_FOR`] / [`DRAIN_BYTES`]. Without it h2
/// resets the stream (NO_ERROR) as soon as the response ends and then ignores
/// what the client still sends on it; read on, the stream stays half-closed and
/// h2 keeps enforcing the stream rules: a DATA total that disagrees with
/// `content-length`, trailers without END_STREAM or with pseudo-headers are
/// still answered with PROTOCOL_ERROR (h2spec 8.1, 8.1.2.1, 8.1.2.6).
struct DrainOnDrop(Option<Incoming>);

impl hyper::body::Body for DrainOnDrop {
    type Data = bytes::Bytes;
    type Error = upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.0.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if hyper::body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use http_body_util::BodyExt as _;
            let read_on = async {
                let mut seen = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    seen += frame.data_ref().map_or(0, bytes::Bytes::len);
                    if seen > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_FOR, read_on).await;
        });
    }
}

/// What a tick decided.
enum Verdict {
    Shutdown,
    Close(Close),
}

/// The connection's timers, advanced one tick at a time.
struct Watch {
    tick: Duration,
    preface_by: Instant,
    write_idle: Duration,
    idle: Duration,
    grace: Duration,
    stalled: Duration,
    quiet: Duration,
    /// When a GOAWAY was sent, the instant the connection is closed regardless.
    goaway: Option<Instant>,
    abusive: bool,
}

impl Watch {
    fn new(c: &Client) -> Self {
        let shortest = c
            .write_idle_timeout
            .min(c.idle_timeout)
            .min(c.header_read_timeout)
            .min(c.goaway_grace);
        Self {
            tick: tick_of(shortest),
            preface_by: Instant::now() + c.header_read_timeout,
            write_idle: c.write_idle_timeout,
            idle: c.idle_timeout,
            grace: c.goaway_grace,
            stalled: Duration::ZERO,
            quiet: Duration::ZERO,
            goaway: None,
            abusive: false,
        }
    }

    fn check(&mut self, s: &ConnState) -> Option<Verdict> {
        let now = Instant::now();
        if !s.preface_done.load(Ordering::Relaxed) && now >= self.preface_by {
            return Some(Verdict::Close(Close::PrefaceTimeout));
        }
        let wrote = s.wrote.swap(false, Ordering::Relaxed);
        if wrote || !s.write_blocked.load(Ordering::Relaxed) {
            self.stalled = Duration::ZERO;
        } else {
            self.stalled += self.tick;
            if self.stalled >= self.write_idle {
                return Some(Verdict::Close(Close::WriteStall));
            }
        }
        if let Some(by) = self.goaway {
            return (now >= by).then_some(Verdict::Close(Close::GoawayGrace));
        }
        if s.active.swap(false, Ordering::Relaxed) {
            self.quiet = Duration::ZERO;
            return None;
        }
        self.quiet += self.tick;
        if self.quiet >= self.idle {
            self.goaway = Some(now + self.grace);
            return Some(Verdict::Shutdown);
        }
        None
    }
}

/// The socket as hyper sees it: records activity, write progress, and when the
/// client preface plus its first frame (SETTINGS) has been read.
struct Wire<I> {
    io: I,
    state: Arc<ConnState>,
    /// The preface (24 bytes) and the first frame's header (9), as read so far.
    head: [u8; 33],
    /// Bytes of the connection read so far, until the preface is done.
    seen: usize,
    /// Where the frames edge writes begin and end.
    out: Frames,
}

impl<I> Wire<I> {
    fn saw(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(self.head.len().saturating_sub(self.seen));
        self.head[self.seen..self.seen + take].copy_from_slice(&bytes[..take]);
        self.seen = self.seen.saturating_add(bytes.len());
        if self.seen >= self.head.len() {
            let len = usize::from(self.head[24]) << 16
                | usize::from(self.head[25]) << 8
                | usize::from(self.head[26]);
            if self.seen >= self.head.len() + len {
                self.state.preface_done.store(true, Ordering::Relaxed);
            }
        }
    }

    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) => {
                self.state.active.store(true, Ordering::Relaxed);
                self.state.write_blocked.store(false, Ordering::Relaxed);
                if *n > 0 {
                    self.state.wrote.store(true, Ordering::Relaxed);
                }
            }
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Wire<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.state.active.store(true, Ordering::Relaxed);
            if !self.state.preface_done.load(Ordering::Relaxed) {
                let this = &mut *self;
                this.saw(&buf.filled()[before..]);
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Wire<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let calm = this
            .state
            .refusing
            .load(Ordering::Relaxed)
            .then(|| this.out.calmed(buf))
            .flatten();
        let polled = Pin::new(&mut this.io).poll_write(cx, calm.as_deref().unwrap_or(buf));
        if let Poll::Ready(Ok(n)) = polled {
            this.out.walk(&buf[..n], |_, _| {});
        }
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.state.refusing.load(Ordering::Relaxed) {
            // Rare (the connection is closing): one slice at a time, patched.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                let take = n.min(b.len());
                this.out.walk(&b[..take], |_, _| {});
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        match polled {
            Poll::Ready(Ok(())) => self.state.write_blocked.store(false, Ordering::Relaxed),
            Poll::Pending => self.state.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
