//! The overload guard (after Envoy's overload manager): when the edge's resident
//! memory passes `limits.memory_high`, the TCP listeners stop accepting (new
//! clients wait in the kernel's backlog) and idle connections are shed, oldest
//! first, until memory falls back below the mark.
//!
//! RSS is read from `/proc/self/status` on a timer, never per request. Idle
//! connections register only while the guard is configured; with it off
//! (the default) parking costs nothing extra.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// How often RSS is read while the guard is on.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Shedding stops and accepting resumes below this share of `memory_high`
/// (in percent), so the guard does not flap around the mark.
const CLEAR_PERCENT: u64 = 95;

pub struct Overload {
    high: Option<u64>,
    active: watch::Sender<bool>,
    /// Idle connections by when they became idle (a sequence number, so the
    /// smallest key is the oldest), each with the signal that sheds it.
    idle: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
}

/// An idle connection's place in the shedding order; leaves it on drop.
pub(crate) struct IdleTicket<'a> {
    owner: &'a Overload,
    key: u64,
    shed: Arc<Notify>,
}

impl Overload {
    /// A guard for `memory_high` bytes of RSS; `None` is off.
    pub fn new(memory_high: Option<u64>) -> Self {
        Self {
            high: memory_high,
            active: watch::Sender::new(false),
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Resolves at once unless the edge is overloaded; then when that clears.
    pub(crate) async fn accepting(&self) {
        let mut rx = self.active.subscribe();
        // `Err` only if the sender is gone, which it never is while `self` lives.
        let _ = rx.wait_for(|on| !on).await;
    }

    /// Whether the edge is overloaded now (listeners refuse new connections).
    pub(crate) fn active(&self) -> bool {
        *self.active.borrow()
    }

    /// Registers an idle connection; `None` when the guard is off.
    pub(crate) fn idle(&self) -> Option<IdleTicket<'_>> {
        self.high?;
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let shed = Arc::new(Notify::new());
        self.lock().insert(key, shed.clone());
        Some(IdleTicket {
            owner: self,
            key,
            shed,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sheds up to a quarter of the idle connections (at least one), oldest first;
    /// returns how many.
    fn shed_oldest(&self) -> u64 {
        let mut idle = self.lock();
        let n = (idle.len() / 4).max(1);
        let mut shed = 0;
        for _ in 0..n {
            let Some((_, signal)) = idle.pop_first() else {
                break;
            };
            signal.notify_one();
            shed += 1;
        }
        shed
    }

    /// Watches RSS until `stop` fires; does nothing when the guard is off.
    pub async fn run(&self, metrics: &Metrics, stop: tokio_util::sync::CancellationToken) {
        let Some(high) = self.high else {
            return;
        };
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shed_this_time = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(rss) = rss_bytes() else {
                continue;
            };
            metrics.set_rss(rss);
            let active = *self.active.borrow();
            if !active && rss >= high {
                self.active.send_replace(true);
                metrics.set_overload(true);
                shed_this_time = 0;
                tracing::warn!(
                    "overload: RSS {rss} bytes is past limits.memory_high {high}: \
                     not accepting connections, shedding idle ones oldest first"
                );
            } else if active && rss < high / 100 * CLEAR_PERCENT {
                self.active.send_replace(false);
                metrics.set_overload(false);
                tracing::warn!(
                    "overload cleared: RSS {rss} bytes; accepting again \
                     ({shed_this_time} idle connections were shed)"
                );
                continue;
            }
            if *self.active.borrow() {
                let shed = self.shed_oldest();
                shed_this_time += shed;
                metrics.overload_shed(shed);
            }
        }
    }
}

impl IdleTicket<'_> {
    /// Resolves when the guard sheds this connection.
    pub(crate) async fn shed(&self) {
        self.shed.notified().await;
    }
}

impl Drop for IdleTicket<'_> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
    }
}

/// The process's resident set size, from `/proc/self/status` (`VmRSS`, in kB).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_bytes() {
        let status = "Name:\tedge\nVmHWM:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tedge\n"), None);
    }

    #[test]
    fn sheds_the_oldest_idle_connections_first() {
        let guard = Overload::new(Some(1 << 30));
        let tickets: Vec<_> = (0..8).map(|_| guard.idle().expect("guard on")).collect();
        assert_eq!(guard.shed_oldest(), 2);
        // The two oldest were told; a permit waits for them, none for the others.
        for (i, t) in tickets.iter().enumerate() {
            let told = futures_util::FutureExt::now_or_never(t.shed()).is_some();
            assert_eq!(told, i < 2, "ticket {i}");
        }
        drop(tickets);
        assert_eq!(guard.lock().len(), 0);
    }

    #[test]
    fn off_by_default_registers_nothing() {
        let guard = Overload::new(None);
        assert!(guard.idle().is_none());
    }
}
