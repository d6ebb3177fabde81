//! One endpoint at run time: its pooled connections (a shared HTTP/2 one, a shared
//! QUIC one for HTTP/3 in `h3_exchange.rs`, or a stack of idle HTTP/1.1 ones), its
//! breaker and load, and one exchange on it.
//!
//! Just past 700 lines since pre-warming joined the connection code it reuses.
//! Where it splits next: the HTTP/1.1 idle stack (`park`, `pop_idle_h1`,
//! `park_h1_when_ready`, `reuse_h1`, `prewarm`) into `backend/h1_idle.rs`, which
//! is also where the connection leak behind HTTP/2 clients (BENCHMARKS.md,
//! 2026-12-03 afternoon) is to be looked for.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::client::conn::{http1, http2};

use crate::balance::Load;
use crate::body::{head_within, BodyWatch, Lease, Outgoing, UpstreamBody};
use crate::breaker::{Breaker, BreakerConfig};
use crate::clock::now_ms;
use crate::conn::{ConnState, Connector, Sender};
use crate::endpoint::EndpointAddr;
use crate::error::{Blame, Error};
use crate::health::{Health, HealthCheck};
use crate::pool::{Protocol, ReqBody};
use crate::quic::H3Conn;

mod h3_exchange;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when they finish.
const MAX_IDLE_H1: usize = 512;

pub(crate) struct Backend<B> {
    pub(crate) addr: EndpointAddr,
    /// `addr` as text, made once (metrics, the `Served` extension).
    pub(crate) label: Arc<str>,
    /// Stable id of the endpoint (a hash of its address), for [`crate::Prefer`].
    pub(crate) id: u64,
    pub(crate) load: Arc<Load>,
    pub(crate) breaker: Mutex<Breaker>,
    /// Active health: read on every pick, written by the health checker.
    pub(crate) healthy: AtomicBool,
    /// Times the breaker opened (ejections), for metrics.
    pub(crate) ejections: std::sync::atomic::AtomicU64,
    pub(crate) health: Mutex<Health>,
    /// Set once the endpoint showed it speaks HTTP/1.1 only (TLS ALPN, or a
    /// successful HTTP/1.1 probe after the h2c preface failed).
    h1_only: AtomicBool,
    /// Set once an HTTP/2 response came back: from then on an HTTP/2 error is an
    /// error, not a sign of an HTTP/1.1-only backend.
    h2_confirmed: AtomicBool,
    h2: ArcSwapOption<H2Conn<B>>,
    /// Held while opening the shared HTTP/2 connection, so concurrent misses share one connect.
    h2_connecting: tokio::sync::Mutex<()>,
    /// An h3 pool's https endpoint: requests go over QUIC unless it is broken.
    h3_wanted: bool,
    h3: ArcSwapOption<H3Conn>,
    /// Held while opening the shared QUIC connection.
    h3_connecting: tokio::sync::Mutex<()>,
    /// Until when (ms, [`now_ms`]) QUIC is known not to connect; 0 when it is not.
    quic_broken_until: AtomicU64,
    h1_idle: Arc<Mutex<Vec<H1Idle<B>>>>,
    /// The endpoint's HTTP/1.1 connection cap: each open connection holds a
    /// permit, so cancelled requests cannot make it open connections without end.
    h1_slots: Arc<tokio::sync::Semaphore>,
    h1_limit: usize,
    /// Requests waiting for a slot or an idle connection.
    h1_waiting: AtomicUsize,
    /// Told whenever a connection goes back on the idle stack.
    h1_freed: Arc<tokio::sync::Notify>,
}

/// What a request waiting at the connection cap got.
enum Waited<B> {
    Idle(H1Idle<B>),
    Slot(tokio::sync::OwnedSemaphorePermit),
}

/// A request counted in `h1_waiting` until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct H2Conn<B> {
    send: http2::SendRequest<Outgoing<B>>,
    state: Arc<ConnState>,
}

struct H1Idle<B> {
    send: http1::SendRequest<Outgoing<B>>,
    state: Arc<ConnState>,
}

struct Checkout<B> {
    sender: Sender<Outgoing<B>>,
    state: Arc<ConnState>,
    reused: bool,
}

