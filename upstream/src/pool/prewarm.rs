//! Connections opened ahead of demand (a forecast rise), so the first requests
//! of it find them ready instead of paying for the connect.

use std::sync::atomic::Ordering;

use super::{Pool, ReqBody};
use crate::breaker::State;
use crate::clock::now_ms;

impl<B: ReqBody> Pool<B> {
    /// Opens connections to every endpoint in rotation (healthy, breaker
    /// closed): HTTP/1.1 endpoints get up to `per_endpoint` open connections,
    /// the new ones parked idle for requests to take; HTTP/2 endpoints get their
    /// one shared connection if it is not open. Returns the connections opened.
    /// Idle ones close after the pool's idle timeout like any other.
    pub async fn prewarm(&self, per_endpoint: usize) -> usize {
        let members = self.members.load_full();
        let now = now_ms();
        let warming = members
            .backends
            .iter()
            .filter(|b| {
                b.healthy.load(Ordering::Relaxed) && b.breaker().state(now) == State::Closed
            })
            .map(|b| b.prewarm(&self.connector, per_endpoint));
        futures_util::future::join_all(warming)
            .await
            .into_iter()
            .sum()
    }

    /// Endpoints in the pool now (in rotation or not).
    pub fn endpoint_count(&self) -> usize {
        self.members.load().backends.len()
    }
}
