//! Request coalescing within one edge: the first miss for a key fetches, later
//! misses wait for it (with a deadline) and then look the cache up again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

type Inflight = Arc<Mutex<HashMap<String, watch::Receiver<()>>>>;

#[derive(Default)]
pub struct Coalescer {
    inflight: Inflight,
}

/// The fetch for a key is ours until this is dropped (stored, not storable,
/// failed or abandoned); dropping it wakes every follower.
pub struct Leader {
    key: String,
    inflight: Inflight,
    _done: watch::Sender<()>,
    /// Run when leadership ends (releases the cross-edge lock).
    on_release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Leader {
    pub fn on_release(&mut self, f: impl FnOnce() + Send + Sync + 'static) {
        self.on_release = Some(Box::new(f));
    }

    /// Takes the release hook out, to run it later than the local release
    /// (after the entry reached Redis, for the other edges).
    pub fn take_release(&mut self) -> Option<Box<dyn FnOnce() + Send + Sync>> {
        self.on_release.take()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        if let Some(f) = self.on_release.take() {
            f();
        }
    }
}

pub enum Role {
    Leader(Leader),
    Follower(watch::Receiver<()>),
}

impl Coalescer {
    pub fn join(&self, key: &str) -> Role {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            key: key.to_owned(),
            inflight: Arc::clone(&self.inflight),
            _done: tx,
            on_release: None,
        })
    }

    /// Leadership only if nobody fetches the key yet (background refreshes).
    pub fn try_lead(&self, key: &str) -> Option<Leader> {
        match self.join(key) {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }
}

/// Waits until the leader is done or `deadline` passes; true if it finished.
pub async fn wait(mut rx: watch::Receiver<()>, deadline: Duration) -> bool {
    // `changed` fails once the sender (held by the leader) is dropped.
    matches!(
        tokio::time::timeout(deadline, async { while rx.changed().await.is_ok() {} }).await,
        Ok(())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn followers_wake_when_the_leader_is_done() {
        let c = Coalescer::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = c.join("k") else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        drop(leader);
        assert!(waiter.await.expect("joins"));
        assert!(matches!(c.join("k"), Role::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn followers_give_up_at_the_deadline() {
        let c = Coalescer::default();
        let _leader = c.join("k");
        let Role::Follower(rx) = c.join("k") else {
            panic!("second follows")
        };
        assert!(!wait(rx, Duration::from_secs(1)).await);
        assert!(c.try_lead("k").is_none());
    }
}
