use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::Load;
use crate::clock::now_ms;
use crate::conn::ConnState;
use crate::quic::H3Body;
use crate::BoxError;

/// A response body from a backend. While it is alive the connection it arrived on
/// counts it as in flight, so an idle sweep never closes a connection mid-response.
/// An HTTP/1.1 connection goes back to its idle stack once the body was read to
/// the end (not when it is dropped early: hyper cannot reuse that connection).
pub struct UpstreamBody {
    inner: Inner,
    lease: Option<Lease>,
}

enum Inner {
    /// HTTP/1.1 or HTTP/2, from hyper.
    Hyper(Incoming),
    /// HTTP/3, read off the QUIC stream (boxed: the hyper path stays small).
    H3(Box<H3Body>),
}

/// Puts an HTTP/1.1 connection back on its endpoint's idle stack.
pub(crate) type Reuse = Box<dyn FnOnce() + Send + Sync>;

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner: Inner::Hyper(inner),
            lease: Some(lease),
        }
    }

    pub(crate) fn h3(inner: H3Body, lease: Lease) -> Self {
        Self {
            inner: Inner::H3(Box::new(inner)),
            lease: Some(lease),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::H3(b) => Pin::new(b.as_mut()).poll_frame(cx),
        };
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.reuse();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::H3(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::H3(b) => b.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body hyper knew to be empty is never polled to its end.
        if self.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.reuse();
            }
        }
    }
}

/// One request's claim on a pooled connection and on its endpoint's load;
/// released when the response ends (or the request fails).
pub(crate) struct Lease {
    conn: Arc<ConnState>,
    load: Arc<Load>,
    reuse: Option<Reuse>,
}

impl Lease {
    pub(crate) fn new(conn: Arc<ConnState>, load: Arc<Load>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            conn,
            load,
            reuse: None,
        }
    }

    /// What to run when the response was read to its end.
    pub(crate) fn set_reuse(&mut self, reuse: Reuse) {
        self.reuse = Some(reuse);
    }

    /// The response ended cleanly: release, then offer the connection again.
    fn reuse(mut self) {
        let reuse = self.reuse.take();
        drop(self);
        if let Some(reuse) = reuse {
            reuse();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.last_active_ms.store(now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body on its way to an endpoint, watched: when reading it fails the
/// exchange is the client's fault (the error is kept in the watch and hyper gets
/// a stand-in), and the response timeout counts from the body's last progress,
/// not from the request's start, so a slow upload is never a slow backend.
pub(crate) struct Outgoing<B> {
    pub(crate) inner: B,
    watch: Option<Arc<BodyWatch>>,
}

impl<B: Default> Default for Outgoing<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            watch: None,
        }
    }
}

impl<B> Outgoing<B> {
    pub(crate) fn new(inner: B, watch: Option<Arc<BodyWatch>>) -> Self {
        Self { inner, watch }
    }
}

/// What the exchange learns from its request body as hyper sends it.
#[derive(Default)]
pub(crate) struct BodyWatch {
    /// Why reading the body failed, when it did.
    failed: std::sync::Mutex<Option<BoxError>>,
    /// The body is waiting for the client (its last poll was pending).
    on_client: AtomicBool,
    /// When the body last moved (a frame, its end, or a pending read from the client).
    progress_ms: AtomicU64,
}

impl BodyWatch {
    pub(crate) fn new() -> Arc<Self> {
        let watch = Self::default();
        watch.progress_ms.store(now_ms(), Ordering::Relaxed);
        Arc::new(watch)
    }

    /// The body's error, once (the exchange that failed takes it).
    pub(crate) fn take_failure(&self) -> Option<BoxError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// How long the endpoint has kept the exchange waiting: zero while the body
    /// waits for the client (the client's own limits bound that), else the time
    /// since the body last moved.
    pub(crate) fn upstream_wait(&self) -> Duration {
        if self.on_client.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let since = now_ms().saturating_sub(self.progress_ms.load(Ordering::Relaxed));
        Duration::from_millis(since)
    }

    fn moved(&self, on_client: bool) {
        self.on_client.store(on_client, Ordering::Relaxed);
        self.progress_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Waits for the response head. `timeout` is the endpoint's time to answer: for
/// a request with a body it counts from the body's last progress (so from its
/// end once it is sent), never while the body waits for the client; the
/// client's own body limits bound that. `None` when the time ran out.
pub(crate) async fn head_within<F: std::future::Future>(
    head: F,
    watch: Option<&BodyWatch>,
    timeout: Duration,
) -> Option<F::Output> {
    let Some(watch) = watch else {
        return tokio::time::timeout(timeout, head).await.ok();
    };
    tokio::pin!(head);
    let mut wake = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            out = &mut head => return Some(out),
            () = tokio::time::sleep_until(wake) => {
                let waited = watch.upstream_wait();
                if waited >= timeout {
                    return None;
                }
                wake = tokio::time::Instant::now() + (timeout - waited);
            }
        }
    }
}

/// The error hyper sees when the client's body failed; the real one is in the watch.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub(crate) struct ClientBodyFailed;

impl<B> Body for Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Some(watch) = &self.watch else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Pending => {
                if !watch.on_client.load(Ordering::Relaxed) {
                    watch.moved(true);
                }
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => {
                watch.moved(false);
                *watch.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
                Poll::Ready(Some(Err(Box::new(ClientBodyFailed))))
            }
            Poll::Ready(other) => {
                watch.moved(false);
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body whose client went away: pending once, then an error.
    struct Vanishing(bool);

    impl Body for Vanishing {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if !self.0 {
                self.0 = true;
                return Poll::Pending;
            }
            Poll::Ready(Some(Err(std::io::Error::other("client gone"))))
        }
    }

    #[test]
    fn the_watch_keeps_the_clients_error_and_never_blames_a_wait_on_the_client() {
        let watch = BodyWatch::new();
        let mut body = Outgoing::new(Vanishing(false), Some(watch.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        // Waiting on the client is never the endpoint's time.
        assert_eq!(watch.upstream_wait(), Duration::ZERO);
        let Poll::Ready(Some(Err(e))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("the body fails");
        };
        assert!(e.is::<ClientBodyFailed>(), "hyper gets the stand-in: {e}");
        let kept = watch.take_failure().expect("the client's error is kept");
        assert_eq!(kept.to_string(), "client gone");
        assert!(watch.take_failure().is_none(), "taken once");
    }
}
