//! A paced load of real HTTP/1.1 keep-alive clients in the test process, and the
//! one-connection client it is made of. Every request carries a unique
//! `x-request-id`; every answer is kept with when it came, read by the test's own
//! rule (e.g. [`Reply::port_in_body`] or [`Reply::checked_origin`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::origin_process::lock;

/// How long one request may take before the client gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one request got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The `x-origin` header (`test-origin` puts its `IP:PORT` there).
    pub origin: Option<String>,
    /// The body, decoded leniently.
    pub body: String,
}

impl Reply {
    /// A 200 whose body is a port (as `test-origin` answers): that port; else what
    /// was wrong.
    pub fn port_in_body(self) -> Result<u16, String> {
        let Self { status, body, .. } = self;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        body.trim()
            .parse()
            .map_err(|_| format!("unexpected body {body:?}"))
    }

    /// A 200 naming its origin in `x-origin`, with that origin's port as the body:
    /// that origin; else what was wrong.
    pub fn checked_origin(self) -> Result<SocketAddr, String> {
        match self {
            Self {
                status,
                origin: Some(origin),
                body,
            } if status == 200 => origin
                .parse::<SocketAddr>()
                .map_err(|_| format!("bad x-origin {origin:?}"))
                .and_then(|addr| {
                    if body.trim() == addr.port().to_string() {
                        Ok(addr)
                    } else {
                        Err(format!("body {body:?} is not the port of {addr}"))
                    }
                }),
            Self {
                status,
                origin,
                body,
            } => Err(format!("{status} (x-origin {origin:?}): {body}")),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One HTTP/1.1 keep-alive connection to `to`, opened at the first request and
/// again after one fails.
#[derive(Debug)]
pub struct KeepAlive {
    to: SocketAddr,
    /// The source address to connect from (any, when `None`).
    from: Option<IpAddr>,
    conn: Option<Sender>,
}

impl KeepAlive {
    /// A client for `to`; nothing is connected yet.
    pub fn new(to: SocketAddr) -> Self {
        Self {
            to,
            from: None,
            conn: None,
        }
    }

    /// A client for `to` connecting from `from` (e.g. `127.2.0.1`, to look like a
    /// client of another network).
    pub fn from(from: IpAddr, to: SocketAddr) -> Self {
        Self {
            to,
            from: Some(from),
            conn: None,
        }
    }

    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let Some(from) = self.from else {
            return tokio::net::TcpStream::connect(self.to).await;
        };
        let socket = match from {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(self.to).await
    }

    /// One body-less request with `host: edge.test` and `x-request-id: id`: what
    /// came back, or what went wrong on the way.
    pub async fn request(
        &mut self,
        method: &Method,
        path: &str,
        id: &str,
    ) -> Result<Reply, String> {
        if self.conn.is_none() {
            let stream = self.connect().await.map_err(|e| e.to_string())?;
            let (send, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(driver);
            self.conn = Some(send);
        }
        let send = self.conn.as_mut().ok_or("no connection")?;
        send.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "edge.test")
            .header("x-request-id", id)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(CLIENT_TIMEOUT, send.send_request(req))
            .await
            .map_err(|_| "client timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let origin = resp
            .headers()
            .get("x-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            origin,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// [`request`](Self::request) `method /`, its reply read by `read`; the
    /// connection is dropped after an error (of the request or of `read`).
    pub async fn answer<T>(
        &mut self,
        method: &Method,
        id: &str,
        read: fn(Reply) -> Result<T, String>,
    ) -> Result<T, String> {
        let result = self.request(method, "/", id).await.and_then(read);
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// The answers a load saw: when each came, and what `read` made of it (or what
/// went wrong).
pub type Answers<T> = Vec<(Instant, Result<T, String>)>;

/// `clients` keep-alive clients, each sending `METHOD /` every `every` until
/// [`finish`](Self::finish)ed; the `x-request-id`s are `c{client}-{seq}`.
#[derive(Debug)]
pub struct Load<T> {
    seen: Arc<Mutex<Answers<T>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Load<T> {
    /// Starts the clients against `to`, each answer read by `read`.
    pub fn start(
        to: SocketAddr,
        clients: usize,
        every: Duration,
        method: Method,
        read: fn(Reply) -> Result<T, String>,
    ) -> Self {
        Self::start_from(None, to, clients, every, method, read)
    }

    /// As [`start`](Self::start), the clients connecting from `from` when given.
    pub fn start_from(
        from: Option<IpAddr>,
        to: SocketAddr,
        clients: usize,
        every: Duration,
        method: Method,
        read: fn(Reply) -> Result<T, String>,
    ) -> Self {
        let seen: Arc<Mutex<Answers<T>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|client| {
                let (seen, stop, method) = (seen.clone(), stop.clone(), method.clone());
                tokio::spawn(async move {
                    let mut pace = tokio::time::interval(every);
                    let mut conn = match from {
                        Some(from) => KeepAlive::from(from, to),
                        None => KeepAlive::new(to),
                    };
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        seq += 1;
                        let id = format!("c{client}-{seq}");
                        let result = conn.answer(&method, &id, read).await;
                        lock(&seen).push((Instant::now(), result));
                    }
                })
            })
            .collect();
        Self { seen, stop, tasks }
    }

    /// Stops the clients (each after its request under way) and gives all answers.
    pub async fn finish(self) -> anyhow::Result<Answers<T>> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        Ok(std::mem::take(&mut *lock(&self.seen)))
    }
}

impl<T: PartialEq> Load<T> {
    /// When `who` first answered at or after `from`.
    pub fn first_answer_from(&self, who: &T, from: Instant) -> Option<Instant> {
        lock(&self.seen)
            .iter()
            .find(|(at, r)| *at >= from && r.as_ref().ok() == Some(who))
            .map(|(at, _)| *at)
    }
}

/// The errors among `seen`, in order.
pub fn errors<T>(seen: &[(Instant, Result<T, String>)]) -> Vec<String> {
    seen.iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect()
}

/// Answers from `who` within `[from, to)`.
pub fn served_by<T: PartialEq>(
    seen: &[(Instant, Result<T, String>)],
    who: &T,
    from: Instant,
    to: Instant,
) -> usize {
    seen.iter()
        .filter(|(at, r)| *at >= from && *at < to && r.as_ref().ok() == Some(who))
        .count()
}
