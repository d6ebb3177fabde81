//! A pool: endpoints, their pooled connections, and sending one request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::client::conn::{http1, http2};
use rustls::pki_types::CertificateDer;

use crate::body::{Lease, UpstreamBody};
use crate::conn::{ConnState, Connector, Sender};
use crate::endpoint::EndpointAddr;
use crate::error::Error;
use crate::BoxError;

/// What a request body must be to travel upstream. `Default` is the empty body,
/// used to rebuild a body-less request for the one retry on a fresh connection.
pub trait ReqBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Send + Unpin + 'static
{
}
impl<T> ReqBody for T where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Send + Unpin + 'static
{
}

/// The protocol spoken to a pool's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, a pool of idle keep-alive connections per endpoint.
    H1,
    /// HTTP/2 (h2c prior knowledge, or h2 by ALPN over TLS), one shared connection per endpoint.
    H2,
}

/// A pool's settings, independent of any config file format.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub endpoints: Vec<EndpointAddr>,
    pub protocol: Protocol,
    /// TCP plus TLS.
    pub connect_timeout: Duration,
    /// Until the response head, per try.
    pub response_timeout: Duration,
    /// Pooled connections idle this long are closed: keep it below the backend's keep-alive.
    pub idle_timeout: Duration,
    /// Certificates trusted for https endpoints in addition to the public web roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl PoolConfig {
    /// A pool with every setting at its default: h2, 1 s connect, 30 s response, 90 s idle.
    pub fn new(name: &str, endpoints: Vec<EndpointAddr>) -> Self {
        Self {
            name: name.to_owned(),
            endpoints,
            protocol: Protocol::H2,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            extra_roots: Vec::new(),
        }
    }
}

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they finish.
const MAX_IDLE_H1: usize = 512;

/// A set of endpoints serving one backend, with pooled connections to each.
pub struct Pool<B> {
    name: String,
    endpoints: Vec<Endpoint<B>>,
    next: AtomicUsize,
    connector: Connector,
    response_timeout: Duration,
}

struct Endpoint<B> {
    addr: EndpointAddr,
    /// Set once the endpoint showed it speaks HTTP/1.1 only (TLS ALPN, or an
    /// HTTP/1.1 answer to the h2c preface).
    h1_only: AtomicBool,
    /// Set once an HTTP/2 response came back: from then on an HTTP/2 error is an
    /// error, not a sign of an HTTP/1.1-only backend.
    h2_confirmed: AtomicBool,
    h2: ArcSwapOption<H2Conn<B>>,
    /// Held while opening the shared HTTP/2 connection, so concurrent misses share one connect.
    h2_connecting: tokio::sync::Mutex<()>,
    h1_idle: Arc<Mutex<Vec<H1Idle<B>>>>,
}

struct H2Conn<B> {
    send: http2::SendRequest<B>,
    state: Arc<ConnState>,
}

struct H1Idle<B> {
    send: http1::SendRequest<B>,
    state: Arc<ConnState>,
}

struct Checkout<B> {
    sender: Sender<B>,
    state: Arc<ConnState>,
    reused: bool,
}

