//! The one body type after the listeners: what a client sent (h1/h2 from hyper,
//! h3 read straight off the QUIC stream), what a backend sent, or a small page the
//! edge wrote itself. Every variant streams; none buffers a whole body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
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
    /// A response body from a backend, copied into the cache as it streams.
    Tee(Box<crate::cache::Tee>),
}

impl Body {
    pub fn full(bytes: Bytes) -> Self {
        Body::Full(Some(bytes))
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
            Body::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Tee(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::H3(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Tee(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::H3(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Tee(b) => b.size_hint(),
        }
    }
}

/// An HTTP/3 request body read from the QUIC stream as the consumer polls it, so
/// QUIC flow control is the back-pressure.
pub struct H3Body {
    stream: H3RecvStream,
    state: H3State,
    /// What was read while checking for an early end, handed out first.
    early: Option<Result<Bytes, BoxError>>,
    /// From content-length when the client sent one.
    len: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum H3State {
    Data,
    Trailers,
    Done,
}

impl H3Body {
    /// Wraps the stream. A body the client already finished (the FIN came with the
    /// headers, as for most GETs) is seen as ended now, so it travels upstream as an
    /// end-of-stream HEADERS frame and may be retried.
    pub fn new(stream: H3RecvStream, len: Option<u64>) -> Self {
        let mut body = Self {
            stream,
            state: H3State::Data,
            early: None,
            len,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match body.stream.poll_recv_data(&mut cx) {
            Poll::Ready(Ok(None)) => body.state = H3State::Trailers,
            Poll::Ready(Ok(Some(mut buf))) => {
                body.early = Some(Ok(buf.copy_to_bytes(buf.remaining())))
            }
            Poll::Ready(Err(e)) => {
                body.state = H3State::Done;
                body.early = Some(Err(e.into()));
            }
            Poll::Pending => {}
        }
        if body.state == H3State::Trailers {
            if let Poll::Ready(Ok(None)) = body.stream.poll_recv_trailers(&mut cx) {
                body.state = H3State::Done;
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
        loop {
            match self.state {
                H3State::Data => match self.stream.poll_recv_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(mut buf))) => {
                        let bytes = buf.copy_to_bytes(buf.remaining());
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Poll::Ready(Ok(None)) => self.state = H3State::Trailers,
                    Poll::Ready(Err(e)) => {
                        self.state = H3State::Done;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                H3State::Trailers => {
                    let polled = self.stream.poll_recv_trailers(cx);
                    if polled.is_ready() {
                        self.state = H3State::Done;
                    }
                    return match polled {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Poll::Ready(Ok(None)) => Poll::Ready(None),
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
                H3State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == H3State::Done && self.early.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.state, self.len) {
            (H3State::Done, _) => SizeHint::with_exact(0),
            (H3State::Data, Some(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
