//! 103 Early Hints on an HTTP/3 stream: what the pool hands the request's
//! [`upstream::Interim`] waits here until the stream's task writes it, each a
//! HEADERS frame of its own before the final response's (RFC 9114 4.1).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::Response;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::metrics::Proto;
use crate::pipeline;

/// At most this many hints go out per request (as hyper's limit on h1 and
/// h2): more are dropped, so a chatty backend cannot make a stream hold more.
const LIMIT: usize = 8;

/// One stream's hints not yet written.
pub(super) struct Hints {
    /// `None` once the final response is being written: no more hints. With
    /// the number taken so far.
    queue: Mutex<Option<(VecDeque<Response<()>>, usize)>>,
    queued: Notify,
}

impl Hints {
    /// A queue for one request, and the sink the pipeline hands the pool.
    pub(super) fn new(metrics: &Metrics) -> (Arc<Self>, upstream::Interim) {
        let hints = Arc::new(Self {
            queue: Mutex::new(Some((VecDeque::new(), 0))),
            queued: Notify::new(),
        });
        let passed = metrics.early_hints(Proto::H3);
        let sink = {
            let hints = hints.clone();
            upstream::Interim::new(move |res| {
                if let Some(hint) = pipeline::early_hint(res) {
                    if hints.push(hint) {
                        passed.inc();
                    }
                }
            })
        };
        (hints, sink)
    }

    fn push(&self, hint: Response<()>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_mut() {
            Some((q, taken)) if *taken < LIMIT => {
                q.push_back(hint);
                *taken += 1;
            }
            _ => return false,
        }
        drop(queue);
        self.queued.notify_one();
        true
    }

    /// Resolves when a hint may be waiting (a permit is kept if none waits).
    pub(super) async fn queued(&self) {
        self.queued.notified().await
    }

    /// The hints waiting now.
    pub(super) fn take(&self) -> VecDeque<Response<()>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue
            .as_mut()
            .map(|(q, _)| std::mem::take(q))
            .unwrap_or_default()
    }

    /// The last hints: none is taken after this.
    pub(super) fn close(&self) -> VecDeque<Response<()>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.take().map(|(q, _)| q).unwrap_or_default()
    }
}
