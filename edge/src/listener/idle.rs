//! Write progress of responses, for `client.write_idle_timeout`: a response the
//! client takes nothing of for that long is cancelled, so a reader that never
//! reads (zero h2 window, full TCP buffer) cannot hold an upstream forever.
//!
//! Progress is "the consumer (hyper, writing to the client) asked for the next
//! frame". The clock runs only between handing a frame out and the next poll: a
//! slow origin (the body returns `Pending`) never counts against the client.
//! Counting uses two relaxed atomics per poll and no clock read; watchdogs sample
//! the counter on a tick of a quarter of the timeout (as `IdleWatch` does), so a
//! stall is acted on between 1 and 1.25 timeouts after it began.
//!
//! API (shared by the h1 and h2 sides):
//!
//! - `Progress::new() -> Arc<Progress>`; `progress.state() -> State`
//!   (`Consumer`: a frame was handed out, or none asked for yet; `Producer`: the
//!   body is waiting on its source; `Ended`: the body finished; `Dropped`: dropped
//!   before its end — the client reset the stream or went away).
//! - `progress.stalled(timeout).await`: the watchdog helper; resolves once the
//!   consumer has not polled for `timeout` while in `Consumer`; never once the
//!   body ended or was dropped. For a per-connection watchdog (h1: select on the
//!   connection and this, drop the connection when it resolves).
//! - `Watched::new(body, progress.clone())`: a body wrapper that records progress.
//! - `Severable::new(body) -> (Severable<B>, Sever)`: a body wrapper that records
//!   progress and that a watchdog can cut from outside (`sever.sever()` drops the
//!   inner body at once, freeing its upstream; the next poll yields an error, which
//!   makes hyper reset the h2 stream). `sever.progress()` is its `Progress`.
//! - `Streams` (per connection; `Arc` it): `streams.register(sever)` per response,
//!   `streams.sweep(timeout, tick)` from the connection's loop once per `tick`:
//!   severs every stream stalled for `timeout`, forgets finished ones, and returns
//!   what it saw (`Sweep`), including streams dropped before their end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use upstream::BoxError;

/// Where a watched response body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Consumer,
    Producer,
    Ended,
    Dropped,
}

/// One response's write progress, shared between its body and a watchdog.
#[derive(Debug)]
pub struct Progress {
    polls: AtomicU32,
    state: AtomicU8,
}

const CONSUMER: u8 = 0;
const PRODUCER: u8 = 1;
const ENDED: u8 = 2;
const DROPPED: u8 = 3;

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            polls: AtomicU32::new(0),
            state: AtomicU8::new(CONSUMER),
        })
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            CONSUMER => State::Consumer,
            PRODUCER => State::Producer,
            ENDED => State::Ended,
            _ => State::Dropped,
        }
    }

    fn polls(&self) -> u32 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Records one poll of the body and what it returned.
    fn record<T, E>(&self, polled: &Poll<Option<Result<T, E>>>) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let state = match polled {
            Poll::Pending => PRODUCER,
            Poll::Ready(Some(Ok(_))) => CONSUMER,
            Poll::Ready(_) => ENDED,
        };
        self.state.store(state, Ordering::Relaxed);
    }

    /// Marks a body dropped; an ended one stays ended.
    fn dropped(&self) {
        let _ =
            self.state
                .compare_exchange(CONSUMER, DROPPED, Ordering::Relaxed, Ordering::Relaxed);
        let _ =
            self.state
                .compare_exchange(PRODUCER, DROPPED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Resolves once the consumer has not asked for a frame for `timeout`.
    pub async fn stalled(&self, timeout: Duration) {
        let tick = tick_of(timeout);
        let mut quiet = Quiet::default();
        loop {
            tokio::time::sleep(tick).await;
            match self.state() {
                State::Ended | State::Dropped => std::future::pending::<()>().await,
                _ if quiet.observe(self) => return,
                _ => {}
            }
        }
    }
}

/// The watchdogs' tick: a quarter of the timeout, at least 10 ms.
pub fn tick_of(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(10))
}

/// A watchdog's memory of one body: the poll count it last saw, and for how
/// many ticks it has been unchanged while the consumer held a frame.
#[derive(Default)]
struct Quiet {
    seen: u32,
    ticks: u32,
}

impl Quiet {
    /// One tick; true once four ticks passed with no poll while in `Consumer`.
    fn observe(&mut self, p: &Progress) -> bool {
        let polls = p.polls();
        if polls != self.seen || p.state() != State::Consumer {
            self.seen = polls;
            self.ticks = 0;
            return false;
        }
        self.ticks += 1;
        self.ticks >= 4
    }
}

/// A response body that records its write progress.
pub struct Watched<B> {
    body: B,
    progress: Arc<Progress>,
}

