//! A programmable origin for the cache tests (HTTP/1.1 and h2c on loopback): the
//! test sets what it answers and reads back every request it saw. Also a small
//! HTTP/1.1 client that returns status, headers and body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request the origin received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the origin answers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    Bytes(Bytes),
    /// Chunks sent as the channel yields them.
    Channel(mpsc::Receiver<Bytes>),
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: ReplyBody::Bytes(body.into()),
        }
    }

    pub fn ok(headers: &[(&str, &str)], body: impl Into<Bytes>) -> Self {
        Self::new(200, headers, body)
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct Scripted {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Handler>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Scripted {
    pub async fn start(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?, Arc::new(handler)).await
    }

    async fn start_at(addr: SocketAddr, handler: Handler) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.context("binding origin")?;
        let addr = listener.local_addr()?;
        let origin = Self {
            addr,
            seen: Arc::default(),
            handler: Arc::new(Mutex::new(handler)),
            tasks: Arc::default(),
        };
        let (seen, handler, tasks) = (
            Arc::clone(&origin.seen),
            Arc::clone(&origin.handler),
            Arc::clone(&origin.tasks),
        );
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, handler) = (Arc::clone(&seen), Arc::clone(&handler));
                        async move { Ok::<_, Infallible>(answer(&seen, &handler, req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                lock(&tasks).push(conn);
            }
        });
        lock(&origin.tasks).push(accept);
        Ok(origin)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces what the origin answers.
    pub fn set(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *lock(&self.handler) = Arc::new(handler);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// Requests so far for `target` (path and query).
    pub fn count(&self, target: &str) -> usize {
        lock(&self.seen)
            .iter()
            .filter(|s| s.target == target)
            .count()
    }

    /// Stops listening and drops every open connection: the origin is down.
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn answer(
    seen: &Mutex<Vec<Seen>>,
    handler: &Mutex<Handler>,
    req: Request<Incoming>,
) -> Response<OriginBody> {
    let s = Seen {
        method: req.method().clone(),
        target: req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: req.headers().clone(),
    };
    lock(seen).push(s.clone());
    let handler = Arc::clone(&lock(handler));
    let reply = handler(&s);
    let body: OriginBody = match reply.body {
        ReplyBody::Bytes(b) => Full::new(b).boxed(),
        ReplyBody::Channel(rx) => ChannelBody(rx).boxed(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = reply.status;
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The Cache-Status value (empty when absent).
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

/// Sends one HTTP/1.1 request on a new connection and returns the response head;
/// the body is read by the caller.
pub async fn open(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response<Incoming>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(req).await?)
}

/// One whole request and response.
pub async fn fetch(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Got> {
    let resp = open(addr, method, host, target, headers).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Got {
        status,
        headers,
        body,
    })
}

/// GET with `Host: localhost`.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<Got> {
    fetch(addr, "GET", "localhost", target, headers).await
}
