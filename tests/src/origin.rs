//! An in-process origin: hyper 1.x serving HTTP/1.1 and h2c (prior knowledge), or
//! over TLS (rustls) HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Routes: `/echo` (the request as JSON, with the HTTP version it arrived in),
//! `/bytes/N` (N bytes streamed in 64 KiB chunks), `/upload` (counts the body chunk
//! by chunk), `/mirror` (the request body sent back), `/slow/MS` (answers after MS
//! milliseconds), `/hop-by-hop` (a response carrying hop-by-hop headers), `/text/N`
//! (N bytes of [`text`] in 64 KiB chunks; the query sets its headers, see
//! [`text_route`]), `/events/N` (N server-sent events, then held open), anything
//! else `hello`.

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::pki::LeafFiles;

/// Size of each chunk `/bytes/N` writes.
pub const CHUNK: usize = 64 * 1024;

/// How the origin serves connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct OriginOptions {
    /// Drop every connection (no GOAWAY, no `Connection: close`) once it has had no
    /// request in flight for this long: a backend whose keep-alive timeout is
    /// shorter than the proxy's.
    pub idle_close: Option<Duration>,
    /// Serve HTTP/1.1 only (no h2c).
    pub http1_only: bool,
}

/// What a TLS origin serves: certificate, key and the ALPN protocols it offers.
#[derive(Debug, Clone)]
pub struct OriginTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// ALPN protocols offered, in preference order (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
}

impl OriginTls {
    /// `leaf` offering h2 and http/1.1.
    pub fn new(leaf: &LeafFiles) -> Self {
        Self::with_alpn(leaf, &["h2", "http/1.1"])
    }

    /// `leaf` offering exactly `alpn`.
    pub fn with_alpn(leaf: &LeafFiles, alpn: &[&str]) -> Self {
        Self {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            alpn: alpn.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    /// Connections open now, and the most ever open at once.
    open: AtomicU64,
    peak: AtomicU64,
}

/// A running origin on 127.0.0.1; stops accepting when dropped.
#[derive(Debug)]
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
    tls: bool,
}

impl Origin {
    /// Starts an origin with default options (h1 + h2c, no idle close).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(OriginOptions::default()).await
    }

    /// Starts an origin with `options` on a free loopback port.
    pub async fn start_with(options: OriginOptions) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding origin")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, options, None, Arc::clone(&counters)));
        Ok(Self {
            addr,
            counters,
            accept,
            tls: false,
        })
    }

    /// Starts an origin with `options` that speaks TLS (rustls) with `tls`'s
    /// certificate and ALPN list, on a free loopback port. Each connection then
    /// serves the protocol ALPN chose: h2 for `h2`, HTTP/1.1 otherwise.
    pub async fn start_tls(options: OriginOptions, tls: OriginTls) -> anyhow::Result<Self> {
        let acceptor = tls_acceptor(&tls)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding origin")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            options,
            Some(acceptor),
            Arc::clone(&counters),
        ));
        Ok(Self {
            addr,
            counters,
            accept,
            tls: true,
        })
    }

    /// For a pool's `endpoints`: `http://127.0.0.1:PORT`, or for a TLS origin
    /// `https://localhost:PORT` (the name its certificate is for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// The most connections that were ever open at the same time.
    pub fn peak_connections(&self) -> u64 {
        self.counters.peak.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    options: OriginOptions,
    tls: Option<TlsAcceptor>,
    counters: Arc<Counters>,
) {
    // Limits far above edge's own, so that edge's limits are the ones a test meets.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(4 << 20)
        .max_headers(1000);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(4 << 20);
    if options.http1_only {
        builder = builder.http1_only();
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("origin: accept failed: {err}");
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::SeqCst);
        let open = counters.open.fetch_add(1, Ordering::SeqCst) + 1;
        counters.peak.fetch_max(open, Ordering::SeqCst);
        let builder = builder.clone();
        let counters = Arc::clone(&counters);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = OpenConn(Arc::clone(&counters));
            let Some(tls) = tls else {
                serve(stream, builder, options, counters).await;
                return;
            };
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(err) => {
                    eprintln!("origin: TLS handshake failed: {err}");
                    return;
                }
            };
            // Speak exactly what ALPN agreed on (http/1.1 when nothing was agreed).
            let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            serve(stream, builder, options, counters).await;
        });
    }
}

