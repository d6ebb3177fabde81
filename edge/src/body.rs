//! The one body type after the listeners: what a client sent (h1/h2 from hyper,
//! h3 read straight off the QUIC stream), what a backend sent, or a small page the
//! edge wrote itself. Every variant streams; none buffers a whole body.
//! `encode` compresses a response body as it streams.

pub mod encode;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h3::server::RequestStream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use upstream::h3_read::{ReadState, RecvHalf as _};
use upstream::{BoxError, UpstreamBody};

pub type H3RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

#[derive(Default)]
pub enum Body {
    #[default]
    Empty,
    /// A body the edge made; taken on the first poll.
    Full(Option<Bytes>),
    /// A request body from an HTTP/1.1 or HTTP/2 client.
    Incoming(Incoming),
    /// A request body from an HTTP/3 client.
    H3(H3Body),
    /// A response body from a backend.
    Upstream(UpstreamBody),
    /// A body another part wraps without this module knowing it (the cache's
    /// tee, copying a backend's response into the store as it streams).
    Boxed(Pin<Box<dyn HttpBody<Data = Bytes, Error = BoxError> + Send + Sync>>),
    /// A client's request body read under the client limits (size, idle, rate).
    Limited(Box<Limited>),
}

impl Body {
    pub fn full(bytes: Bytes) -> Self {
        Body::Full(Some(bytes))
    }

