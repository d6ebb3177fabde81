//! Hedging: when a replayable request's try has not produced a response head
//! after a delay, a second try goes to another endpoint; the first head wins and
//! the other try is dropped (its stream reset or connection closed, its lease and
//! any breaker probe released). Each hedge is a retry: it needs an endpoint not
//! tried yet, a try left under `max_retries`, and a token from the retry budget.
//!
//! The delay is fixed, or a percentile of the pool's own time to response head
//! over a sliding window ([`LatencyWindow`], pure and clocked by the caller),
//! never below a floor and a fixed start value until the window holds enough
//! answers. Only body-less idempotent requests are hedged: anything else could
//! not be sent twice.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::{Request, Response};

use super::attempt::{Attempt, Tried};
use super::{Members, Pool, ReqBody};
use crate::backend::{Failed, Replay};
use crate::body::UpstreamBody;
use crate::breaker::Admit;
use crate::clock::now_ms;

/// When a hedge is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay after the try started.
    Fixed(Duration),
    /// This percentile (0 < p < 100) of the pool's recent time to response head.
    Percentile(f64),
}

/// A pool's hedging settings.
#[derive(Clone, Debug, PartialEq)]
pub struct HedgeConfig {
    pub after: HedgeAfter,
    /// Hedges per request at most (each one `after` later than the previous).
    pub max: u32,
    /// A percentile delay is never shorter than this.
    pub floor: Duration,
    /// The delay while the window holds fewer than `min_samples` answers.
    pub initial: Duration,
    /// How far back the percentile looks.
    pub window: Duration,
    pub min_samples: u32,
}

impl HedgeConfig {
    /// One hedge after `after`; a percentile looks back 10 s, waits at least
    /// 10 ms, and 100 ms until it has seen 50 answers.
    pub fn new(after: HedgeAfter) -> Self {
        Self {
            after,
            max: 1,
            floor: Duration::from_millis(10),
            initial: Duration::from_millis(100),
            window: Duration::from_secs(10),
            min_samples: 50,
        }
    }
}

/// Latency buckets: bucket 0 holds up to 100 µs, bucket k up to 100 µs · 2^(k/4)
/// (each about 19% wider than the last), the last one everything above ~3 min.
const BUCKETS: usize = 84;
const SLOTS: usize = 10;

fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros() as f64;
    if us <= 100.0 {
        return 0;
    }
    let k = (4.0 * (us / 100.0).log2()).ceil() as usize;
    k.min(BUCKETS - 1)
}

fn upper_bound(k: usize) -> Duration {
    Duration::from_secs_f64(100e-6 * 2f64.powf(k as f64 / 4.0))
}

#[derive(Clone)]
struct Slot {
    /// Which slot-length period of time it counts (`now / slot_ms`).
    epoch: u64,
    counts: [u32; BUCKETS],
    total: u32,
}

/// Counts of latencies over a sliding window of `SLOTS` slots; `now` comes from
/// the caller. A percentile is the upper bound of its bucket (at most ~19% high).
pub struct LatencyWindow {
    slot_ms: u64,
    slots: Vec<Slot>,
}

impl LatencyWindow {
    pub fn new(window: Duration) -> Self {
        let slot_ms = (window.as_millis() as u64 / SLOTS as u64).max(1);
        let empty = Slot {
            epoch: u64::MAX,
            counts: [0; BUCKETS],
            total: 0,
        };
        Self {
            slot_ms,
            slots: vec![empty; SLOTS],
        }
    }