/// Counts a connection open until dropped.
struct OpenConn(Arc<Counters>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one accepted connection (plain or TLS) until it ends.
async fn serve<I>(
    io: I,
    builder: auto::Builder<TokioExecutor>,
    options: OriginOptions,
    counters: Arc<Counters>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_state = Arc::new(ConnState::new());
    let state = Arc::clone(&conn_state);
    let service = service_fn(move |req| {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        handle(req, InFlight::start(Arc::clone(&state)))
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let result = match options.idle_close {
        None => conn.await,
        Some(limit) => tokio::select! {
            result = conn => result,
            // Dropping `conn` here closes the socket with no goodbye.
            () = conn_state.idle_for(limit) => Ok(()),
        },
    };
    if let Err(err) = result {
        eprintln!("origin: connection ended with {err}");
    }
}

/// A rustls acceptor (ring provider, TLS 1.2 and 1.3) serving `tls`.
fn tls_acceptor(tls: &OriginTls) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .with_context(|| format!("reading {}", tls.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("reading {}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("origin certificate")?;
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the idle watchdog of one connection needs to know.
#[derive(Debug)]
struct ConnState {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let tick = (limit / 20).max(Duration::from_millis(5));
        loop {
            let last = *self
                .last_done
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self.in_flight.load(Ordering::SeqCst) == 0 && last.elapsed() >= limit {
                return;
            }
            tokio::time::sleep(tick).await;
        }
    }
}

/// Marks a request in flight until its response body has been fully sent (dropped).
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_done
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Response body of the origin: any body, plus the in-flight marker it releases.
pub struct OriginBody {
    inner: BoxBody<Bytes, Infallible>,
    _in_flight: InFlight,
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `remaining` zero bytes, one shared 64 KiB chunk at a time.
struct Zeros {
    remaining: u64,
    chunk: Bytes,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        // n <= CHUNK, so the cast cannot truncate.
        let data = self.chunk.slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

async fn handle(
    req: Request<Incoming>,
    in_flight: InFlight,
) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/text/") {
        let n = n.parse::<u64>().unwrap_or(0);
        let (parts, body) = text_route(n, req.uri().query().unwrap_or("")).into_parts();
        let body = OriginBody {
            inner: body,
            _in_flight: in_flight,
        };
        return Ok(Response::from_parts(parts, body));
    }
    if let Some(n) = path.strip_prefix("/events/") {
        let n = n.parse::<usize>().unwrap_or(1);
        let mut response = Response::new(OriginBody {
            inner: events(n),
            _in_flight: in_flight,
        });
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(response);
    }
    let (status, headers, body) = if path == "/echo" {
        (StatusCode::OK, Vec::new(), full(echo(&req)))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<u64>() {
            Ok(n) => (StatusCode::OK, Vec::new(), zeros(n)),
            Err(_) => (StatusCode::BAD_REQUEST, Vec::new(), full("bad size\n")),
        }
    } else if path == "/upload" {
        upload(req).await
    } else if path == "/mirror" {
        mirror(req).await
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (StatusCode::OK, Vec::new(), full("slow"))
            }
            Err(_) => (StatusCode::BAD_REQUEST, Vec::new(), full("bad delay\n")),
        }
    } else if path == "/hop-by-hop" {
        (StatusCode::OK, HOP_BY_HOP_RESPONSE.to_vec(), full("hop"))
    } else {
        (StatusCode::OK, Vec::new(), full("hello"))
    };
    let mut response = Response::new(OriginBody {
        inner: body,
        _in_flight: in_flight,
    });
    *response.status_mut() = status;
    for (name, value) in headers {
        response
            .headers_mut()
            .append(name, http::HeaderValue::from_static(value));
    }
    Ok(response)
}

/// Headers `/hop-by-hop` sets: every hop-by-hop kind, plus one end-to-end header.
pub const HOP_BY_HOP_RESPONSE: [(&str, &str); 8] = [
    ("connection", "x-hop-custom"),
    ("te", "deflate"),
    ("x-hop-custom", "must-not-pass"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("upgrade", "example/1"),
    ("proxy-authenticate", "Basic realm=\"origin\""),
    ("x-end-to-end", "kept"),
];

fn echo(req: &Request<Incoming>) -> String {
    let headers: Vec<[String; 2]> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            [
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ]
        })
        .collect();
    serde_json::json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    })
    .to_string()
}

/// Headers of an `/echo` answer, as `(name, value)` pairs.
pub fn echo_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter_map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_owned(),
                        pair.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of header `name` in an `/echo` answer.
pub fn echo_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo_headers(echo)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

type Handled = (
    StatusCode,
    Vec<(&'static str, &'static str)>,
    BoxBody<Bytes, Infallible>,
);

