//! A backend body relayed to the client frame by frame while a copy is kept for
//! the cache, up to a bound. The client never waits for the copy: a miss streams
//! as fast as it would uncached. When the body ends cleanly (and matches its
//! Content-Length), the copy goes into L1 at once and to Redis in the
//! background; past the bound, on an
//! error or if the client goes away, the copy is dropped and nothing is stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http_body::{Body as HttpBody, Frame, SizeHint};
use upstream::{BoxError, UpstreamBody};

use super::coalesce::Leader;
use super::entry::{Entry, VaryList};
use super::Cache;

/// What is needed to store the copy once complete.
pub(super) struct Pending {
    pub cache: Arc<Cache>,
    pub key: String,
    /// The entry without its body.
    pub entry: Entry,
    pub names: Vec<String>,
    pub seen: Option<Arc<VaryList>>,
    pub leader: Option<Leader>,
}

impl Pending {
    fn finish(self, chunks: Vec<Bytes>, len: usize) {
        let expected = self
            .entry
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if expected.is_some_and(|n| n != len) {
            tracing::debug!(
                key = self.key,
                "cache: body length differs from Content-Length; not stored"
            );
            return;
        }
        let mut body = BytesMut::with_capacity(len);
        for c in chunks {
            body.extend_from_slice(&c);
        }
        let Pending {
            cache,
            key,
            mut entry,
            names,
            seen,
            leader,
        } = self;
        entry.body = body.freeze();
        // In L1 before the client sees the end of the body, so its next request
        // (or a waiting follower) finds it; Redis is written in the background.
        let mut leader = leader;
        let release = leader.as_mut().and_then(Leader::take_release);
        let writes = cache.store_l1(&key, entry, names, seen);
        drop(leader);
        if cache.l2.is_some() {
            tokio::spawn(async move {
                cache.store_l2(writes).await;
                // Other edges wait on the lock until the entry is in Redis.
                if let Some(release) = release {
                    release();
                }
            });
        }
    }
}

pub struct Tee {
    inner: UpstreamBody,
    chunks: Vec<Bytes>,
    len: usize,
    bound: usize,
    /// Content-Length, when the backend sent one: reaching it completes the
    /// copy even if the server never polls for the end of the stream.
    declared: Option<usize>,
    pending: Option<Pending>,
}

impl Tee {
    pub(super) fn new(inner: UpstreamBody, bound: usize, pending: Pending) -> Self {
        let declared = pending
            .entry
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut tee = Self {
            inner,
            chunks: Vec::new(),
            len: 0,
            bound,
            declared,
            pending: Some(pending),
        };
        // An empty body may never be polled: store it now.
        if tee.inner.is_end_stream() {
            tee.complete();
        }
        tee
    }

    fn complete(&mut self) {
        if let Some(p) = self.pending.take() {
            p.finish(std::mem::take(&mut self.chunks), self.len);
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match polled {
            Some(Ok(frame)) => {
                if let (Some(data), true) = (frame.data_ref(), this.pending.is_some()) {
                    this.len += data.len();
                    if this.len > this.bound {
                        this.pending = None;
                        this.chunks = Vec::new();
                    } else {
                        this.chunks.push(data.clone());
                    }
                }
                if this.inner.is_end_stream() || this.declared == Some(this.len) {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.pending = None;
                this.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.complete();
                Poll::Ready(None)
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

impl Drop for Tee {
    /// A server may drop a body once it has sent Content-Length bytes, without
    /// polling for its end: the copy is complete then too.
    fn drop(&mut self) {
        if self.pending.is_some() && self.declared == Some(self.len) {
            self.complete();
        }
    }
}
