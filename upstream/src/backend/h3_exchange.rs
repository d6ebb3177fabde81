//! One exchange over HTTP/3 for an h3 pool's endpoint: the shared QUIC
//! connection (opened on demand, or known broken: then the request goes over
//! TCP as an h2 pool's would), the request head and its body streamed, and the
//! response read off the QUIC stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};

use super::{set_h2_target, Backend, Failed};
use crate::body::{head_within, BodyWatch, Lease, Outgoing, UpstreamBody};
use crate::clock::now_ms;
use crate::conn::Connector;
use crate::error::Error;
use crate::pool::ReqBody;
use crate::quic::{self, H3Body, H3Conn, QuicFailed, QUIC_BROKEN_FOR};

/// A request the HTTP/3 try handed back unsent, and why QUIC failed.
pub(super) type Unsent<B> = (Request<B>, Option<QuicFailed>);

impl<B: ReqBody> Backend<B> {
    /// The HTTP/3 try: a QUIC connection (pooled unless `fresh`) and the
    /// exchange on it, or the request handed back, unsent, with why QUIC
    /// failed (`None`: no QUIC connector, or the endpoint is known not to
    /// speak it) so that `exchange` falls back to TCP.
    pub(super) async fn exchange_h3(
        &self,
        connector: &Connector,
        req: Request<B>,
        fresh: bool,
        timeout: Duration,
    ) -> Result<Result<Response<UpstreamBody>, Failed<B>>, Unsent<B>> {
        match self.checkout_h3(connector, fresh).await {
            Ok(conn) => Ok(self.send_h3(conn, req, timeout).await),
            Err(failed) => Err((req, failed)),
        }
    }

    /// The shared QUIC connection (opened if there is none, or if `fresh`) and
    /// whether it was pooled. `Err(None)`: QUIC is known broken for this
    /// endpoint; `Err(Some(why))`: it just failed to connect. Either way the
    /// request goes over TCP. A failed connect marks the endpoint broken for
    /// [`QUIC_BROKEN_FOR`] at once, so concurrent misses (which share the one
    /// connect) go to TCP too; [`Self::fell_back`] or
    /// [`Self::quic_not_broken`] settle it once TCP has answered or not.
    pub(super) async fn checkout_h3(
        &self,
        connector: &Connector,
        fresh: bool,
    ) -> Result<(Arc<H3Conn>, bool), Option<QuicFailed>> {
        let Some(quic) = connector.quic.as_ref() else {
            return Err(None);
        };
        let live = || {
            self.h3
                .load_full()
                .filter(|c| !c.is_closed())
                .map(|c| (c, true))
        };
        let broken = || self.quic_broken_until.load(Ordering::Relaxed) > now_ms();
        if !fresh {
            if let Some(c) = live() {
                return Ok(c);
            }
        }
        if broken() {
            return Err(None);
        }
        let _connecting = self.h3_connecting.lock().await;
        if !fresh {
            if let Some(c) = live() {
                return Ok(c);
            }
        }
        if broken() {
            return Err(None);
        }
        match quic
            .connect(
                &self.addr,
                connector.connect_timeout,
                connector.idle_timeout,
            )
            .await
        {
            Ok(conn) => {
                let conn = Arc::new(conn);
                self.h3.store(Some(conn.clone()));
                Ok((conn, false))
            }
            Err(e) => {
                let until = now_ms() + u64::try_from(QUIC_BROKEN_FOR.as_millis()).unwrap_or(0);
                self.quic_broken_until.store(until, Ordering::Relaxed);
                self.h3.store(None);
                Err(Some(e))
            }
        }
    }

    /// QUIC failed and TCP connected: the endpoint is reachable but not over
    /// QUIC (UDP blocked, no QUIC listener). It stays on TCP for
    /// [`QUIC_BROKEN_FOR`]; counted and logged once per endpoint and period.
    pub(super) fn fell_back(&self, connector: &Connector, why: &QuicFailed) {
        if let Some(quic) = &connector.quic {
            quic.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            endpoint = %self.addr,
            error = %why,
            "QUIC to the endpoint failed but TCP works; sending its requests over TCP (h2) for {}s",
            QUIC_BROKEN_FOR.as_secs()
        );
    }

