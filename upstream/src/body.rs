use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::Load;
use crate::clock::now_ms;
use crate::conn::ConnState;

/// A response body from a backend. While it is alive the connection it arrived on
/// counts it as in flight, so an idle sweep never closes a connection mid-response.
/// An HTTP/1.1 connection goes back to its idle stack once the body was read to
/// the end (not when it is dropped early: hyper cannot reuse that connection).
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

/// Puts an HTTP/1.1 connection back on its endpoint's idle stack.
pub(crate) type Reuse = Box<dyn FnOnce() + Send + Sync>;

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner,
            lease: Some(lease),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.reuse();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body hyper knew to be empty is never polled to its end.
        if self.inner.is_end_stream() {
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
