//! State shared by every edge: the one Redis client that the cache's L2 (and,
//! next, sticky sessions and global limits) goes through. Depends on `config`
//! only; the features that use it sit above.

pub mod redis;

pub use self::redis::{Breaker, Conn, Redis};