    pub fn record(&mut self, latency: Duration, now_ms: u64) {
        let epoch = now_ms / self.slot_ms;
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.counts = [0; BUCKETS];
            slot.total = 0;
        }
        slot.counts[bucket(latency)] += 1;
        slot.total += 1;
    }

    /// The `q` quantile (0 < q < 1) of the latencies of the last window, or None
    /// with fewer than `min_samples` of them.
    pub fn quantile(&self, q: f64, now_ms: u64, min_samples: u32) -> Option<Duration> {
        let epoch = now_ms / self.slot_ms;
        let live = |s: &&Slot| s.epoch <= epoch && epoch - s.epoch < SLOTS as u64;
        let total: u64 = self
            .slots
            .iter()
            .filter(live)
            .map(|s| u64::from(s.total))
            .sum();
        if total == 0 || total < u64::from(min_samples) {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for k in 0..BUCKETS {
            seen += self
                .slots
                .iter()
                .filter(live)
                .map(|s| u64::from(s.counts[k]))
                .sum::<u64>();
            if seen >= rank {
                return Some(upper_bound(k));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

/// A pool's hedging: its settings, the latencies it learns from, its counters.
pub(super) struct Hedging {
    config: HedgeConfig,
    /// The window and the last delay read from it (`at_ms`, delay): a percentile
    /// is recomputed at most every 100 ms.
    window: Mutex<(LatencyWindow, Option<(u64, Duration)>)>,
    won: AtomicU64,
    lost: AtomicU64,
}

/// A try in flight: which one (0 the first, n the n-th hedge), its endpoint and
/// bookkeeping, and the exchange.
type Racing<'a, B> = Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    u32,
                    usize,
                    Attempt<'a, B>,
                    Result<Response<UpstreamBody>, Failed<B>>,
                ),
            > + Send
            + 'a,
    >,
>;

/// One try's outcome: its endpoint, its bookkeeping and what the exchange gave.
pub(super) type Outcome<'a, B> = (
    usize,
    Attempt<'a, B>,
    Result<Response<UpstreamBody>, Failed<B>>,
);

impl Hedging {
    pub(super) fn new(config: HedgeConfig) -> Self {
        Self {
            window: Mutex::new((LatencyWindow::new(config.window), None)),
            config,
            won: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Learns one try's time to its response head (percentile delays only).
    pub(super) fn observe(&self, latency: Duration, now_ms: u64) {
        if let HedgeAfter::Percentile(_) = self.config.after {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            w.0.record(latency, now_ms);
        }
    }

    /// How long a try may go without a response head before it is hedged.
    pub(super) fn delay(&self, now_ms: u64) -> Duration {
        let p = match self.config.after {
            HedgeAfter::Fixed(d) => return d,
            HedgeAfter::Percentile(p) => p,
        };
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, d)) = w.1 {
            if now_ms.saturating_sub(at) < 100 {
                return d;
            }
        }
        let c = &self.config;
        let d =
            w.0.quantile(p / 100.0, now_ms, c.min_samples)
                .map_or(c.initial, |q| q.max(c.floor));
        w.1 = Some((now_ms, d));
        d
    }

    /// Hedges sent that answered first, and hedges sent that did not.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.won.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        )
    }

    /// Runs the first try (`first`: endpoint, bookkeeping, `fresh` as
    /// `send_tries` chose, the request) and, each `delay` it goes without an
    /// answer, a hedge on an endpoint
    /// `choose` gives that was not tried yet, while the retry rules allow. The
    /// first response head wins; a try that fails while another still runs is
    /// recorded and the others awaited; when all fail, the last failure is
    /// returned. Dropping the rest cancels them.
    pub(super) async fn race<'a, B: ReqBody>(
        &self,
        pool: &'a Pool<B>,
        members: &'a Members<B>,
        tried: &mut Tried,
        first: (usize, Attempt<'a, B>, bool, Request<B>),
        replay: &'a Replay,
        choose: impl Fn(&Tried) -> Option<(usize, Admit)>,
    ) -> Outcome<'a, B> {
        let delay = self.delay(now_ms());
        let (i, attempt, fresh, req) = first;
        let mut running = FuturesUnordered::new();
        running.push(start(pool, members, 0, (i, attempt), req, fresh, replay));
        let mut launched = 0;
        // Cleared when a hedge may not be sent: none later either.
        let mut more = true;
        let mut next_at = tokio::time::Instant::now() + delay;
        loop {
            let hedge_left = more && launched < self.config.max;
            let timer = async {
                match hedge_left {
                    true => tokio::time::sleep_until(next_at).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((n, i, mut attempt, result)) = running.next() => match result {
                    Err(failed) if !running.is_empty() => attempt.failed(&failed),
                    result => {
                        let won = u64::from(n > 0 && result.is_ok());
                        self.won.fetch_add(won, Ordering::Relaxed);
                        self.lost.fetch_add(u64::from(launched) - won, Ordering::Relaxed);
                        return (i, attempt, result);
                    }
                },
                () = timer => match hedge(pool, members, tried, &choose) {
                    Some(next) => {
                        launched += 1;
                        let req = replay.rebuild();
                        running.push(start(pool, members, launched, next, req, false, replay));
                        next_at += delay;
                    }
                    None => more = false,
                },
            }
        }
    }
}

/// The endpoint for one more hedge (now counted as tried), or None when none
/// may be sent: no endpoint left untried, or no try or budget left (a hedge
/// spends like a retry).
fn hedge<'a, B: ReqBody>(
    pool: &'a Pool<B>,
    members: &'a Members<B>,
    tried: &mut Tried,
    choose: &impl Fn(&Tried) -> Option<(usize, Admit)>,
) -> Option<(usize, Attempt<'a, B>)> {
    let (i, admit) = choose(tried)?;
    // Dropped unused, the attempt gives back a half-open probe.
    let attempt = Attempt::new(&members.backends[i], admit);
    if tried.contains(i) || !pool.may_retry(tried) {
        return None;
    }
    tried.push(i);
    tracing::debug!(pool = %pool.name, endpoint = %members.backends[i].addr, "hedging a slow try");
    Some((i, attempt))
}

