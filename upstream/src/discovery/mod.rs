//! DNS discovery: a pool's endpoint set, kept current from A/AAAA or SRV records.
//!
//! [`watch()`] resolves a name once, then re-resolves it in a background task at the
//! records' TTL (clamped to the configured floor and ceiling) and publishes the set on
//! a `tokio::sync::watch` channel. The task stops when every receiver is gone.
//!
//! What it must not do: resolve on the request path, or let a bad answer empty a
//! working pool. A failed lookup (timeout, SERVFAIL, REFUSED, server down) keeps the
//! last known good set for as long as it takes, retrying with a capped backoff; an
//! NXDOMAIN or empty answer replaces an empty set but never a non-empty one. Which set
//! to publish is decided by the pure functions of `state.rs`; this file only drives them.

mod lookup;
mod state;
#[cfg(test)]
mod tests;

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::proto::ProtoError;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use tokio::sync::watch;

use crate::EndpointAddr;
pub use lookup::LookupError;

/// Which records name the endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A and AAAA records of a host name; every address gets [`DnsConfig::port`].
    Address,
    /// SRV records (e.g. `_http._tcp.api.internal`): port, weight and priority come from
    /// each record, addresses from its target's A and AAAA records.
    Srv,
}

/// What to resolve, where, and how often.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// A/AAAA: a host name, endpoints get `port`; SRV: e.g. `_http._tcp.api.internal`,
    /// port and weight from the records.
    pub name: String,
    /// Which records to ask for.
    pub kind: RecordKind,
    /// The endpoints' port, for [`RecordKind::Address`]; unused for SRV.
    pub port: u16,
    /// Endpoints are `https://` when true, `http://` otherwise.
    pub tls: bool,
    /// Name servers, each asked over UDP and TCP; empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// The shortest wait between two lookups, whatever the TTL; also the first retry delay.
    pub ttl_floor: Duration,
    /// The longest wait between two successful lookups, whatever the TTL.
    pub ttl_ceiling: Duration,
    /// How long one query to one name server may take (a query is retried once).
    pub timeout: Duration,
}

impl DnsConfig {
    /// Endpoints from the A and AAAA records of `name`, on `port`, with the default timings.
    pub fn address(name: impl Into<String>, port: u16) -> Self {
        Self::new(name.into(), RecordKind::Address, port)
    }

    /// Endpoints from the SRV records of `name`, with the default timings.
    pub fn srv(name: impl Into<String>) -> Self {
        Self::new(name.into(), RecordKind::Srv, 0)
    }

    fn new(name: String, kind: RecordKind, port: u16) -> Self {
        Self {
            name,
            kind,
            port,
            tls: false,
            nameservers: Vec::new(),
            ttl_floor: Duration::from_secs(1),
            ttl_ceiling: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One endpoint found in DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// The endpoint, always an IP address and a port.
    pub addr: EndpointAddr,
    /// SRV weight (0 included, as published); 1 for A/AAAA records.
    pub weight: u32,
    /// SRV priority, lower first; 0 for A/AAAA records.
    pub priority: u16,
}

impl fmt::Display for Discovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weight {}, priority {})",
            self.addr, self.weight, self.priority
        )
    }
}

/// The published state: the endpoint set and how fresh it is.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The endpoints, sorted, without duplicates: equal sets compare equal.
    pub endpoints: Arc<[Discovered]>,
    /// When the last successful answer came (the age of the last known good set).
    pub refreshed_at: Instant,
    /// Consecutive failed lookups (errors, or empty answers that left a set in place).
    pub failures: u64,
    /// Lookups so far, good or not (for the refresh rate).
    pub lookups: u64,
    /// Failed lookups so far.
    pub failed_lookups: u64,
}

/// Why DNS discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The configured name is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name")]
    Name {
        name: String,
        #[source]
        source: ProtoError,
    },
    /// `ttl_floor` is zero or longer than `ttl_ceiling`.
    #[error(
        "DNS discovery of {name}: ttl_floor ({floor:?}) must be above zero \
         and at most ttl_ceiling ({ceiling:?})"
    )]
    TtlBounds {
        name: String,
        floor: Duration,
        ceiling: Duration,
    },
    /// The per-query timeout is zero.
    #[error("DNS discovery of {name}: the query timeout must be above zero")]
    ZeroTimeout { name: String },
    /// No name servers were configured and the system's resolv.conf could not be read.
    #[error("DNS discovery of {name}: reading the system resolver configuration")]
    SystemConfig {
        name: String,
        #[source]
        source: ResolveError,
    },
    /// The first lookup failed, so there is no set to start from.
    #[error("DNS discovery of {name}: the first lookup failed")]
    FirstLookup {
        name: String,
        #[source]
        source: LookupError,
    },
}