    pub fn boxed(
        body: impl HttpBody<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    ) -> Self {
        Body::Boxed(Box::pin(body))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::H3(b) => Pin::new(b).poll_frame(cx),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Boxed(b) => b.as_mut().poll_frame(cx),
            Body::Limited(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::H3(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
            Body::Limited(b) => b.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::H3(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Boxed(b) => b.size_hint(),
            Body::Limited(b) => b.inner.size_hint(),
        }
    }
}

/// An HTTP/3 request body read from the QUIC stream as the consumer polls it, so
/// QUIC flow control is the back-pressure.
pub struct H3Body {
    stream: H3RecvStream,
    state: ReadState,
    /// What was read while checking for an early end, handed out first.
    early: Option<Result<Bytes, BoxError>>,
    /// From content-length when the client sent one.
    len: Option<u64>,
}

impl H3Body {
    /// Wraps the stream. A body the client already finished (the FIN came with the
    /// headers, as for most GETs) is seen as ended now, so it travels upstream as an
    /// end-of-stream HEADERS frame and may be retried.
    pub fn new(stream: H3RecvStream, len: Option<u64>) -> Self {
        let mut body = Self {
            stream,
            state: ReadState::Data,
            early: None,
            len,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match body.stream.poll_data(&mut cx) {
            Poll::Ready(Ok(None)) => body.state = ReadState::Trailers,
            Poll::Ready(Ok(Some(bytes))) => body.early = Some(Ok(bytes)),
            Poll::Ready(Err(e)) => {
                body.state = ReadState::Done;
                body.early = Some(Err(e));
            }
            Poll::Pending => {}
        }
        if body.state == ReadState::Trailers {
            if let Poll::Ready(Ok(None)) = body.stream.poll_trailers(&mut cx) {
                body.state = ReadState::Done;
            }
        }
        body
    }
}

impl HttpBody for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(early) = self.early.take() {
            return Poll::Ready(Some(early.map(Frame::data)));
        }
        let this = &mut *self;
        this.state.poll_frame(&mut this.stream, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.state == ReadState::Done && self.early.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.state, self.len) {
            (ReadState::Done, _) => SizeHint::with_exact(0),
            (ReadState::Data, Some(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Why edge stopped reading a client's request body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than the route allows.
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// No bytes for the body idle timeout.
    #[error("no request body bytes for {after:?}")]
    Idle { after: Duration },
    /// Past the grace period, slower on average than the minimum rate.
    #[error("request body slower than {rate} bytes a second")]
    TooSlow { rate: u64 },
}

/// The limits a client's request body is read under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub idle: Duration,
    /// Bytes a second on average once `grace` has passed; 0 is off.
    pub min_rate: u64,
    pub grace: Duration,
}

/// A client's request body with its limits enforced as it is read: past the
/// size limit, or silent for the idle timeout, or too slow on average, it ends
/// with a [`BodyError`] (the upstream exchange then fails as the client's fault).
pub struct Limited {
    inner: Body,
    limits: BodyLimits,
    received: u64,
    started: Instant,
    last_data: Instant,
    /// Armed at a deadline no later than the real one and moved on lazily when it
    /// fires, so a chunk costs no timer reset.
    timer: Pin<Box<Sleep>>,
    failed: bool,
    /// Told the bytes received, for the access log (when it is on).
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Limited {
    /// Also counts the bytes received into `counter`.
    pub fn counted(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }

    pub fn new(inner: Body, limits: BodyLimits) -> Self {
        let now = Instant::now();
        let mut body = Self {
            inner,
            limits,
            received: 0,
            started: now,
            last_data: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
            failed: false,
            counter: None,
        };
        let first = body.deadline();
        body.timer.as_mut().reset(first);
        body
    }

    /// The earlier of the idle deadline and the rate deadline (Apache's MinRate:
    /// the grace, plus one second per `min_rate` bytes received).
    fn deadline(&self) -> Instant {
        let idle = self.last_data + self.limits.idle;
        match self.limits.min_rate {
            0 => idle,
            rate => {
                let earned = Duration::from_secs_f64(self.received as f64 / rate as f64);
                idle.min(self.started + self.limits.grace + earned)
            }
        }
    }

    fn violation(&self, now: Instant) -> Option<BodyError> {
        if now >= self.last_data + self.limits.idle {
            return Some(BodyError::Idle {
                after: self.limits.idle,
            });
        }
        (self.limits.min_rate > 0 && now >= self.deadline()).then_some(BodyError::TooSlow {
            rate: self.limits.min_rate,
        })
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// The client has nothing for us: pending, unless a deadline passed.
    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(e) = self.violation(Instant::now()) {
                return self.fail(e);
            }
            let next = self.deadline();
            self.timer.as_mut().reset(next);
        }
    }
}

impl HttpBody for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if let Some(c) = &this.counter {
                        c.store(this.received, std::sync::atomic::Ordering::Relaxed);
                    }
                    if this.received > this.limits.max_bytes {
                        return this.fail(BodyError::TooLarge {
                            limit: this.limits.max_bytes,
                        });
                    }
                    this.last_data = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => this.poll_deadline(cx),
            other => other,
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
    use http_body_util::BodyExt as _;

    fn limits(max_bytes: u64) -> BodyLimits {
        BodyLimits {
            max_bytes,
            idle: Duration::from_secs(10),
            min_rate: 0,
            grace: Duration::from_secs(20),
        }
    }

    #[tokio::test]
    async fn a_body_past_the_limit_ends_with_too_large() {
        let body = Body::full(Bytes::from(vec![0u8; 1001]));
        let mut limited = Limited::new(body, limits(1000));
        let err = limited
            .frame()
            .await
            .and_then(Result::err)
            .expect("an error frame");
        assert!(matches!(
            err.downcast_ref::<BodyError>(),
            Some(BodyError::TooLarge { limit: 1000 })
        ));
        assert!(limited.frame().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes() {
        let body = Body::full(Bytes::from(vec![0u8; 1000]));
        let got = Limited::new(body, limits(1000))
            .collect()
            .await
            .expect("within the limit")
            .to_bytes();
        assert_eq!(got.len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_deadline_grows_with_what_was_received() {
        let body = Limited::new(
            Body::Empty,
            BodyLimits {
                min_rate: 100,
                ..limits(1 << 20)
            },
        );
        // Nothing yet: the idle deadline (10 s) comes before the grace (20 s).
        assert_eq!(body.deadline() - body.started, Duration::from_secs(10));
        let mut body = body;
        body.limits.idle = Duration::from_secs(60);
        // With 500 bytes in, the rate deadline is the grace plus five seconds.
        body.received = 500;
        assert_eq!(body.deadline() - body.started, Duration::from_secs(25));
        assert!(body
            .violation(body.started + Duration::from_secs(24))
            .is_none());
        assert!(matches!(
            body.violation(body.started + Duration::from_secs(25)),
            Some(BodyError::TooSlow { rate: 100 })
        ));
    }
}