    /// QUIC failed and so did TCP: the endpoint is down, which says nothing
    /// about QUIC. The next request tries QUIC again.
    pub(super) fn quic_not_broken(&self) {
        self.quic_broken_until.store(0, Ordering::Relaxed);
    }

    /// One exchange over HTTP/3 on `conn` (`reused`: it was pooled). The request
    /// body uploads in a task of its own while the response head is awaited.
    async fn send_h3(
        &self,
        (conn, reused): (Arc<H3Conn>, bool),
        mut req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, Failed<B>> {
        let lease = Lease::new(conn.state.clone(), self.load.clone());
        let endpoint = || self.addr.to_string();
        // No body follows these, whatever content-length says.
        let head_only = req.method() == Method::HEAD;
        set_h2_target(&mut req, &self.addr);
        *req.version_mut() = Version::HTTP_3;
        // The head is given to h3 by value: a copy, so a request that never
        // left (the connection closed just before) can go elsewhere whole.
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = Version::HTTP_3;
        *head.headers_mut() = req.headers().clone();
        let mut send = conn.send.clone();
        // Opening a stream waits for the server's stream credit: bounded too.
        let stream = match tokio::time::timeout(timeout, send.send_request(head)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // The connection takes no more requests (GOAWAY, closing):
                // the next try opens a new one rather than fail on it again.
                self.h3.rcu(|current| match current {
                    Some(c) if Arc::ptr_eq(c, &conn) => None,
                    other => other.clone(),
                });
                let error = Error::Request {
                    endpoint: endpoint(),
                    source: e.into(),
                };
                return Err(Failed::Unsent(Box::new(req), error));
            }
            Err(_) => {
                let error = Error::Timeout {
                    endpoint: endpoint(),
                    after: timeout,
                };
                return Err(Failed::Unsent(Box::new(req), error));
            }
        };
        drop(send);
        let (mut tx, mut rx) = stream.split();
        let interim = req.extensions().get::<crate::Interim>().cloned();
        let body = req.into_body();
        // Only a body still to come is watched and uploaded by a task.
        let watch = (!body.is_end_stream()).then(BodyWatch::new);
        let upload = match &watch {
            Some(w) => Some(quic::upload(tx, Outgoing::new(body, Some(w.clone())))),
            None => {
                if let Err(e) = tx.finish().await {
                    let error = Error::Request {
                        endpoint: endpoint(),
                        source: e.into(),
                    };
                    return Err(Failed::Sent { error, reused });
                }
                None
            }
        };
        // Interim (1xx) heads come first, each its own HEADERS frame: handed on
        // (or dropped), never taken for the final response.
        let final_head = async {
            loop {
                let head = rx.recv_response().await?;
                if !head.status().is_informational() {
                    return Ok::<_, h3::error::StreamError>(head);
                }
                if let Some(interim) = &interim {
                    interim.send(head);
                }
            }
        };
        let head = head_within(final_head, watch.as_deref(), timeout).await;
        // Whatever h3 made of it, an exchange whose request body failed is the
        // client's failure.
        if let Some(source) = watch
            .as_ref()
            .filter(|_| !matches!(head, Some(Ok(_))))
            .and_then(|w| w.take_failure())
        {
            let error = Error::ClientBody {
                endpoint: endpoint(),
                source,
            };
            return Err(Failed::Sent { error, reused });
        }
        match head {
            None => Err(Failed::Sent {
                error: Error::Timeout {
                    endpoint: endpoint(),
                    after: timeout,
                },
                reused,
            }),
            Some(Err(e)) => Err(Failed::Sent {
                error: Error::Request {
                    endpoint: endpoint(),
                    source: e.into(),
                },
                reused,
            }),
            Some(Ok(resp)) => {
                let head_only = head_only
                    || resp.status() == StatusCode::NO_CONTENT
                    || resp.status() == StatusCode::NOT_MODIFIED;
                let len = resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .filter(|_| !head_only);
                let (parts, ()) = resp.into_parts();
                let body = H3Body::new(rx, len, upload, conn);
                Ok(Response::from_parts(parts, UpstreamBody::h3(body, lease)))
            }
        }
    }
}