/// Resolves once (erroring if the first answer fails), then re-resolves in a background
/// task at the record TTL clamped to [floor, ceiling], never on the request path.
///
/// An NXDOMAIN or empty first answer is not an error: the set starts empty (with a
/// warning) and fills in when the name appears.
///
/// Receivers are woken (`changed()`) only when the endpoint set changes. Every lookup
/// still updates `refreshed_at` and `failures` in place, through
/// [`watch::Sender::send_if_modified`], so `borrow()` always shows the current age and
/// failure count. The background task ends when the last receiver is dropped.
pub async fn watch(cfg: DnsConfig) -> Result<watch::Receiver<Resolution>, DiscoveryError> {
    let name = check(&cfg)?;
    let dns = lookup::resolver(&cfg)?;
    let answer =
        lookup::resolve(&dns, &cfg, &name)
            .await
            .map_err(|source| DiscoveryError::FirstLookup {
                name: cfg.name.clone(),
                source,
            })?;
    let now = now();
    let first = state::next(&Resolution::empty(now), Ok(answer.endpoints), now);
    if first.endpoints.is_empty() {
        tracing::warn!(
            name = %cfg.name,
            answer = answer.negative.unwrap_or("no usable records"),
            "DNS discovery: the first answer has no endpoints; starting empty"
        );
    } else {
        tracing::info!(
            name = %cfg.name,
            endpoints = %Listed(first.endpoints.iter()),
            "DNS discovery: first answer"
        );
    }
    let wait = state::delay(&cfg, &first, answer.ttl);
    let (tx, rx) = watch::channel(first);
    let watcher = Watcher { cfg, name, dns };
    tokio::spawn(watcher.run(tx, wait));
    Ok(rx)
}

/// Validates the config; returns the parsed name.
fn check(cfg: &DnsConfig) -> Result<Name, DiscoveryError> {
    let name = Name::from_str(&cfg.name).map_err(|source| DiscoveryError::Name {
        name: cfg.name.clone(),
        source,
    })?;
    if cfg.ttl_floor.is_zero() || cfg.ttl_floor > cfg.ttl_ceiling {
        return Err(DiscoveryError::TtlBounds {
            name: cfg.name.clone(),
            floor: cfg.ttl_floor,
            ceiling: cfg.ttl_ceiling,
        });
    }
    if cfg.timeout.is_zero() {
        return Err(DiscoveryError::ZeroTimeout {
            name: cfg.name.clone(),
        });
    }
    Ok(name)
}

/// The background side of [`watch()`]: one name, its resolver, and the refresh loop.
struct Watcher {
    cfg: DnsConfig,
    name: Name,
    dns: TokioResolver,
}

impl Watcher {
    async fn run(self, tx: watch::Sender<Resolution>, mut wait: Duration) {
        loop {
            let answer = tokio::select! {
                () = tx.closed() => {
                    tracing::debug!(
                        name = %self.cfg.name,
                        "DNS discovery: no receivers left; stopping"
                    );
                    return;
                }
                answer = async {
                    tokio::time::sleep(wait).await;
                    lookup::resolve(&self.dns, &self.cfg, &self.name).await
                } => answer,
            };
            wait = self.apply(&tx, answer);
        }
    }

    /// Publishes what one lookup gave and returns how long to wait for the next one.
    fn apply(
        &self,
        tx: &watch::Sender<Resolution>,
        answer: Result<lookup::Answer, LookupError>,
    ) -> Duration {
        let now = now();
        let prev = tx.borrow().clone();
        let (next, ttl) = match answer {
            Ok(answer) => {
                let empty = answer.endpoints.is_empty();
                let next = state::next(&prev, Ok(answer.endpoints), now);
                if empty && next.failures > 0 {
                    tracing::warn!(
                        name = %self.cfg.name,
                        answer = answer.negative.unwrap_or("no usable records"),
                        failures = next.failures,
                        kept = next.endpoints.len(),
                        "DNS discovery: empty answer; keeping the last known endpoints"
                    );
                }
                (next, answer.ttl)
            }
            Err(error) => {
                let next = state::next(&prev, Err(&error), now);
                tracing::warn!(
                    name = %self.cfg.name,
                    error = %Chain(&error),
                    failures = next.failures,
                    kept = next.endpoints.len(),
                    "DNS discovery: lookup failed; keeping the last known endpoints"
                );
                (next, None)
            }
        };
        let (added, removed) = state::diff(&prev.endpoints, &next.endpoints);
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                name = %self.cfg.name,
                added = %Listed(added.into_iter()),
                removed = %Listed(removed.into_iter()),
                total = next.endpoints.len(),
                "DNS discovery: endpoint set changed"
            );
        }
        let wait = state::delay(&self.cfg, &next, ttl);
        tx.send_if_modified(|current| {
            let changed = *current.endpoints != *next.endpoints;
            *current = next;
            changed
        });
        wait
    }
}

/// The clock discovery stamps `refreshed_at` with (tokio's, so paused time applies).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Endpoints for a log line, comma-separated.
struct Listed<I>(I);

impl<'a, I> fmt::Display for Listed<I>
where
    I: Iterator<Item = &'a Discovered> + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, endpoint) in self.0.clone().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{endpoint}")?;
        }
        f.write_str("]")
    }
}

/// An error and its causes on one line, for logs.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
