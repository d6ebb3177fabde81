//! One request's bookkeeping across its tries: which endpoints it tried, what
//! each try's outcome does to the endpoint's breaker and latency estimate, and
//! the rules for which endpoints may be picked or ejected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;

use super::ReqBody;
use crate::backend::{Backend, Failed};
use crate::breaker::Admit;
use crate::clock::now_ms;
use crate::error::{Blame, Error};

/// Answers that mean the endpoint is sick (as opposed to the request being wrong).
pub(super) fn is_sick_answer(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// With `up` of `n` endpoints available, whether ejecting one more keeps at least
/// `min_share` of the pool available.
pub(super) fn may_eject(up: usize, n: usize, min_share: f64) -> bool {
    let keep = (min_share.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    up.saturating_sub(1) >= keep.max(1)
}

/// A request counted against `max_requests` until dropped.
pub(super) struct InFlight(pub(super) Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The endpoints a request has been tried on, in order (at most a few).
#[derive(Default)]
pub(super) struct Tried {
    list: [usize; 8],
    len: usize,
}

impl Tried {
    pub(super) fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }

    pub(super) fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// One try's bookkeeping on its endpoint: the outcome feeds the breaker and the
/// latency estimate; a half-open probe abandoned midway is released on drop.
pub(super) struct Attempt<'a, B: ReqBody> {
    backend: &'a Backend<B>,
    probe: bool,
    started: Instant,
    settled: bool,
}

impl<'a, B: ReqBody> Attempt<'a, B> {
    pub(super) fn new(backend: &'a Backend<B>, admit: Admit) -> Self {
        Self {
            backend,
            probe: admit == Admit::Probe,
            started: Instant::now(),
            settled: false,
        }
    }

    pub(super) fn succeeded(&mut self) {
        self.settled = true;
        self.backend.load.observe(self.started.elapsed(), now_ms());
        self.backend.breaker().on_success();
    }

    /// An error answer: a failure that opens the breaker only when `ejectable`.
    pub(super) fn answered_with_error(&mut self, ejectable: bool) {
        self.settled = true;
        self.backend.load.observe(self.started.elapsed(), now_ms());
        let opened = self
            .backend
            .breaker()
            .on_failure_unless_last(now_ms(), ejectable);
        if opened {
            self.backend.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.backend.addr, "circuit breaker opened: endpoint answering errors");
        }
    }

    /// Time since the try started.
    pub(super) fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records an exchange that produced no response: a failure of the
    /// endpoint unless edge or the client is to blame, nothing was sent for
    /// another reason than a failed connect, or a pooled connection went stale
    /// (a timeout always counts).
    pub(super) fn failed(&mut self, failed: &Failed<B>) {
        let counts = match failed {
            Failed::Unsent(_, error) | Failed::Sent { error, .. }
                if error.blame() != Blame::Upstream =>
            {
                false
            }
            Failed::Unsent(_, error) => error.is_connect(),
            Failed::Sent { error, reused } => !reused || matches!(error, Error::Timeout { .. }),
        };
        self.failed_if(counts);
    }

    /// Records a failure when `counts`; otherwise only releases a probe.
    pub(super) fn failed_if(&mut self, counts: bool) {
        self.settled = true;
        if !counts {
            if self.probe {
                self.backend.breaker().release_probe();
            }
            return;
        }
        // Failures are the breaker's business; the latency estimate learns only
        // from answers, so a restarted endpoint wins its traffic back at once.
        if self.backend.breaker().on_failure(now_ms()) {
            self.backend.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.backend.addr, "circuit breaker opened");
        }
    }
}

impl<B: ReqBody> Drop for Attempt<'_, B> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.backend.breaker().release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_keeps_the_minimum_share_available() {
        // Half of 4 must stay: with all 4 up one may go, then another, not a third.
        assert!(may_eject(4, 4, 0.5));
        assert!(may_eject(3, 4, 0.5));
        assert!(!may_eject(2, 4, 0.5));
        // Never the last one, whatever the share.
        assert!(!may_eject(1, 3, 0.0));
        assert!(may_eject(3, 3, 0.5));
        assert!(!may_eject(2, 3, 0.5), "ceil(1.5) = 2 must stay");
    }

    #[test]
    fn only_server_failures_mean_a_sick_endpoint() {
        for s in [500, 502, 503, 504] {
            assert!(
                is_sick_answer(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
        for s in [200, 404, 429, 501, 505] {
            assert!(
                !is_sick_answer(StatusCode::from_u16(s).expect("status")),
                "{s}"
            );
        }
    }
}
