//! HTTP/1.1 upgrades (WebSocket) through a pool: the endpoint is chosen as for
//! any request (hash key, sticky preference, locality), the exchange runs on a
//! connection of its own, and it is tried elsewhere only when nothing was sent.

use http::{Request, Response};

use super::attempt::{is_sick_answer, Attempt, Tried};
use super::{HashKey, Pool, Prefer, ReqBody};
use crate::backend::Failed;
use crate::body::UpstreamBody;
use crate::error::{Blame, Error};
use crate::locality::Locality;

impl<B: ReqBody> Pool<B> {
    /// Sends an upgrade request on a dedicated HTTP/1.1 connection and returns
    /// the backend's answer as it is. A `101 Switching Protocols` carries the
    /// backend's `hyper::upgrade::OnUpgrade` in its extensions; any other
    /// answer is an ordinary response whose connection closes after it.
    ///
    /// Only a try that could not connect goes to another endpoint (within the
    /// retry budget): once the request was sent, the backend may have acted on
    /// it, and after a 101 the bytes are the tunnel's. The breaker hears of
    /// connect failures, resets and timeouts before the answer, and of 5xx
    /// answers; never of anything that happens in the tunnel.
    pub async fn upgrade(&self, req: Request<B>) -> Result<Response<UpstreamBody>, Error> {
        let _admitted = self.admit()?;
        self.budget.deposit();
        let members = self.members.load_full();
        let key = req.extensions().get::<HashKey>().map(|k| k.0);
        let regions = self.preference(&members, req.extensions().get::<Locality>());
        let mut prefer = req.extensions().get::<Prefer>().map(|p| p.0);
        let mut tried = Tried::default();
        let mut req = req;
        loop {
            let (i, admit) =
                self.choose_or_fail(&members, &tried, key, regions.as_deref(), prefer.take())?;
            let backend = &members.backends[i];
            tried.push(i);
            let mut attempt = Attempt::new(backend, admit);
            match backend
                .upgrade(&self.connector, req, self.response_timeout)
                .await
            {
                Ok(mut resp) => {
                    if is_sick_answer(resp.status()) {
                        attempt.answered_with_error(self.may_eject(&members));
                    } else {
                        attempt.succeeded();
                    }
                    self.mark_served(&members, i, &tried, &mut resp);
                    return Ok(resp);
                }
                Err(Failed::Unsent(_, error) | Failed::Sent { error, .. })
                    if error.blame() != Blame::Upstream =>
                {
                    attempt.failed_if(false);
                    return Err(error);
                }
                Err(Failed::Unsent(unsent, error)) => {
                    attempt.failed_if(error.is_connect());
                    if !self.has_untried(&members, &tried) || !self.may_retry(&tried) {
                        return Err(error);
                    }
                    tracing::debug!(pool = %self.name, error = %error, "upgrade not sent; trying another endpoint");
                    req = *unsent;
                }
                Err(Failed::Sent { error, .. }) => {
                    attempt.failed_if(true);
                    return Err(error);
                }
            }
        }
    }
}