impl<B: ReqBody> Pool<B> {
    /// Builds a pool; fails only when an extra root certificate is unusable.
    pub fn new(cfg: PoolConfig) -> Result<Self, rustls::Error> {
        let tls = if cfg.endpoints.iter().any(|e| e.tls) {
            Some(tls_connector(&cfg)?)
        } else {
            None
        };
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|addr| Endpoint {
                addr: addr.clone(),
                h1_only: AtomicBool::new(cfg.protocol == Protocol::H1),
                h2_confirmed: AtomicBool::new(false),
                h2: ArcSwapOption::empty(),
                h2_connecting: tokio::sync::Mutex::new(()),
                h1_idle: Arc::default(),
            })
            .collect();
        Ok(Self {
            name: cfg.name,
            endpoints,
            next: AtomicUsize::new(0),
            connector: Connector {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                tls,
            },
            response_timeout: cfg.response_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `req` to the next endpoint, trying once more on a fresh connection when
    /// the first try provably did no harm: hyper handed the unsent request back; or
    /// a reused connection failed before any response byte and the request had no
    /// body and a safe method. When the exchange broke on an h2c connection to an
    /// endpoint that never answered in HTTP/2, the request (if unsent, or body-less
    /// and safe) is tried once over HTTP/1.1 instead; never after a timeout, when
    /// the backend may be working on it.
    pub async fn send(&self, req: Request<B>) -> Result<Response<UpstreamBody>, Error> {
        let Some(ep) = self.pick() else {
            return Err(Error::NoEndpoints {
                pool: self.name.clone(),
            });
        };
        let replay = Replay::capture(&req);
        let co = ep.checkout(&self.connector, false).await?;
        let reused = co.reused;
        // An h2c endpoint that has never answered in HTTP/2 may be an HTTP/1.1
        // server that closes on (or garbles) the preface.
        let unproven_h2c = matches!(co.sender, Sender::H2(_))
            && !ep.addr.tls
            && !ep.h2_confirmed.load(Ordering::Relaxed);
        let req = match self.try_send(ep, co, req).await {
            Ok(resp) => return Ok(resp),
            Err(Failed::Unsent(req, e)) if unproven_h2c => return self.probe_h1(ep, *req, e).await,
            Err(Failed::Unsent(req, _)) => *req,
            Err(Failed::Sent(e @ Error::Request { .. })) if unproven_h2c => {
                return match replay {
                    Some(replay) if replay.idempotent => {
                        self.probe_h1(ep, replay.rebuild(), e).await
                    }
                    _ => Err(e),
                };
            }
            Err(Failed::Sent(e)) if !reused => return Err(e),
            Err(Failed::Sent(e)) => match replay {
                Some(replay) if replay.idempotent => replay.rebuild(),
                _ => return Err(e),
            },
        };
        tracing::debug!(endpoint = %ep.addr, "first try failed before the response; retrying on a fresh connection");
        let co = ep.checkout(&self.connector, true).await?;
        match self.try_send(ep, co, req).await {
            Ok(resp) => Ok(resp),
            Err(Failed::Sent(e)) | Err(Failed::Unsent(_, e)) => Err(e),
        }
    }

    /// `edge run --upstream http://...` speaks h2c by default, and many backends
    /// speak only HTTP/1.1: they close or answer garbage to the h2c preface, having
    /// parsed no request. The request is tried once over HTTP/1.1; only if that
    /// answers is the endpoint switched, so a sick HTTP/2 backend is never demoted.
    async fn probe_h1(
        &self,
        ep: &Endpoint<B>,
        req: Request<B>,
        h2_error: Error,
    ) -> Result<Response<UpstreamBody>, Error> {
        let Ok((sender, state)) = self.connector.connect(&ep.addr, Protocol::H1).await else {
            return Err(h2_error);
        };
        let co = Checkout {
            sender,
            state,
            reused: false,
        };
        match self.try_send(ep, co, req).await {
            Ok(resp) => {
                if !ep.h1_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %ep.addr,
                        "endpoint does not speak HTTP/2 (h2c) but answers HTTP/1.1; using HTTP/1.1 for it \
                         (set protocol = \"h1\" for this pool, or --upstream-protocol h1, to skip this probe)"
                    );
                }
                Ok(resp)
            }
            Err(_) => Err(h2_error),
        }
    }

    fn pick(&self) -> Option<&Endpoint<B>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.endpoints.get(i)
    }

    async fn try_send(
        &self,
        ep: &Endpoint<B>,
        co: Checkout<B>,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        let lease = Lease::new(co.state.clone());
        let failed = |source| Error::Request {
            endpoint: ep.addr.to_string(),
            source,
        };
        let sent = match co.sender {
            Sender::H2(mut send) => {
                set_h2_target(&mut req, &ep.addr);
                let fut = send.try_send_request(req);
                let sent = tokio::time::timeout(self.response_timeout, fut).await;
                if matches!(sent, Ok(Ok(_))) {
                    ep.h2_confirmed.store(true, Ordering::Relaxed);
                }
                sent
            }
            Sender::H1(mut send) => {
                set_h1_target(&mut req, &ep.addr);
                let fut = send.try_send_request(req);
                let sent = tokio::time::timeout(self.response_timeout, fut).await;
                if matches!(sent, Ok(Ok(_))) {
                    ep.park_h1_when_ready(send, co.state);
                }
                sent
            }
        };
        match sent {
            Err(_) => Err(Failed::Sent(Error::Timeout {
                endpoint: ep.addr.to_string(),
                after: self.response_timeout,
            })),
            Ok(Ok(resp)) => Ok(resp.map(|body| UpstreamBody::new(body, lease))),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Err(Failed::Unsent(Box::new(req), failed(e.into_error()))),
                None => Err(Failed::Sent(failed(e.into_error()))),
            },
        }
    }
}

