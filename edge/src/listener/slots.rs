//! Connection slots: how many client connections the TCP listeners hold, in all
//! and per source, and how accept failures are reported.
//!
//! - The global cap never takes the whole open-file limit: what was open at start
//!   (listeners, runtime, logs) and a reserve for upstream connects stay free, so
//!   a full house of clients cannot make the edge's own connects fail with EMFILE.
//! - One source (an IPv4 address, or an IPv6 /64, which one host usually has
//!   whole) holds at most `client.max_connections_per_ip`; its extra sockets are
//!   closed as soon as they are accepted, so idle half-open sockets from a few
//!   hosts cannot lock everyone else out of the global cap.
//! - An accept that fails for lack of resources is counted every time and
//!   logged at most once a second, with how many failures the line stands for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::metrics::Metrics;

/// File descriptors kept out of the client cap for upstream connections, Redis,
/// DNS and files: a quarter of the open-file limit, at least this many.
const MIN_UPSTREAM_RESERVE: u64 = 32;

/// What the TCP listeners share: the global cap and the per-source counts.
pub struct Slots {
    cap: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    accept_log: AcceptLog,
}

/// One accepted connection's claim on both limits; released on drop.
pub struct Slot {
    _global: OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl Slots {
    pub fn new(config: &Config) -> Self {
        Self {
            cap: Arc::new(Semaphore::new(connection_cap(config))),
            per_ip: Arc::new(PerIp::new(config.client.max_connections_per_ip)),
            accept_log: AcceptLog::default(),
        }
    }

    /// Waits for room under the global cap (`None` once the cap is closed).
    pub(crate) async fn global(&self) -> Option<OwnedSemaphorePermit> {
        self.cap.clone().acquire_owned().await.ok()
    }

    /// The whole slot for a connection from `ip`, or `None` when that source is at
    /// its limit (the caller closes the socket; the refusal is counted).
    pub(crate) fn admit(
        &self,
        global: OwnedSemaphorePermit,
        ip: IpAddr,
        metrics: &Metrics,
    ) -> Option<Slot> {
        let Some(source) = self.per_ip.take(ip) else {
            metrics.connection_refused("per_ip");
            return None;
        };
        Some(Slot {
            _global: global,
            _source: source,
        })
    }

    /// Counts a failed accept and logs it, at most once a second.
    pub(crate) fn accept_failed(&self, e: &std::io::Error, metrics: &Metrics, listener: &str) {
        let reason = accept_error_reason(e);
        metrics.accept_error(reason);
        if let Some(suppressed) = self.accept_log.should_log(Instant::now()) {
            tracing::warn!(
                listener,
                reason,
                error = %e,
                "accept failed ({suppressed} more since the last such line)"
            );
        }
    }
}

/// The label for an accept error: the resource that ran out, or `other`.
pub(crate) fn accept_error_reason(e: &std::io::Error) -> &'static str {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    match e.raw_os_error() {
        Some(EMFILE) => "emfile",
        Some(ENFILE) => "enfile",
        Some(ENOBUFS) => "enobufs",
        Some(ENOMEM) => "enomem",
        _ => "other",
    }
}

/// Rate limit for the accept-failure log line: one a second.
#[derive(Default)]
pub(crate) struct AcceptLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl AcceptLog {
    const EVERY: Duration = Duration::from_secs(1);

    /// `Some(n)` when a line is due (`n` failures went unlogged since the last).
    fn should_log(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < Self::EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Open connections per source. One short lock per accepted connection and one
/// per close; nothing per request.
pub(crate) struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's count against its source; decremented on drop.
pub(crate) struct SourceSlot {
    owner: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: self.clone(),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What one source is counted as: the IPv4 address (also when IPv4-mapped), or
/// the /64 of an IPv6 address.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Raises the soft open-file limit to the hard one (systemd's `LimitNOFILE=`
/// or `ulimit -Hn`): the soft limit is often 1024 while the hard one allows a
/// million, and every client connection holds a descriptor.
pub fn raise_nofile_limit() {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(soft), Ok(now)) if now > soft => {
            tracing::info!("open-file limit raised from {soft} to {now} (the hard limit)");
        }
        (_, Err(e)) => tracing::warn!("could not raise the open-file limit: {e}"),
        _ => {}
    }
}

/// Open client connections at most: the configured cap (default 70% of the
/// open-file limit), but never more than the limit leaves after what is open now
/// and the upstream reserve.
pub fn connection_cap(config: &Config) -> usize {
    let nofile = rlimit_nofile().unwrap_or(1024);
    let open = open_fds().unwrap_or(64);
    let room = usize::try_from(fd_room(nofile, open)).unwrap_or(usize::MAX);
    let wanted = config
        .client
        .max_connections
        .unwrap_or_else(|| usize::try_from(nofile / 10 * 7).unwrap_or(usize::MAX));
    if wanted > room {
        tracing::warn!(
            "client connections capped at {room} (not {wanted}): the open-file limit {nofile} \
             keeps {} for upstream connections and {open} are open already; raise LimitNOFILE",
            upstream_reserve(nofile)
        );
    }
    let cap = wanted.min(room).max(1);
    tracing::info!("client connections capped at {cap} (open-file limit {nofile})");
    cap
}

/// Descriptors client connections may take: the limit less those open and the reserve.
fn fd_room(nofile: u64, open: u64) -> u64 {
    nofile
        .saturating_sub(open)
        .saturating_sub(upstream_reserve(nofile))
}

fn upstream_reserve(nofile: u64) -> u64 {
    (nofile / 4).max(MIN_UPSTREAM_RESERVE)
}

fn rlimit_nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn open_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    u64::try_from(dir.count()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
    }

    #[test]
    fn a_source_holds_at_most_its_limit_and_gets_slots_back() {
        let per_ip = Arc::new(PerIp::new(2));
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let a = per_ip.take(ip).expect("first");
        let _b = per_ip.take(ip).expect("second");
        assert!(per_ip.take(ip).is_none());
        assert!(per_ip.take(other).is_some());
        drop(a);
        assert!(per_ip.take(ip).is_some());
    }

    #[test]
    fn the_cap_leaves_open_files_for_upstreams() {
        assert_eq!(fd_room(20_000, 20), 20_000 - 20 - 5_000);
        assert_eq!(fd_room(64, 20), 12);
        assert_eq!(fd_room(40, 20), 0);
    }

    #[test]
    fn accept_failures_are_logged_once_a_second() {
        let log = AcceptLog::default();
        let t0 = Instant::now();
        assert_eq!(log.should_log(t0), Some(0));
        for i in 1..10 {
            assert_eq!(log.should_log(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(log.should_log(t0 + Duration::from_millis(1000)), Some(9));
    }
}