/// How an exchange that produced no response ended.
pub(crate) enum Failed<B> {
    /// Nothing reached the backend (no connection, or hyper handed the request
    /// back): it may be sent anywhere, whatever its method.
    Unsent(Box<Request<B>>, Error),
    /// The request may have reached the backend; only a body-less safe one may be
    /// sent again. `reused`: it failed on a pooled connection.
    Sent { error: Error, reused: bool },
}

/// A body-less request's head kept aside so it can be sent again.
pub(crate) struct Replay {
    pub(crate) idempotent: bool,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    pub(crate) fn capture<B: ReqBody>(req: &Request<B>) -> Option<Self> {
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

    pub(crate) fn rebuild<B: ReqBody>(&self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl<B: ReqBody> Backend<B> {
    pub(crate) fn new(
        addr: EndpointAddr,
        protocol: Protocol,
        breaker: BreakerConfig,
        max_connections: usize,
    ) -> Self {
        let label: Arc<str> = addr.to_string().into();
        let h3_wanted = protocol == Protocol::H3 && addr.tls;
        Self {
            id: crate::pool::endpoint_id(&label),
            label,
            addr,
            load: Arc::new(Load::new(now_ms())),
            breaker: Mutex::new(Breaker::new(breaker)),
            healthy: AtomicBool::new(true),
            ejections: std::sync::atomic::AtomicU64::new(0),
            health: Mutex::new(Health::default()),
            h1_only: AtomicBool::new(protocol == Protocol::H1),
            h2_confirmed: AtomicBool::new(false),
            h2: ArcSwapOption::empty(),
            h2_connecting: tokio::sync::Mutex::new(()),
            h3_wanted,
            h3: ArcSwapOption::empty(),
            h3_connecting: tokio::sync::Mutex::new(()),
            quic_broken_until: AtomicU64::new(0),
            h1_idle: Arc::default(),
            h1_slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            h1_limit: max_connections,
            h1_waiting: AtomicUsize::new(0),
            h1_freed: Arc::default(),
        }
    }

    pub(crate) fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one health probe and records it; logs when the state flips. Returns
    /// whether the probe passed.
    pub(crate) async fn probe(&self, connector: &Connector, check: &HealthCheck) -> bool {
        let mut req = Request::new(B::default());
        if let Ok(uri) = check.path.parse() {
            *req.uri_mut() = uri;
        }
        let ok = match self
            .exchange(connector, req, false, check.timeout, None)
            .await
        {
            Ok(resp) => resp.status().is_success() || resp.status().is_redirection(),
            // Out of descriptors here says nothing about the endpoint's health.
            Err(Failed::Unsent(_, e) | Failed::Sent { error: e, .. })
                if e.blame() != Blame::Upstream =>
            {
                tracing::debug!(endpoint = %self.addr, error = %e, "health probe not sent");
                return false;
            }
            Err(_) => false,
        };
        let flipped = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ok, check);
        if let Some(healthy) = flipped {
            self.healthy.store(healthy, Ordering::Relaxed);
            if healthy {
                // Active checks just proved it answers again: a breaker opened
                // while it was down would otherwise keep it out for its whole
                // (growing) open period.
                self.breaker().on_success();
                tracing::info!(endpoint = %self.addr, path = %check.path, "health check passing: endpoint back in rotation");
            } else {
                tracing::warn!(endpoint = %self.addr, path = %check.path, "health check failing: endpoint out of rotation");
            }
        }
        ok
    }

    /// One exchange: a connection (pooled unless `fresh`), the request, and the
    /// response head within `timeout`. An h2c endpoint that never answered in
    /// HTTP/2 and breaks off is probed once over HTTP/1.1 (see `probe_h1`).
    pub(crate) async fn exchange(
        &self,
        connector: &Connector,
        mut req: Request<B>,
        fresh: bool,
        timeout: Duration,
        replay: Option<&Replay>,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        // The HTTP/3 try and the h2c probe are boxed: inline, their futures
        // (QUIC connect, h3 exchange, a second connect) made this one 6 KB, and
        // every h1/h2 request's future above it paid for copying that.
        let mut quic_failed = None;
        if self.h3_wanted {
            match Box::pin(self.exchange_h3(connector, req, fresh, timeout)).await {
                Ok(result) => return result,
                Err((unsent, failed)) => {
                    req = unsent;
                    quic_failed = failed;
                }
            }
        }
        let co = match self.checkout(connector, fresh).await {
            Ok(co) => co,
            Err(e) => {
                if quic_failed.is_some() {
                    self.quic_not_broken();
                }
                return Err(Failed::Unsent(Box::new(req), e));
            }
        };
        if let Some(e) = quic_failed {
            self.fell_back(connector, &e);
        }
        let unproven_h2c = matches!(co.sender, Sender::H2(_))
            && !self.addr.tls
            && !self.h2_confirmed.load(Ordering::Relaxed);
        match self.send_on(co, req, timeout).await {
            Err(Failed::Unsent(req, e)) if unproven_h2c => {
                Box::pin(self.probe_h1(connector, *req, e, timeout)).await
            }
            Err(Failed::Sent {
                error: e @ Error::Request { .. },
                ..
            }) if unproven_h2c => match replay {
                Some(r) if r.idempotent => {
                    Box::pin(self.probe_h1(connector, r.rebuild(), e, timeout)).await
                }
                _ => Err(Failed::Sent {
                    error: e,
                    reused: false,
                }),
            },
            other => other,
        }
    }

    /// `edge run --upstream http://...` speaks h2c by default, and many backends
    /// speak only HTTP/1.1: they close or answer garbage to the h2c preface, having
    /// parsed no request. The request is tried once over HTTP/1.1; only if that
    /// answers is the endpoint switched, so a sick HTTP/2 backend is never demoted.
    async fn probe_h1(
        &self,
        connector: &Connector,
        req: Request<B>,
        h2_error: Error,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        let unproven = || Failed::Sent {
            error: h2_error,
            reused: false,
        };
        let slot = self.h1_slots.clone().try_acquire_owned().ok();
        let Ok((sender, state)) = connector.connect(&self.addr, Protocol::H1, slot).await else {
            return Err(unproven());
        };
        let co = Checkout {
            sender,
            state,
            reused: false,
        };
        let Ok(resp) = self.send_on(co, req, timeout).await else {
            return Err(unproven());
        };
        if !self.h1_only.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.addr,
                "endpoint does not speak HTTP/2 (h2c) but answers HTTP/1.1; using HTTP/1.1 for it \
                 (set protocol = \"h1\" for this pool, or --upstream-protocol h1, to skip this probe)"
            );
        }
        Ok(resp)
    }