impl<B> Watched<B> {
    pub fn new(body: B, progress: Arc<Progress>) -> Self {
        Self { body, progress }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        self.progress.dropped();
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.progress.record(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why a severed body fails.
#[derive(Debug, thiserror::Error)]
#[error("response cancelled: the client took nothing of it within the write-idle timeout")]
pub struct Stalled;

struct Slot<B> {
    progress: Arc<Progress>,
    body: Mutex<Option<B>>,
}

/// A watched response body that a watchdog can cut from outside: a body that is
/// not polled cannot notice a timer, so the watchdog drops it instead.
pub struct Severable<B> {
    slot: Arc<Slot<B>>,
    /// `size_hint` and `is_end_stream` are answered from the start, without the lock.
    hint: SizeHint,
    end: bool,
}

/// The outside handle of a `Severable`.
pub struct Sever {
    slot: Arc<dyn SeverSlot>,
}

trait SeverSlot: Send + Sync {
    fn sever(&self) -> bool;
    fn progress(&self) -> &Arc<Progress>;
}

impl<B: Send> SeverSlot for Slot<B> {
    fn sever(&self) -> bool {
        let body = self
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        body.is_some()
    }

    fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

impl Sever {
    /// Drops the body (freeing what it holds upstream); false if already gone.
    pub fn sever(&self) -> bool {
        self.slot.sever()
    }

    pub fn progress(&self) -> &Arc<Progress> {
        self.slot.progress()
    }
}

impl<B: HttpBody + Send + 'static> Severable<B> {
    pub fn new(body: B) -> (Self, Sever) {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        let slot = Arc::new(Slot {
            progress: Progress::new(),
            body: Mutex::new(Some(body)),
        });
        let sever = Sever { slot: slot.clone() };
        (Self { slot, hint, end }, sever)
    }
}

impl<B> Drop for Severable<B> {
    fn drop(&mut self) {
        self.slot.progress.dropped();
        // The body goes with its stream, not with the watchdog's handle (which
        // lives until the next sweep): what it holds upstream, such as an
        // HTTP/1.1 connection to hand back to its pool, is released now.
        let body = self
            .slot
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(body);
    }
}

impl<B> HttpBody for Severable<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut body = self
            .slot
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let polled = match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(Some(Err(Stalled.into()))),
        };
        self.slot.progress.record(&polled);
        polled
    }

    /// The inner body's answer when the lock is free (a body already at its end
    /// is then marked ended, so hyper dropping it unpolled is not a reset);
    /// otherwise the answer from the start. A severed body is not at its end:
    /// its next poll must yield the error.
    fn is_end_stream(&self) -> bool {
        let Ok(body) = self.slot.body.try_lock() else {
            return self.end;
        };
        let end = body.as_ref().is_some_and(|b| b.is_end_stream());
        if end {
            self.slot.progress.state.store(ENDED, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// What one sweep saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Streams cut for the write-idle timeout.
    pub severed: usize,
    /// Streams whose body was dropped before its end (not by a sweep).
    pub dropped: usize,
    /// Streams still being watched.
    pub open: usize,
}

/// One connection's watched responses.
#[derive(Default)]
pub struct Streams {
    /// Registered since the last sweep; the service pushes, the sweep takes.
    new: Mutex<Vec<Sever>>,
    watched: Mutex<Vec<(Sever, Quiet)>>,
}

impl Streams {
    pub fn register(&self, sever: Sever) {
        self.new
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sever);
    }

    /// Whether no body is registered (none streaming, none waiting for the
    /// next sweep). A body that ended is only dropped from the list by a sweep.
    pub fn is_empty(&self) -> bool {
        self.new
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
            && self
                .watched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// One watchdog tick (call it every `tick_of(timeout)`).
    pub fn sweep(&self) -> Sweep {
        let fresh = std::mem::take(&mut *self.new.lock().unwrap_or_else(PoisonError::into_inner));
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.extend(fresh.into_iter().map(|s| (s, Quiet::default())));
        let mut out = Sweep::default();
        watched.retain_mut(|(sever, quiet)| match sever.progress().state() {
            State::Ended => false,
            State::Dropped => {
                out.dropped += 1;
                false
            }
            _ if quiet.observe(sever.progress()) => {
                out.severed += usize::from(sever.sever());
                false
            }
            _ => true,
        });
        out.open = watched.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn stalled_fires_only_while_the_consumer_holds_a_frame() {
        let p = Progress::new();
        let timeout = Duration::from_secs(4);
        let started = tokio::time::Instant::now();
        p.stalled(timeout).await;
        assert!(started.elapsed() >= timeout);
        p.state.store(PRODUCER, Ordering::Relaxed);
        let waited = tokio::time::timeout(Duration::from_secs(60), p.stalled(timeout)).await;
        assert!(
            waited.is_err(),
            "a body waiting on its origin is not stalled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_severs_a_stalled_stream_and_counts_dropped_ones() {
        let streams = Streams::default();
        let (mut body, sever) = Severable::new(Body::full(Bytes::from_static(b"x")));
        streams.register(sever);
        let (dropped, sever) = Severable::new(Body::full(Bytes::from_static(b"y")));
        streams.register(sever);
        drop(dropped);
        let first = streams.sweep();
        assert_eq!((first.dropped, first.open), (1, 1));
        for _ in 0..2 {
            assert_eq!(streams.sweep().severed, 0);
        }
        assert_eq!(streams.sweep().severed, 1);
        assert!(body.frame().await.is_some_and(|f| f.is_err()));
    }

    /// A body that says when it is dropped.
    struct Flagged(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Flagged {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl HttpBody for Flagged {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(None)
        }
    }

    #[test]
    fn the_body_is_dropped_with_its_stream_not_with_the_watchdogs_handle() {
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (body, sever) = Severable::new(Flagged(gone.clone()));
        drop(body);
        assert!(
            gone.load(Ordering::SeqCst),
            "the inner body (and the upstream connection it holds) outlived its stream"
        );
        assert!(!sever.sever(), "nothing is left to sever");
    }

    #[tokio::test]
    async fn a_finished_body_is_forgotten() {
        let streams = Streams::default();
        let (body, sever) = Severable::new(Body::full(Bytes::from_static(b"x")));
        streams.register(sever);
        let bytes = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok(), Some(Bytes::from_static(b"x")));
        assert_eq!(streams.sweep(), Sweep::default());
    }
}
