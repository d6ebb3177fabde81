//! Tunnels: an HTTP/1.1 client connection the backend switched to another
//! protocol (a 101 the pipeline agreed to), or an HTTP/2 extended CONNECT
//! stream bridged to such a switch, joined byte for byte to the backend's
//! connection. An HTTP/1.1 tunnel runs on the client connection's own task, so
//! the connection keeps its slot and shows in the open-connection gauge; an
//! HTTP/2 one on a task of its own, tracked for drain like connections.
//!
//! An HTTP/3 one (RFC 9220) runs on its request stream's task, the stream's
//! DATA frames copied to and from the backend's connection.
//!
//! A tunnel ends when both sides have closed, when either fails, when no byte
//! moved either way for `upgrade.idle_timeout`, or shortly before the drain
//! grace runs out. Nothing here is reported to the backend's breaker: once
//! switched, a failure is the tunnel's, not a sign of a sick backend.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Shared;
use crate::pipeline::{Peer, Tunnel};

/// A 101 on its way to the client: the backend's side and the client's.
pub(crate) struct Switched {
    pub(crate) tunnel: Tunnel,
    pub(crate) client: OnUpgrade,
}

/// Copies bytes both ways until the tunnel ends, then closes both sides.
pub(crate) async fn run(shared: &Shared, switched: Switched, peer: Peer) {
    let Switched { tunnel, client } = switched;
    let metrics = &shared.metrics;
    let protocol = tunnel.protocol.as_str();
    let idle = tunnel.idle_timeout;
    let sides = async { tokio::try_join!(client, tunnel.upstream) };
    let (client, upstream) = match tokio::time::timeout(idle, sides).await {
        Ok(Ok(sides)) => sides,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.ip, protocol, error = %e, "upgrade not completed");
            return metrics.tunnel_closed(protocol, "error");
        }
        Err(_) => return metrics.tunnel_closed(protocol, "idle"),
    };
    let _open = metrics.tunnel_open(protocol);
    let moved = Arc::new(AtomicBool::new(false));
    let mut client = Counted {
        io: TokioIo::new(client),
        bytes: metrics.tunnel_bytes(protocol, "upstream"),
        moved: moved.clone(),
    };
    let mut backend = Counted {
        io: TokioIo::new(upstream),
        bytes: metrics.tunnel_bytes(protocol, "downstream"),
        moved: moved.clone(),
    };
    let reason = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => ended(copied, &peer, protocol),
        () = quiet_for(&moved, idle) => "idle",
        () = drained(shared) => "drain",
    };
    // A FIN (and TLS close_notify) each way.
    let closing = async { tokio::join!(client.shutdown(), backend.shutdown()) };
    close_within(closing, &peer, protocol).await;
    tracing::debug!(peer = %peer.ip, protocol, reason, "tunnel closed");
    metrics.tunnel_closed(protocol, reason);
}

/// The tunnel of an HTTP/3 extended CONNECT (RFC 9220) whose 200 was sent:
/// the stream's DATA frames to the backend's switched connection and back,
/// under the same idle, drain and metrics rules as [`run`]. The client's end
/// of stream is a FIN to the backend; the backend's close finishes the stream.
pub(crate) async fn run_h3(
    shared: &Shared,
    tunnel: Tunnel,
    mut send: super::quic::H3Send,
    mut recv: crate::body::H3RecvStream,
    peer: Peer,
) {
    let metrics = &shared.metrics;
    let protocol = tunnel.protocol.as_str();
    let idle = tunnel.idle_timeout;
    let upstream = match tokio::time::timeout(idle, tunnel.upstream).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer.ip, protocol, error = %e, "upgrade not completed");
            send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            return metrics.tunnel_closed(protocol, "error");
        }
        Err(_) => {
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return metrics.tunnel_closed(protocol, "idle");
        }
    };
    let _open = metrics.tunnel_open(protocol);
    let moved = Arc::new(AtomicBool::new(false));
    let backend = Counted {
        io: TokioIo::new(upstream),
        bytes: metrics.tunnel_bytes(protocol, "downstream"),
        moved: moved.clone(),
    };
    let (mut from_backend, mut to_backend) = tokio::io::split(backend);
    let sent_up = metrics.tunnel_bytes(protocol, "upstream");
    let reason = {
        let up = async {
            while let Some(mut data) = recv.recv_data().await? {
                sent_up.inc_by(data.remaining() as u64);
                moved.store(true, Ordering::Relaxed);
                while data.has_remaining() {
                    let n = to_backend.write(data.chunk()).await?;
                    data.advance(n);
                }
            }
            to_backend.shutdown().await?;
            Ok::<_, upstream::BoxError>(())
        };
        let down = async {
            let mut buf = bytes::BytesMut::new();
            loop {
                buf.reserve(H3_READ);
                if from_backend.read_buf(&mut buf).await? == 0 {
                    send.finish().await?;
                    return Ok::<_, upstream::BoxError>(());
                }
                send.send_data(buf.split().freeze()).await?;
            }
        };
        tokio::select! {
            copied = async { tokio::try_join!(up, down) } => ended(copied, &peer, protocol),
            () = quiet_for(&moved, idle) => "idle",
            () = drained(shared) => "drain",
        }
    };
    if reason != "closed" {
        // The stream is cut both ways; the backend gets its FIN.
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        recv.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
        close_within(to_backend.shutdown(), &peer, protocol).await;
    }
    tracing::debug!(peer = %peer.ip, protocol, reason, "tunnel closed");
    metrics.tunnel_closed(protocol, reason);
}

/// The reason label of a tunnel whose copying ended by itself.
fn ended<T, E: std::fmt::Display>(
    copied: Result<T, E>,
    peer: &Peer,
    protocol: &str,
) -> &'static str {
    match copied {
        Ok(_) => "closed",
        Err(e) => {
            tracing::debug!(peer = %peer.ip, protocol, error = %e, "tunnel failed");
            "error"
        }
    }
}

/// A tunnel's closing, bounded: a peer that stopped reading must not hold the task.
async fn close_within<F: std::future::Future>(closing: F, peer: &Peer, protocol: &str) {
    if tokio::time::timeout(Duration::from_secs(1), closing)
        .await
        .is_err()
    {
        tracing::debug!(peer = %peer.ip, protocol, "tunnel close timed out");
    }
}

/// How much one read from the backend may put in one HTTP/3 DATA frame.
const H3_READ: usize = 16 * 1024;

/// Returns once no byte moved either way for `idle` (checked on a tick, so a
/// busy tunnel costs one atomic store per read and no timer resets).
async fn quiet_for(moved: &AtomicBool, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        if moved.swap(false, Ordering::Relaxed) {
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        }
    }
}

/// Returns once draining started and most of the drain grace has passed, so
/// tunnels close cleanly before the process stops waiting for connections.
async fn drained(shared: &Shared) {
    shared.draining.cancelled().await;
    tokio::time::sleep(shared.config.drain.grace.mul_f64(0.9)).await;
}

/// One side of a tunnel: counts the bytes read from it and notes that some moved.
struct Counted<T> {
    io: T,
    bytes: prometheus::IntCounter,
    moved: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes.inc_by(n as u64);
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
