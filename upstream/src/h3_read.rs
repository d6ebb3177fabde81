//! Reading an HTTP/3 message body off a request stream, one `http_body` frame
//! at a time: DATA frames, then the trailers. The listener reads request
//! bodies so (server streams), the h3 upstream reads responses so (client
//! streams); one state machine for both.

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Frame;

use crate::BoxError;

/// The receiving half of an HTTP/3 request stream.
pub trait RecvHalf {
    /// The next DATA frame's bytes; `None` at the end of the data.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>>;
    /// The trailers, once the data has ended; `None` when there are none.
    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>>;
}

fn copy_out<B: Buf>(mut buf: B) -> Bytes {
    buf.copy_to_bytes(buf.remaining())
}

impl RecvHalf for h3::server::RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
        self.poll_recv_data(cx)
            .map(|r| r.map(|d| d.map(copy_out)).map_err(Into::into))
    }

    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>> {
        self.poll_recv_trailers(cx).map_err(Into::into)
    }
}

impl RecvHalf for h3::client::RequestStream<h3_quinn::RecvStream, Bytes> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BoxError>> {
        self.poll_recv_data(cx)
            .map(|r| r.map(|d| d.map(copy_out)).map_err(Into::into))
    }

    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, BoxError>> {
        self.poll_recv_trailers(cx).map_err(Into::into)
    }
}

/// Where a body being read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadState {
    Data,
    Trailers,
    Done,
}

impl ReadState {
    /// The next frame from `rx`: each DATA frame, then the trailers if any,
    /// then the end; after an error, the end.
    pub fn poll_frame<R: RecvHalf>(
        &mut self,
        rx: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match *self {
                ReadState::Data => match rx.poll_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(bytes))) => {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Poll::Ready(Ok(None)) => *self = ReadState::Trailers,
                    Poll::Ready(Err(e)) => {
                        *self = ReadState::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                ReadState::Trailers => {
                    let polled = rx.poll_trailers(cx);
                    if polled.is_ready() {
                        *self = ReadState::Done;
                    }
                    return match polled {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Poll::Ready(Ok(None)) => Poll::Ready(None),
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    };
                }
                ReadState::Done => return Poll::Ready(None),
            }
        }
    }
}
