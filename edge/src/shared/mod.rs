//! State shared by every edge: the one Redis client that the cache's L2,
//! sticky sessions, global limits, ACME and the session ticket keys go through. Depends on `config`
//! only; the features that use it sit above.

pub mod redis;
pub mod tickets;

pub use self::redis::{Breaker, Conn, Lock, Redis};