    async fn send_on(
        &self,
        co: Checkout<B>,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        let mut lease = Lease::new(co.state.clone(), self.load.clone());
        let reused = co.reused;
        // Only a body still to come is watched: a body-less request stays cheap.
        let watch = (!req.body().is_end_stream()).then(BodyWatch::new);
        let mut req = req.map(|body| Outgoing::new(body, watch.clone()));
        crate::Interim::bridge(&mut req);
        let sent = match co.sender {
            Sender::H2(mut send) => {
                set_h2_target(&mut req, &self.addr);
                let sent = head_within(send.try_send_request(req), watch.as_deref(), timeout).await;
                if matches!(sent, Some(Ok(_))) {
                    self.h2_confirmed.store(true, Ordering::Relaxed);
                }
                sent
            }
            Sender::H1(mut send) => {
                set_h1_target(&mut req, &self.addr);
                let sent = head_within(send.try_send_request(req), watch.as_deref(), timeout).await;
                if matches!(sent, Some(Ok(_))) {
                    lease.set_reuse(self.reuse_h1(send, co.state));
                }
                sent
            }
        };
        let endpoint = || self.addr.to_string();
        // Whatever hyper made of it, an exchange whose request body failed is the
        // client's failure (and the body is gone: it is never sent again).
        if let Some(source) = watch
            .as_ref()
            .filter(|_| !matches!(sent, Some(Ok(_))))
            .and_then(|w| w.take_failure())
        {
            let error = Error::ClientBody {
                endpoint: endpoint(),
                source,
            };
            return Err(Failed::Sent { error, reused });
        }
        match sent {
            None => Err(Failed::Sent {
                error: Error::Timeout {
                    endpoint: endpoint(),
                    after: timeout,
                },
                reused,
            }),
            Some(Ok(resp)) => Ok(resp.map(|body| UpstreamBody::new(body, lease))),
            Some(Err(mut e)) => {
                let failed = |source: hyper::Error| Error::Request {
                    endpoint: endpoint(),
                    source: source.into(),
                };
                match e.take_message() {
                    Some(req) => Err(Failed::Unsent(
                        Box::new(req.map(|b| b.inner)),
                        failed(e.into_error()),
                    )),
                    None => Err(Failed::Sent {
                        error: failed(e.into_error()),
                        reused,
                    }),
                }
            }
        }
    }