/// Try `n` (0 the first, then each hedge) of `req` on endpoint `i`, boxed so
/// the first try and its hedges race in one set.
fn start<'a, B: ReqBody>(
    pool: &'a Pool<B>,
    members: &'a Members<B>,
    n: u32,
    (i, attempt): (usize, Attempt<'a, B>),
    req: Request<B>,
    fresh: bool,
    replay: &'a Replay,
) -> Racing<'a, B> {
    let backend = &members.backends[i];
    Box::pin(async move {
        let result = backend
            .exchange(
                &pool.connector,
                req,
                fresh,
                pool.response_timeout,
                Some(replay),
            )
            .await;
        (n, i, attempt, result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_percentile_is_its_bucket_upper_bound() {
        let mut w = LatencyWindow::new(Duration::from_secs(10));
        for i in 1..=100 {
            w.record(ms(i), 0);
        }
        let p95 = w.quantile(0.95, 0, 50).expect("100 samples");
        assert!(p95 >= ms(95) && p95 <= ms(114), "{p95:?}");
        let p50 = w.quantile(0.50, 0, 50).expect("100 samples");
        assert!(p50 >= ms(50) && p50 <= ms(60), "{p50:?}");
        // A few slow answers move the tail, not the median.
        for _ in 0..10 {
            w.record(Duration::from_secs(2), 0);
        }
        let p99 = w.quantile(0.99, 0, 50).expect("samples");
        assert!(p99 >= Duration::from_secs(2), "{p99:?}");
        assert!(w.quantile(0.5, 0, 50).expect("samples") <= ms(66));
    }

    #[test]
    fn no_percentile_before_enough_samples() {
        let mut w = LatencyWindow::new(Duration::from_secs(10));
        assert_eq!(w.quantile(0.95, 0, 1), None);
        for _ in 0..49 {
            w.record(ms(5), 0);
        }
        assert_eq!(w.quantile(0.95, 0, 50), None);
        w.record(ms(5), 0);
        assert!(w.quantile(0.95, 0, 50).is_some());
    }

    #[test]
    fn old_latencies_slide_out_of_the_window() {
        let mut w = LatencyWindow::new(Duration::from_secs(10));
        for _ in 0..100 {
            w.record(Duration::from_secs(1), 0);
        }
        for _ in 0..100 {
            w.record(ms(2), 5_000);
        }
        // Both halves inside the window: the slow one is the tail.
        assert!(w.quantile(0.9, 9_999, 50).expect("samples") >= Duration::from_secs(1));
        // 10 s after the slow ones, only the fast ones count.
        let p = w.quantile(0.9, 10_000, 50).expect("samples");
        assert!(p <= ms(3), "{p:?}");
        // And 10 s after those, nothing.
        assert_eq!(w.quantile(0.9, 15_000, 1), None);
    }

    #[test]
    fn a_percentile_delay_starts_fixed_and_keeps_its_floor() {
        let mut c = HedgeConfig::new(HedgeAfter::Percentile(95.0));
        c.min_samples = 10;
        let h = Hedging::new(c.clone());
        assert_eq!(h.delay(1_000), c.initial, "no samples yet");
        for _ in 0..20 {
            h.observe(Duration::from_micros(300), 1_000);
        }
        // Cached for 100 ms, then read from the window: 300 µs, floored.
        assert_eq!(h.delay(1_050), c.initial);
        assert_eq!(h.delay(1_100), c.floor);
        for _ in 0..20 {
            h.observe(ms(200), 1_200);
        }
        let d = h.delay(1_300);
        assert!(d >= ms(200) && d <= ms(240), "{d:?}");
    }

    #[test]
    fn a_fixed_delay_is_fixed() {
        let h = Hedging::new(HedgeConfig::new(HedgeAfter::Fixed(ms(50))));
        h.observe(Duration::from_secs(3), 0);
        assert_eq!(h.delay(0), ms(50));
    }

    #[test]
    fn buckets_cover_every_latency() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
        for us in [101, 1_000, 50_000, 1_000_000] {
            let d = Duration::from_micros(us);
            assert!(upper_bound(bucket(d)) >= d, "{us} µs");
            assert!(upper_bound(bucket(d)) <= d.mul_f64(1.2), "{us} µs");
        }
    }
}
