//! How many clients move to HTTP/3 after edge advertised it: client addresses
//! that got an `Alt-Svc` answer over TCP are remembered (bounded, for the
//! advertisement's `ma`), and a QUIC connection from one of them counts as an
//! upgrade, once. `rate(proxy_h3_upgrades_total) /
//! rate(proxy_alt_svc_clients_total)` is the share of advertised clients that
//! came back over QUIC.

use std::net::IpAddr;
use std::time::Duration;

use prometheus::{IntCounter, Registry};

/// Client addresses remembered at most; past it the oldest are forgotten
/// (a forgotten client that upgrades is simply not counted).
const REMEMBERED: u64 = 100_000;

pub struct Upgrades {
    advertised: moka::sync::Cache<IpAddr, ()>,
    clients: IntCounter,
    answers: IntCounter,
    upgraded: IntCounter,
}

impl Upgrades {
    pub fn new(max_age: Duration, registry: &Registry) -> Result<Self, prometheus::Error> {
        let clients = IntCounter::new(
            "proxy_alt_svc_clients_total",
            "Client addresses that got an Alt-Svc (h3) answer over TCP and had none remembered.",
        )?;
        let answers = IntCounter::new(
            "proxy_alt_svc_advertised_total",
            "TCP answers that carried Alt-Svc (h3).",
        )?;
        let upgraded = IntCounter::new(
            "proxy_h3_upgrades_total",
            "QUIC connections from a client address that got Alt-Svc over TCP before (counted once per advertisement).",
        )?;
        registry.register(Box::new(clients.clone()))?;
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(upgraded.clone()))?;
        let advertised = moka::sync::Cache::builder()
            .max_capacity(REMEMBERED)
            .time_to_live(max_age.clamp(Duration::from_secs(1), Duration::from_secs(86_400)))
            .build();
        Ok(Self {
            advertised,
            clients,
            answers,
            upgraded,
        })
    }

    /// A TCP answer to `ip` carried Alt-Svc.
    pub fn advertised(&self, ip: IpAddr) {
        self.answers.inc();
        if !self.advertised.contains_key(&ip) {
            self.advertised.insert(ip, ());
            self.clients.inc();
        }
    }

    /// A QUIC connection from `ip` completed its handshake.
    pub fn arrived_over_quic(&self, ip: IpAddr) {
        if self.advertised.remove(&ip).is_some() {
            self.upgraded.inc();
        }
    }
}
