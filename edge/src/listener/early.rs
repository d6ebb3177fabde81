//! TLS 1.3 early data (0-RTT) on the TCP listener (`tls.early_data`).
//!
//! tokio-rustls completes the handshake before `accept` returns; what the
//! client sent in early data waits in rustls's early-data buffer (at most
//! `tls::TCP_EARLY_DATA` bytes), apart from the stream. `take` moves it out,
//! [`Prefixed`] puts it back in front of the stream, and [`EarlyRequests`]
//! says which requests it held: h1 and h2 both hand requests to the service
//! in the order their heads arrived, so the first `n` service calls are the
//! `n` requests whose head began in early data. Where the count cannot be
//! told exactly (a chunked body in early data), every request of the
//! connection counts as early: a wrong guess costs a 425 the client retries,
//! never an unsafe request forwarded from early data.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h1::Parkable;
use crate::metrics::Proto;

/// The early data of a finished handshake, taken out of rustls (empty when
/// the client sent none or it was not accepted).
pub(super) fn take(conn: &mut rustls::ServerConnection) -> Bytes {
    let Some(mut early) = conn.early_data() else {
        return Bytes::new();
    };
    let mut out = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut early, &mut out) {
        tracing::debug!(error = %e, "early data not read");
    }
    Bytes::from(out)
}

/// How many of a connection's requests (in the order the service sees them)
/// arrived in early data. Cloned into each burst's service; `None` for a
/// connection that sent none.
#[derive(Clone, Default)]
pub(crate) struct EarlyRequests(Option<Arc<AtomicUsize>>);

impl EarlyRequests {
    /// Counts the requests whose head begins in `early`, read as `proto`.
    pub(super) fn of(early: &[u8], proto: Proto) -> Self {
        let n = match proto {
            Proto::H2 => h2_requests(early),
            _ => h1_requests(early),
        };
        Self((n > 0).then(|| Arc::new(AtomicUsize::new(n))))
    }

    /// Whether the request the service is called for now arrived in early
    /// data; call once per request, in the order the service is called.
    pub(super) fn next(&self) -> bool {
        self.0.as_ref().is_some_and(|n| {
            n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
        })
    }
}

/// HTTP/1.1 requests whose head begins in `b`: heads, and bodies skipped by
/// Content-Length. A chunked body (or an unreadable length) gives up: all.
fn h1_requests(mut b: &[u8]) -> usize {
    let mut n = 0;
    loop {
        // Empty lines before a request are ignored (RFC 9112 2.2).
        while let Some(rest) = b.strip_prefix(b"\r\n").or_else(|| b.strip_prefix(b"\n")) {
            b = rest;
        }
        if b.is_empty() {
            return n;
        }
        n += 1;
        let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
            return n;
        };
        let head = &b[..end];
        let mut length = 0usize;
        for line in head.split(|c| *c == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|c| *c == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return usize::MAX;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    Some(l) => length = l,
                    None => return usize::MAX,
                }
            }
        }
        // A body that reaches past the early data: no other head is in it.
        match (end + 4).checked_add(length).and_then(|t| b.get(t..)) {
            Some(rest) => b = rest,
            None => return n,
        }
    }
}

/// HTTP/2 streams whose HEADERS frame begins in `b` (after the preface). A
/// frame header cut off by the end of early data may be one: counted.
fn h2_requests(b: &[u8]) -> usize {
    const PREFACE: usize = 24;
    const HEADERS: u8 = 0x1;
    let Some(mut b) = b.get(PREFACE..) else {
        return 0;
    };
    let (mut n, mut last) = (0usize, 0u32);
    while !b.is_empty() {
        let Some(head) = b.get(..9) else {
            return n + 1;
        };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == HEADERS && stream > last {
            n += 1;
            last = stream;
        }
        match b.get(9 + len..) {
            Some(rest) => b = rest,
            None => return n,
        }
    }
    n
}

/// A client stream with bytes to return before its own: the early data.
pub(crate) struct Prefixed<I> {
    pub(super) io: I,
    pub(super) ahead: Bytes,
}

impl<I: Parkable> Parkable for Prefixed<I> {
    fn tcp(&self) -> &TcpStream {
        self.io.tcp()
    }

    fn has_buffered(&self) -> bool {
        !self.ahead.is_empty() || self.io.has_buffered()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.ahead.len().min(buf.remaining());
        buf.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        if this.ahead.is_empty() {
            // An emptied Bytes still holds its buffer: not for the connection's life.
            this.ahead = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h1_counts_heads_and_skips_bodies() {
        assert_eq!(h1_requests(b""), 0);
        assert_eq!(h1_requests(b"\r\n"), 0);
        assert_eq!(h1_requests(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 1);
        assert_eq!(h1_requests(b"GET / HTTP/1.1\r\nHost: a\r\n"), 1);
        let two = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET / HTTP/1.1\r\n\r\n";
        assert_eq!(h1_requests(two), 2);
        // A body that reaches past the early data: the next head is not in it.
        assert_eq!(
            h1_requests(b"POST / HTTP/1.1\r\ncontent-length: 9\r\n\r\nabcd"),
            1
        );
        // "GET" inside a body is not a request.
        assert_eq!(
            h1_requests(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nGET"),
            1
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(h1_requests(chunked), usize::MAX);
        assert_eq!(
            h1_requests(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            usize::MAX
        );
    }

    #[test]
    fn h2_counts_new_streams_headers() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let frame = |ty: u8, stream: u32, len: usize| {
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, 0];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend(std::iter::repeat_n(0u8, len));
            f
        };
        assert_eq!(h2_requests(&preface[..10]), 0);
        let mut b = preface.to_vec();
        b.extend(frame(4, 0, 6)); // SETTINGS
        assert_eq!(h2_requests(&b), 0);
        b.extend(frame(1, 1, 20)); // HEADERS, stream 1
        b.extend(frame(0, 1, 5)); // DATA
        b.extend(frame(1, 1, 3)); // trailers: not a new stream
        b.extend(frame(1, 3, 20)); // HEADERS, stream 3
        assert_eq!(h2_requests(&b), 2);
        // A cut frame header might be a third HEADERS.
        b.extend_from_slice(&[0, 0]);
        assert_eq!(h2_requests(&b), 3);
    }
}
