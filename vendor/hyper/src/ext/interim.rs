// PATCH(edge): this whole file. A server-side way to send interim (1xx)
// responses, such as 103 Early Hints, before a request's final response.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use http::Response;

/// How many interim responses one request may send in all; a `send` past it
/// is refused. HEADERS frames are not flow-controlled and an HTTP/1.1 head is
/// buffered whole, so only a count bounds what a chatty service (or the
/// backend behind a proxy) makes the connection hold for a client that does
/// not read.
const LIMIT: usize = 8;

/// Sends interim (1xx) responses for one request, from the service, before the
/// request's final response.
///
/// A server connection built with `informational(true)` (HTTP/1.1 and HTTP/2)
/// puts one in each request's extensions. On HTTP/1.1 it is only there for
/// HTTP/1.1 requests: an HTTP/1.0 client is never sent a 1xx (RFC 9110 15.2).
/// Once the final response's head is written, every `send` is refused.
#[derive(Clone)]
pub struct InformationalSender(Arc<Shared>);

struct Shared {
    /// `None` once the final response's head has gone; with the number sent.
    queue: Mutex<Option<(VecDeque<Response<()>>, usize)>>,
    waker: AtomicWaker,
}

impl fmt::Debug for InformationalSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformationalSender").finish()
    }
}

impl InformationalSender {
    /// Queues `res` to be written before the final response. It is given back
    /// when it cannot be: its status is not 1xx or is 101 (an upgrade is a
    /// final response here), the final response has gone, or this request
    /// has sent `LIMIT` (8) interim responses already.
    pub fn send(&self, res: Response<()>) -> Result<(), Response<()>> {
        if !res.status().is_informational() || res.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            return Err(res);
        }
        let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_mut() {
            Some((q, sent)) if *sent < LIMIT => {
                q.push_back(res);
                *sent += 1;
            }
            _ => return Err(res),
        }
        drop(queue);
        self.0.waker.wake();
        Ok(())
    }

}

/// The connection's end: what the service queued, taken in order. Public so
/// that a server writing its own responses (HTTP/3 beside hyper) uses the same
/// queue and limit.
pub struct InformationalReceiver(Arc<Shared>);

impl fmt::Debug for InformationalReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformationalReceiver").finish()
    }
}

/// A sender for one request and the receiving end its connection writes from.
pub fn informational() -> (InformationalSender, InformationalReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Some((VecDeque::new(), 0))),
        waker: AtomicWaker::new(),
    });
    (
        InformationalSender(shared.clone()),
        InformationalReceiver(shared),
    )
}

impl InformationalReceiver {
    /// The next queued interim response, or `Pending` (with the task woken
    /// when one is queued).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Response<()>> {
        self.0.waker.register(cx.waker());
        let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_mut().and_then(|(q, _)| q.pop_front()) {
            Some(res) => Poll::Ready(res),
            None => Poll::Pending,
        }
    }

    /// Refuses further sends; what is still queued is returned, to be written
    /// before the final head.
    pub fn close(&mut self) -> VecDeque<Response<()>> {
        self.0
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|(q, _)| q)
            .unwrap_or_default()
    }
}

impl Drop for InformationalReceiver {
    fn drop(&mut self) {
        self.close();
    }
}