async fn upload(req: Request<Incoming>) -> Handled {
    let mut body = req.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                }
            }
            Err(err) => {
                let message = format!("upload failed after {received} bytes: {err}\n");
                return (StatusCode::BAD_REQUEST, Vec::new(), full(message));
            }
        }
    }
    (StatusCode::OK, Vec::new(), full(received.to_string()))
}

/// The request body, whole, as the response body.
async fn mirror(req: Request<Incoming>) -> Handled {
    match req.into_body().collect().await {
        Ok(body) => (StatusCode::OK, Vec::new(), full(body.to_bytes())),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            Vec::new(),
            full(format!("mirror failed: {err}\n")),
        ),
    }
}

fn full(body: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(body.into()).boxed()
}

fn zeros(n: u64) -> BoxBody<Bytes, Infallible> {
    Zeros {
        remaining: n,
        chunk: Bytes::from(vec![0u8; CHUNK]),
    }
    .boxed()
}

/// One line of [`text`]: fixed width, a counter and a hash (so it compresses
/// like prose, 3-5x, not like a run of one byte).
pub const TEXT_LINE: usize = 64;

fn text_line(i: u64) -> [u8; TEXT_LINE] {
    let mut line = [b' '; TEXT_LINE];
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let s = format!("{i:08} {h:06x} the quick brown fox jumps over the lazy dog");
    line[..s.len().min(TEXT_LINE - 1)].copy_from_slice(&s.as_bytes()[..s.len().min(TEXT_LINE - 1)]);
    line[TEXT_LINE - 1] = b'\n';
    line
}

/// Bytes `from..from + len` of the origin's text.
fn text_range(from: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + TEXT_LINE);
    let first = from / TEXT_LINE as u64;
    let skip = (from % TEXT_LINE as u64) as usize;
    let mut i = first;
    while out.len() < len + skip {
        out.extend_from_slice(&text_line(i));
        i += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

/// The first `n` bytes of what `/text/N` serves.
pub fn text(n: u64) -> Vec<u8> {
    text_range(0, n as usize)
}

/// `n` bytes of [`text`], generated chunk by chunk.
struct Text {
    sent: u64,
    total: u64,
    exact: bool,
}

impl Body for Text {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.total {
            return Poll::Ready(None);
        }
        let n = (self.total - self.sent).min(CHUNK as u64);
        let chunk = text_range(self.sent, n as usize);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.total - self.sent)
        } else {
            SizeHint::default()
        }
    }
}

/// `/text/N?...`: N bytes of [`text`]. The query sets headers: `type` (the
/// Content-Type, default `text/plain; charset=utf-8`), `ce` (Content-Encoding),
/// `cc` (Cache-Control), `etag`, `vary`, `status`, and `chunked=1` sends no
/// Content-Length. Values are taken as written (no percent-decoding) except
/// that `+` stands for a space.
pub fn text_route(n: u64, query: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut exact = true;
    let mut response = Response::new(BoxBody::new(
        http_body_util::Empty::new().map_err(|e| match e {}),
    ));
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut status = StatusCode::OK;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.replace('+', " ").replace("%22", "\"");
        let Ok(value) = http::HeaderValue::from_str(&v) else {
            continue;
        };
        let name = match k {
            "type" => http::header::CONTENT_TYPE,
            "ce" => http::header::CONTENT_ENCODING,
            "cc" => http::header::CACHE_CONTROL,
            "etag" => http::header::ETAG,
            "vary" => http::header::VARY,
            "status" => {
                status = v.parse().unwrap_or(StatusCode::OK);
                continue;
            }
            "chunked" => {
                exact = false;
                continue;
            }
            _ => continue,
        };
        h.insert(name, value);
    }
    *response.status_mut() = status;
    *response.body_mut() = Text {
        sent: 0,
        total: n,
        exact,
    }
    .boxed();
    response
}

/// `n` server-sent events, each 10 ms after the last, then the stream stays
/// open (until the client goes): what a compressing proxy must not hold back.
fn events(n: usize) -> BoxBody<Bytes, Infallible> {
    Events {
        sent: 0,
        total: n,
        gap: None,
    }
    .boxed()
}

struct Events {
    sent: usize,
    total: usize,
    gap: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.total {
            // Held open: no waker kept, nothing more ever comes.
            return Poll::Pending;
        }
        if let Some(gap) = self.gap.as_mut() {
            if gap.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let event = format!(
            "id: {}\ndata: event {} of the stream\n\n",
            self.sent, self.sent
        );
        self.sent += 1;
        self.gap = Some(Box::pin(tokio::time::sleep(Duration::from_millis(10))));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}