    /// One upgrade exchange on a connection of its own (see
    /// `Connector::connect_upgrade`): the request, and the response head within
    /// `timeout`. A 101 carries the backend's `OnUpgrade` in its extensions.
    pub(crate) async fn upgrade(
        &self,
        connector: &Connector,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        let mut send = match connector.connect_upgrade::<Outgoing<B>>(&self.addr).await {
            Ok(send) => send,
            Err(e) => return Err(Failed::Unsent(Box::new(req), e)),
        };
        let lease = Lease::new(ConnState::new(), self.load.clone());
        let mut req = req.map(|body| Outgoing::new(body, None));
        set_h1_target(&mut req, &self.addr);
        let endpoint = || self.addr.to_string();
        let sent = tokio::time::timeout(timeout, send.try_send_request(req)).await;
        // The sender goes now: once this exchange ends, the connection closes
        // (or, after a 101, its socket is the tunnel's).
        drop(send);
        match sent {
            Err(_) => Err(Failed::Sent {
                error: Error::Timeout {
                    endpoint: endpoint(),
                    after: timeout,
                },
                reused: false,
            }),
            Ok(Ok(resp)) => Ok(resp.map(|body| UpstreamBody::new(body, lease))),
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let error = Error::Request {
                    endpoint: endpoint(),
                    source: e.into_error().into(),
                };
                match unsent {
                    Some(req) => Err(Failed::Unsent(Box::new(req.map(|b| b.inner)), error)),
                    None => Err(Failed::Sent {
                        error,
                        reused: false,
                    }),
                }
            }
        }
    }

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
        // ALPN may still choose HTTP/1.1: such a connection counts against the cap
        // when a slot is free (an h2 one holds it for its life, one of many).
        let slot = self.h1_slots.clone().try_acquire_owned().ok();
        let (sender, state) = connector.connect(&self.addr, self.protocol(), slot).await?;
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

    /// Opens connections ahead of demand until `target` HTTP/1.1 ones are open
    /// (each parked idle), or the shared HTTP/2 one is; returns how many it
    /// opened. A failed connect ends the warming and is only logged: judging
    /// the endpoint is the request path's job.
    pub(crate) async fn prewarm(&self, connector: &Connector, target: usize) -> usize {
        if self.h3_wanted {
            match self.checkout_h3(connector, false).await {
                Ok((_, reused)) => return usize::from(!reused),
                // Judged by the next request, which tries TCP too.
                Err(Some(_)) => self.quic_not_broken(),
                Err(None) => {}
            }
        }
        if !self.h1_only.load(Ordering::Relaxed) {
            if self.live_h2().is_some() {
                return 0;
            }
            return match self.checkout(connector, false).await {
                Ok(co) => {
                    if let Sender::H1(send) = co.sender {
                        let idle = H1Idle {
                            send,
                            state: co.state,
                        };
                        park(&self.h1_idle, &self.h1_freed, idle);
                    }
                    usize::from(!co.reused)
                }
                Err(e) => {
                    tracing::debug!(endpoint = %self.addr, error = %e, "pre-warm connect failed");
                    0
                }
            };
        }
        let open = self.h1_limit - self.h1_slots.available_permits();
        let mut opened = 0;
        for _ in open..target.min(self.h1_limit) {
            let Ok(slot) = self.h1_slots.clone().try_acquire_owned() else {
                break;
            };
            match connector
                .connect(&self.addr, Protocol::H1, Some(slot))
                .await
            {
                Ok((Sender::H1(send), state)) => {
                    park(&self.h1_idle, &self.h1_freed, H1Idle { send, state });
                }
                // Asked for HTTP/1.1; only ALPN could say otherwise, and an
                // endpoint is HTTP/1.1-only because ALPN said so.
                Ok((Sender::H2(_), _)) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %self.addr, error = %e, "pre-warm connect failed");
                    break;
                }
            }
            opened += 1;
        }
        opened
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
        let reused = |idle: H1Idle<B>| Checkout {
            sender: Sender::H1(idle.send),
            state: idle.state,
            reused: true,
        };
        if !fresh {
            if let Some(idle) = self.pop_idle_h1() {
                return Ok(reused(idle));
            }
        }
        let slot = match self.h1_slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match self.wait_h1(connector, fresh).await? {
                Waited::Idle(idle) => return Ok(reused(idle)),
                Waited::Slot(slot) => slot,
            },
        };
        let (sender, state) = connector
            .connect(&self.addr, self.protocol(), Some(slot))
            .await?;
        Ok(Checkout {
            sender,
            state,
            reused: false,
        })
    }

    /// At the connection cap: waits, in a bounded queue and for a bounded time,
    /// for a connection to go idle (unless `fresh`) or to close.
    async fn wait_h1(&self, connector: &Connector, fresh: bool) -> Result<Waited<B>, Error> {
        let queued = self.h1_waiting.fetch_add(1, Ordering::AcqRel);
        let _queued = Queued(&self.h1_waiting);
        if queued >= connector.queue {
            return Err(Error::QueueFull {
                endpoint: self.addr.to_string(),
                limit: self.h1_limit,
                queued,
            });
        }
        let wait = async {
            loop {
                // Registered before looking, so a connection parked in between
                // is not missed.
                let freed = self.h1_freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if !fresh {
                    if let Some(idle) = self.pop_idle_h1() {
                        return Some(Waited::Idle(idle));
                    }
                }
                tokio::select! {
                    slot = self.h1_slots.clone().acquire_owned() => return slot.ok().map(Waited::Slot),
                    () = freed => {}
                }
            }
        };
        match tokio::time::timeout(connector.queue_timeout, wait).await {
            Ok(Some(waited)) => Ok(waited),
            // The semaphore is never closed; treated as a full queue if it were.
            Ok(None) | Err(_) => Err(Error::QueueTimeout {
                endpoint: self.addr.to_string(),
                limit: self.h1_limit,
                after: connector.queue_timeout,
            }),
        }
    }

    /// The most recently parked ready connection. One that is not ready yet (its
    /// response ended but hyper has not finished with it, e.g. a request body still
    /// uploading) is set aside to come back when it is.
    fn pop_idle_h1(&self) -> Option<H1Idle<B>> {
        let mut busy = Vec::new();
        let found = {
            let mut idle = self.h1_idle.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match idle.pop() {
                    Some(conn) if conn.send.is_ready() => break Some(conn),
                    Some(conn) if !conn.send.is_closed() => busy.push(conn),
                    Some(_) => {}
                    None => break None,
                }
            }
        };
        for conn in busy {
            self.park_h1_when_ready(conn.send, conn.state);
        }
        found
    }

    /// Returns an HTTP/1.1 connection to the idle stack once hyper reports it ready.
    fn park_h1_when_ready(&self, mut send: http1::SendRequest<Outgoing<B>>, state: Arc<ConnState>)
    where
        B: ReqBody,
    {
        let stack = self.h1_idle.clone();
        let freed = self.h1_freed.clone();
        tokio::spawn(async move {
            if send.ready().await.is_ok() {
                park(&stack, &freed, H1Idle { send, state });
            }
        });
    }

    /// Returns an HTTP/1.1 connection to the idle stack once its response has been
    /// read to the end: run by the response body, instead of a task per request
    /// waiting for hyper to report the connection ready.
    fn reuse_h1(
        &self,
        send: http1::SendRequest<Outgoing<B>>,
        state: Arc<ConnState>,
    ) -> crate::body::Reuse
    where
        B: ReqBody,
    {
        let stack = self.h1_idle.clone();
        let freed = self.h1_freed.clone();
        Box::new(move || park(&stack, &freed, H1Idle { send, state }))
    }
}

/// Puts a connection on the idle stack (closing it when the stack is full) and
/// wakes one request waiting at the connection cap.
fn park<B>(stack: &Mutex<Vec<H1Idle<B>>>, freed: &tokio::sync::Notify, conn: H1Idle<B>) {
    {
        let mut idle = stack.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_H1 {
            idle.push(conn);
        }
    }
    freed.notify_one();
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
    // TE is hop-by-hop in HTTP/1.1: it must be named in Connection (RFC 9110
    // 10.1.4). The pipeline has already removed any client Connection header.
    if req.headers().contains_key(http::header::TE) {
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("te"),
        );
    }
}
