//! Listeners: where protocol code ends. Each turns what it accepts into
//! `http::Request<Body>`, calls the pipeline, and writes the response back.
//!
//! Accept loops spawn a task per connection before awaiting anything of it
//! (handshakes happen in the task), and never hold more client connections than
//! the cap, in all or from one source (`slots`); on EMFILE they back off instead
//! of spinning, and log it at most once a second. Past `limits.memory_high` they
//! stop accepting while idle connections are shed (`overload`).

pub mod admin;
mod early;
mod h1;
mod h2;
mod h2_frames;
pub mod idle;
pub mod overload;
mod proxy_protocol;
pub mod quic;
pub mod redirect;
pub mod slots;
pub mod tcp;
mod tunnel;
pub mod upgrades;

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Proxy;

/// What every listener task shares: the current pipeline (swapped whole on reload),
/// metrics, the config it started with, and the shutdown signal.
pub struct Shared {
    pub proxy: ArcSwap<Proxy>,
    pub metrics: Metrics,
    pub config: Config,
    /// The config last loaded (at start, or by the last reload that took),
    /// with the keys that wait for a restart, for `GET /config`.
    pub loaded: ArcSwap<Loaded>,
    /// The HTTP cache, kept across reloads; `None` when `[cache]` is off.
    pub cache: Option<std::sync::Arc<crate::cache::Cache>>,
    /// Cancelled when the edge starts draining.
    pub draining: CancellationToken,
    /// Cancelled when SIGTERM came: `/healthz` answers 503 from then on,
    /// before `draining` (after `drain.delay`) stops the listeners.
    pub withdrawn: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The certificates, for the SNI each TLS connection asked for (421 checks).
    pub certs: Option<&'static crate::tls::CertResolver>,
    /// The session ticket keys both listeners encrypt with (`tls.ticket_keys`
    /// set); a reload of a key file swaps them.
    pub tickets: Option<std::sync::Arc<crate::tls::Ticketer>>,
    /// The TCP listeners' connection caps, in all and per source.
    pub slots: slots::Slots,
    /// Pauses accepting and sheds idle connections past `limits.memory_high`.
    pub overload: overload::Overload,
    /// Clients advertised HTTP/3 over TCP, and those that came back over QUIC.
    pub upgrades: upgrades::Upgrades,
    /// `POST /reload`: each request is answered with the reload's outcome.
    pub reload_requests: tokio::sync::mpsc::Sender<ReloadRequest>,
    /// The bound listeners (kind, address), for `/status`.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub started: std::time::Instant,
}

/// A config as loaded, and which of its settings the running edge does not
/// use yet (listener addresses and the like take effect on restart).
pub struct Loaded {
    pub config: Config,
    pub restart_pending: Vec<&'static str>,
}

/// A reload asked for over the admin API, and where its outcome goes.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

pub use crate::start::BindError;

/// Binds TCP and UDP on the same port. With port 0 the kernel picks the TCP port
/// and UDP takes the same number; if that UDP port is taken, another pair is tried.
pub fn bind_tcp_udp(addr: SocketAddr) -> Result<(StdTcpListener, UdpSocket), BindError> {
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let tcp = bind_tcp(addr)?;
        let local = tcp.local_addr().map_err(|source| BindError {
            addr,
            transport: "tcp",
            source,
        })?;
        match UdpSocket::bind(local) {
            Ok(udp) => {
                size_udp_buffers(&udp);
                return Ok((tcp, udp));
            }
            Err(source) => {
                last = Some(BindError {
                    addr: local,
                    transport: "udp",
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| BindError {
        addr,
        transport: "udp",
        source: std::io::Error::other("no port found"),
    }))
}

/// The UDP socket buffers QUIC asks for: a burst of handshakes or a fast
/// download overflows the kernel's default 208 KiB and datagrams are dropped.
const UDP_BUFFER: usize = 7_500_000;

/// Asks for [`UDP_BUFFER`] both ways; the kernel caps it at
/// `net.core.{r,w}mem_max`, and edge says so when it did.
fn size_udp_buffers(udp: &UdpSocket) {
    let sock = socket2::SockRef::from(udp);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    // Linux reports twice what it grants (the bookkeeping overhead).
    let recv = sock.recv_buffer_size().unwrap_or(0) / 2;
    let send = sock.send_buffer_size().unwrap_or(0) / 2;
    if recv < UDP_BUFFER || send < UDP_BUFFER {
        tracing::info!(
            "QUIC socket buffers {recv} bytes in, {send} out (asked {UDP_BUFFER}): \
             raise net.core.rmem_max and wmem_max (ops/sysctl.d/60-edge.conf)"
        );
    }
}

/// A non-blocking TCP listener with SO_REUSEADDR and a deep backlog.
pub fn bind_tcp(addr: SocketAddr) -> Result<StdTcpListener, BindError> {
    let err = |source| BindError {
        addr,
        transport: "tcp",
        source,
    };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// Sleep after an accept error: long for resource exhaustion (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), where retrying at once only spins; none for per-connection errors.
/// The pool's sink for a request's interim responses (`upstream::Interim`):
/// what `pipeline::early_hint` passes goes to the listener's queue `tx`
/// (hyper's, on every protocol), counted in `passed` when taken.
fn hint_sink(
    tx: hyper::ext::InformationalSender,
    passed: prometheus::IntCounter,
) -> upstream::Interim {
    upstream::Interim::new(move |res| {
        if let Some(hint) = crate::pipeline::early_hint(res) {
            if tx.send(hint).is_ok() {
                passed.inc();
            }
        }
    })
}

pub(crate) fn accept_backoff(e: &std::io::Error) -> Option<Duration> {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    match e.raw_os_error() {
        Some(ENOMEM | ENFILE | EMFILE | ENOBUFS) => Some(Duration::from_millis(100)),
        _ => None,
    }
}