enum Failed<B> {
    /// The connection refused the request before sending any of it.
    Unsent(Box<Request<B>>, Error),
    Sent(Error),
}

impl<B: ReqBody> Endpoint<B> {
    fn protocol(&self) -> Protocol {
        if self.h1_only.load(Ordering::Relaxed) {
            Protocol::H1
        } else {
            Protocol::H2
        }
    }

    /// A connection to send on: the shared h2 one, an idle h1 one, or a new one.
    async fn checkout(&self, connector: &Connector, fresh: bool) -> Result<Checkout<B>, Error> {
        if self.h1_only.load(Ordering::Relaxed) {
            return self.checkout_h1(connector, fresh).await;
        }
        if !fresh {
            if let Some(c) = self.live_h2() {
                return Ok(c);
            }
        }
        let _connecting = self.h2_connecting.lock().await;
        if !fresh {
            if let Some(c) = self.live_h2() {
                return Ok(c);
            }
        }
        let (sender, state) = connector.connect(&self.addr, self.protocol()).await?;
        match sender {
            Sender::H2(send) => {
                self.h2.store(Some(Arc::new(H2Conn {
                    send: send.clone(),
                    state: state.clone(),
                })));
                Ok(Checkout {
                    sender: Sender::H2(send),
                    state,
                    reused: false,
                })
            }
            Sender::H1(send) => {
                tracing::info!(endpoint = %self.addr, "endpoint negotiated HTTP/1.1; pooling HTTP/1.1 connections to it");
                self.h1_only.store(true, Ordering::Relaxed);
                Ok(Checkout {
                    sender: Sender::H1(send),
                    state,
                    reused: false,
                })
            }
        }
    }

    fn live_h2(&self) -> Option<Checkout<B>> {
        let guard = self.h2.load();
        let conn = guard.as_ref()?;
        if conn.send.is_closed() {
            return None;
        }
        Some(Checkout {
            sender: Sender::H2(conn.send.clone()),
            state: conn.state.clone(),
            reused: true,
        })
    }

    async fn checkout_h1(&self, connector: &Connector, fresh: bool) -> Result<Checkout<B>, Error> {
        if !fresh {
            if let Some(idle) = self.pop_idle_h1() {
                return Ok(Checkout {
                    sender: Sender::H1(idle.send),
                    state: idle.state,
                    reused: true,
                });
            }
        }
        let (sender, state) = connector.connect(&self.addr, self.protocol()).await?;
        Ok(Checkout {
            sender,
            state,
            reused: false,
        })
    }

    fn pop_idle_h1(&self) -> Option<H1Idle<B>> {
        let mut idle = self.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.send.is_ready() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection to the idle stack once its response has been
    /// read to the end (hyper reports it ready again only then).
    fn park_h1_when_ready(&self, mut send: http1::SendRequest<B>, state: Arc<ConnState>)
    where
        B: ReqBody,
    {
        let stack = self.h1_idle.clone();
        tokio::spawn(async move {
            if send.ready().await.is_ok() {
                let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE_H1 {
                    idle.push(H1Idle { send, state });
                }
            }
        });
    }
}

/// A body-less request's head kept aside so it can be sent again.
struct Replay {
    idempotent: bool,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn capture<B: ReqBody>(req: &Request<B>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        req.body().is_end_stream().then(|| Self {
            idempotent,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn rebuild<B: ReqBody>(self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// HTTP/2 carries the target in `:scheme` and `:authority`: the client's Host
/// becomes the authority (or the endpoint's when there is none).
fn set_h2_target<B>(req: &mut Request<B>, addr: &EndpointAddr) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| h.to_str().ok().and_then(|h| h.parse().ok()))
        .unwrap_or_else(|| addr.authority().clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if addr.tls {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// HTTP/1.1 sends the origin form and a Host header.
fn set_h1_target<B>(req: &mut Request<B>, addr: &EndpointAddr) {
    if !req.headers().contains_key(HOST) {
        if let Some(authority) = req.uri().authority() {
            if let Ok(v) = authority.as_str().parse() {
                req.headers_mut().insert(HOST, v);
            }
        } else if let Ok(v) = addr.authority().as_str().parse() {
            req.headers_mut().insert(HOST, v);
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    *req.version_mut() = Version::HTTP_11;
}

fn tls_connector(cfg: &PoolConfig) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &cfg.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = match cfg.protocol {
        Protocol::H2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::H1 => vec![b"http/1.1".to_vec()],
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}
