//! Who gets a QUIC handshake. Decided from the first Initial, before quinn
//! allocates a connection (~50 KB each): past the open-connection cap or the
//! per-source cap the attempt is refused (CONNECTION_REFUSED); an unvalidated
//! address gets a Retry (stateless, no memory held) under `retry = "always"`,
//! or under `"auto"` once `retry_threshold` unvalidated handshakes are in
//! progress, so spoofed Initials can hold at most that many handshakes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::{Quic, Retry};

/// What to do with one connection attempt.
pub(super) enum Admit {
    Accept(Slot),
    Retry,
    Refuse,
}

pub(super) struct Limits {
    config: Quic,
    open: AtomicUsize,
    unvalidated: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    decisions: IntCounterVec,
    unvalidated_gauge: IntGauge,
}

impl Limits {
    pub(super) fn new(config: Quic, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "quic_incoming_total",
                "QUIC connection attempts by decision (accepted, retry, refused_capacity, refused_per_source, refused_overload).",
            ),
            &["decision"],
        )?;
        let unvalidated_gauge = IntGauge::new(
            "quic_unvalidated_handshakes",
            "QUIC handshakes in progress from addresses not validated by Retry.",
        )?;
        // A registry is per Metrics; a second listener on it would fail here, so
        // an already registered series is reused rather than an error.
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(unvalidated_gauge.clone()),
        ] {
            match registry.register(c) {
                Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Arc::new(Self {
            config,
            open: AtomicUsize::new(0),
            unvalidated: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            decisions,
            unvalidated_gauge,
        }))
    }

    /// Decides on one attempt. Only the accept loop calls this, so the checks
    /// and the counts they guard do not race each other.
    /// `overloaded`: the overload guard holds (QUIC has no accept backlog to
    /// leave a client in, so it is refused as TCP's accepting pauses).
    pub(super) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        validated: bool,
        may_retry: bool,
        overloaded: bool,
    ) -> Admit {
        if overloaded {
            self.count("refused_overload");
            return Admit::Refuse;
        }
        if self.open.load(Ordering::Relaxed) >= self.config.max_connections {
            self.count("refused_capacity");
            return Admit::Refuse;
        }
        if !validated && may_retry && self.wants_retry() {
            self.count("retry");
            return Admit::Retry;
        }
        {
            let mut map = self
                .per_source
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(ip).or_insert(0);
            if *n >= self.config.max_connections_per_source {
                drop(map);
                self.count("refused_per_source");
                return Admit::Refuse;
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        if !validated {
            self.unvalidated.fetch_add(1, Ordering::Relaxed);
            self.unvalidated_gauge.inc();
        }
        self.count("accepted");
        Admit::Accept(Slot {
            limits: self.clone(),
            ip,
            unvalidated: !validated,
        })
    }

    fn wants_retry(&self) -> bool {
        match self.config.retry {
            Retry::Always => true,
            Retry::Never => false,
            Retry::Auto => self.unvalidated.load(Ordering::Relaxed) >= self.config.retry_threshold,
        }
    }

    fn count(&self, decision: &str) {
        self.decisions.with_label_values(&[decision]).inc();
    }

    fn handshake_over(&self) {
        self.unvalidated.fetch_sub(1, Ordering::Relaxed);
        self.unvalidated_gauge.dec();
    }
}

/// One admitted connection's place in the counts, given back on drop.
pub(super) struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
    unvalidated: bool,
}

impl Slot {
    /// The handshake finished (or failed): it no longer counts as unvalidated.
    pub(super) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.unvalidated) {
            self.limits.handshake_over();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        let mut map = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
