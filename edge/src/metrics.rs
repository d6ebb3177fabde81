//! Prometheus metrics. Label names are part of the product: dashboards and alert
//! rules in ops/ use them.
//!
//! One file on purpose, for now: every series edge exports is defined here, so
//! a name or label clash shows in one place. It is long (past 1,000 lines); the
//! split, when it comes, is one module per family struct (`SlotMetrics`,
//! `EndpointMetrics`, `TunnelMetrics`, ...) under `metrics/`.

use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use upstream::PoolStatus;

/// The protocol a client spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    H3,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    connections: IntGaugeVec,
    parked: IntGauge,
    reloads: IntCounterVec,
    cert_expiry: IntGaugeVec,
    sticky: IntCounterVec,
    slots: SlotMetrics,
    endpoints: EndpointMetrics,
    regions: RegionMetrics,
    tunnels: TunnelMetrics,
    gray: GrayMetrics,
    handshakes: HandshakeMetrics,
    compression: CompressionMetrics,
}

/// Compressed responses, and bytes through the encoders, by encoding (one of
/// three), resolved once so a response costs no label lookup.
struct CompressionMetrics {
    /// Per encoding, in `Encoding::ALL` order: responses, then the tally.
    by: [(prometheus::IntCounter, crate::body::encode::Tally); 3],
}

impl CompressionMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let responses = IntCounterVec::new(
            Opts::new(
                "proxy_compressed_responses_total",
                "Responses edge compressed (a route's compress), by encoding.",
            ),
            &["encoding"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "proxy_compression_bytes_total",
                "Bytes through edge's encoders, by encoding and side (in: the origin's, out: sent compressed).",
            ),
            &["encoding", "side"],
        )?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        let by = crate::config::Encoding::ALL.map(|e| {
            let e = e.token();
            let tally = crate::body::encode::Tally {
                bytes_in: bytes.with_label_values(&[e, "in"]),
                bytes_out: bytes.with_label_values(&[e, "out"]),
            };
            (responses.with_label_values(&[e]), tally)
        });
        Ok(Self { by })
    }
}

/// Gray release: requests by route and version, canary rollbacks. Routes and
/// tags come from config, so the series are bounded by it.
struct GrayMetrics {
    requests: IntCounterVec,
    rollbacks: IntCounterVec,
    state: IntGaugeVec,
    step: IntGaugeVec,
    weight: IntGaugeVec,
}

impl GrayMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "proxy_route_version_requests_total",
                "Requests of split routes by route and the version (tag) they were sent to.",
            ),
            &["route", "version"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "proxy_canary_rollbacks_total",
                "Times the guard rolled a split route's canary back (its weight to 0).",
            ),
            &["route"],
        )?;
        let state = IntGaugeVec::new(
            Opts::new(
                "proxy_canary_state",
                "A guarded split route's canary: 0 serving, 1 rolled back (until the split changes).",
            ),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        let step = IntGaugeVec::new(
            Opts::new(
                "proxy_canary_step",
                "A split route's progressive step in effect, from 1 (0: below the first).",
            ),
            &["route"],
        )?;
        let weight = IntGaugeVec::new(
            Opts::new(
                "proxy_canary_weight",
                "A progressive split route's canary weight in effect, percent.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(step.clone()))?;
        registry.register(Box::new(weight.clone()))?;
        Ok(Self {
            requests,
            rollbacks,
            state,
            step,
            weight,
        })
    }
}

/// What a QUIC connection's path looked like when it ended (quinn's stats).
pub struct QuicPath {
    pub rtt: Duration,
    pub cwnd: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub congestion_events: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
}

/// TLS and QUIC handshakes that failed, and the path figures of QUIC
/// connections as they end.
struct HandshakeMetrics {
    failures: IntCounterVec,
    rtt: prometheus::Histogram,
    cwnd: prometheus::Histogram,
    packets: IntCounterVec,
    congestion: prometheus::IntCounter,
    datagrams: IntCounterVec,
    early_data: IntCounterVec,
}

impl HandshakeMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let failures = IntCounterVec::new(
            Opts::new(
                "proxy_handshake_failures_total",
                "Client handshakes that did not complete, by transport (tls, quic) and reason (timeout, eof, reset, no_shared_protocol, bad_certificate, alert, bad_message, peer_closed, transport, other).",
            ),
            &["transport", "reason"],
        )?;
        let rtt = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "proxy_quic_rtt_seconds",
                "Smoothed RTT of QUIC client connections, observed when each ends.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
            ]),
        )?;
        let cwnd = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "proxy_quic_cwnd_bytes",
                "Congestion window of QUIC client connections, observed when each ends.",
            )
            .buckets(prometheus::exponential_buckets(12_000.0, 2.0, 12)?),
        )?;
        let packets = IntCounterVec::new(
            Opts::new(
                "proxy_quic_packets_total",
                "Packets edge sent on QUIC client connections (result sent) and those declared lost (result lost), counted as connections end.",
            ),
            &["result"],
        )?;
        let congestion = prometheus::IntCounter::new(
            "proxy_quic_congestion_events_total",
            "Congestion events on QUIC client connections, counted as connections end.",
        )?;
        let datagrams = IntCounterVec::new(
            Opts::new(
                "proxy_quic_datagrams_total",
                "UDP datagrams of QUIC client connections by direction (in, out), counted as connections end.",
            ),
            &["direction"],
        )?;
        let early_data = IntCounterVec::new(
            Opts::new(
                "proxy_early_data_requests_total",
                "Requests that arrived in TLS 1.3 early data (0-RTT), by protocol (h1, h2, h3) and outcome (accepted: a safe method, passed on with Early-Data: 1; too_early: answered 425 by edge).",
            ),
            &["proto", "outcome"],
        )?;
        registry.register(Box::new(early_data.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(rtt.clone()))?;
        registry.register(Box::new(cwnd.clone()))?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(congestion.clone()))?;
        registry.register(Box::new(datagrams.clone()))?;
        Ok(Self {
            failures,
            rtt,
            cwnd,
            packets,
            congestion,
            datagrams,
            early_data,
        })
    }
}

/// HTTP/1.1 upgrades and the tunnels they open. The protocol label is one of
/// `upgrade.protocols`, so the series are bounded by config.
struct TunnelMetrics {
    upgrades: IntCounterVec,
    open: IntGaugeVec,
    closed: IntCounterVec,
    bytes: IntCounterVec,
}

impl TunnelMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let upgrades = IntCounterVec::new(
            Opts::new(
                "proxy_upgrades_total",
                "Upgrade requests (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT) by protocol and result: switched (the backend answered 101, a tunnel opened), declined (it answered otherwise; the connection stayed HTTP), failed (no answer: connect error, reset, timeout), refused (a 101 for a protocol that was not offered; 502).",
            ),
            &["protocol", "result"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "proxy_tunnels_open",
                "Upgraded connections (tunnels) open now, by protocol.",
            ),
            &["protocol"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "proxy_tunnels_closed_total",
                "Tunnels closed, by protocol and reason: closed (both sides closed), error (a read or write failed, or the upgrade never completed), idle (upgrade.idle_timeout with no byte either way), drain (the drain grace ran out).",
            ),
            &["protocol", "reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "proxy_tunnel_bytes_total",
                "Bytes carried by tunnels, by protocol and direction (upstream: client to backend; downstream: backend to client).",
            ),
            &["protocol", "direction"],
        )?;
        registry.register(Box::new(upgrades.clone()))?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(Self {
            upgrades,
            open,
            closed,
            bytes,
        })
    }
}

/// Connection slots, accept failures, write stalls and the overload guard.
struct SlotMetrics {
    accept_errors: IntCounterVec,
    refused: IntCounterVec,
    write_idle: IntCounterVec,
    /// 103 Early Hints passed on, by client protocol (h1, h2, h3 in order).
    early_hints: [prometheus::IntCounter; 3],
    h2_closes: IntCounterVec,
    h2_premature: prometheus::IntCounter,
    proxy_protocol: IntCounterVec,
    overload: IntGauge,
    shed: prometheus::IntCounter,
    rss: IntGauge,
    drain: IntGauge,
}

impl SlotMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "proxy_accept_errors_total",
                "Failed accepts on the client listeners, by reason (emfile, enfile, enobufs, enomem, other).",
            ),
            &["reason"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "proxy_connections_refused_total",
                "Client connections closed at accept, by reason (per_ip: the source is at client.max_connections_per_ip).",
            ),
            &["reason"],
        )?;
        let write_idle = IntCounterVec::new(
            Opts::new(
                "proxy_write_idle_timeouts_total",
                "Responses cut off because the client accepted no byte for client.write_idle_timeout, by protocol.",
            ),
            &["protocol"],
        )?;
        let early_hints = IntCounterVec::new(
            Opts::new(
                "proxy_early_hints_total",
                "103 Early Hints from backends passed on to clients, by protocol.",
            ),
            &["protocol"],
        )?;
        let h2_closes = IntCounterVec::new(
            Opts::new(
                "proxy_h2_connection_closes_total",
                "HTTP/2 client connections edge closed on a bound, by reason (preface_timeout, write_stall, goaway_grace, premature_resets).",
            ),
            &["reason"],
        )?;
        let proxy_protocol = IntCounterVec::new(
            Opts::new(
                "proxy_proxy_protocol_total",
                "PROXY protocol headers on the TCP listeners, by result (v1, v2, local: accepted; untrusted, missing, invalid, too_large, timeout: connection closed).",
            ),
            &["result"],
        )?;
        let h2_premature = prometheus::IntCounter::new(
            "proxy_h2_premature_resets_total",
            "HTTP/2 streams the client reset before their response was complete.",
        )?;
        let overload = IntGauge::new(
            "proxy_overload_active",
            "1 while RSS is past limits.memory_high: accepting is paused and idle connections are shed.",
        )?;
        let shed = prometheus::IntCounter::new(
            "proxy_overload_shed_total",
            "Idle client connections closed by the overload guard.",
        )?;
        let rss = IntGauge::new(
            "proxy_resident_memory_bytes",
            "RSS as the overload guard last read it (only with limits.memory_high set).",
        )?;
        let drain = IntGauge::new(
            "proxy_draining",
            "Shutdown phase: 0 serving, 1 withdrawn (/healthz 503 for drain.delay, traffic still served), 2 draining (listeners closed, connections finishing).",
        )?;
        registry.register(Box::new(drain.clone()))?;
        registry.register(Box::new(accept_errors.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(write_idle.clone()))?;
        registry.register(Box::new(early_hints.clone()))?;
        registry.register(Box::new(h2_closes.clone()))?;
        registry.register(Box::new(h2_premature.clone()))?;
        registry.register(Box::new(proxy_protocol.clone()))?;
        registry.register(Box::new(overload.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(rss.clone()))?;
        let early_hints =
            [Proto::H1, Proto::H2, Proto::H3].map(|p| early_hints.with_label_values(&[p.as_str()]));
        Ok(Self {
            accept_errors,
            refused,
            write_idle,
            early_hints,
            h2_closes,
            h2_premature,
            proxy_protocol,
            overload,
            shed,
            rss,
            drain,
        })
    }
}

/// Where regional pools send requests, and how far regions are. Labels are
/// configured region ids only, so the series are bounded by config.
struct RegionMetrics {
    requests: IntCounterVec,
    rtt: GaugeVec,
    samples: IntGaugeVec,
    distance: GaugeVec,
}

impl RegionMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "proxy_region_requests_total",
                "Requests a regional pool answered, by the client's region and the region that served it.",
            ),
            &["backend", "client_region", "region"],
        )?;
        let rtt = GaugeVec::new(
            Opts::new(
                "proxy_region_rtt_seconds",
                "Measured round trip from this edge to a region's endpoints (EWMA of health probes).",
            ),
            &["region"],
        )?;
        let samples = IntGaugeVec::new(
            Opts::new(
                "proxy_region_rtt_samples",
                "Health probes the measured round trip to a region rests on.",
            ),
            &["region"],
        )?;
        let distance = GaugeVec::new(
            Opts::new(
                "proxy_region_distance_seconds",
                "Distance from this edge's region in use for ordering: measured once trusted, else configured.",
            ),
            &["region"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rtt.clone()))?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(distance.clone()))?;
        Ok(Self {
            requests,
            rtt,
            samples,
            distance,
        })
    }
}

/// Pool and endpoint state, refreshed from the pools at each scrape.
struct EndpointMetrics {
    healthy: IntGaugeVec,
    breaker: IntGaugeVec,
    in_flight: IntGaugeVec,
    ewma: GaugeVec,
    retries: IntCounterVec,
    h3_fallbacks: IntCounterVec,
    budget_exhausted: IntCounterVec,
    hedges: IntCounterVec,
    dns_failures: IntGaugeVec,
    dns_age: GaugeVec,
    dns_lookups: IntCounterVec,
    ejections: IntCounterVec,
}

impl EndpointMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["backend", "endpoint"];
        let breaker = IntGaugeVec::new(
            Opts::new(
                "proxy_endpoint_breaker_state",
                "Circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            labels,
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "proxy_endpoint_in_flight",
                "Requests in flight to the endpoint.",
            ),
            labels,
        )?;
        let ewma = GaugeVec::new(
            Opts::new(
                "proxy_endpoint_latency_ewma_seconds",
                "Peak-EWMA response latency the balancer uses.",
            ),
            labels,
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "proxy_upstream_retries_total",
                "Requests tried again on another connection or endpoint.",
            ),
            &["backend"],
        )?;
        let h3_fallbacks = IntCounterVec::new(
            Opts::new(
                "proxy_upstream_h3_fallbacks_total",
                "Times QUIC to an endpoint of an h3 pool failed (handshake timeout, UDP blocked) while TCP worked, so its requests moved to TCP (h2) for 5 minutes.",
            ),
            &["backend"],
        )?;
        let budget_exhausted = IntCounterVec::new(
            Opts::new(
                "proxy_retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
            ),
            &["backend"],
        )?;
        let hedges = IntCounterVec::new(
            Opts::new(
                "proxy_hedges_total",
                "Hedges sent for slow tries, by outcome: won (answered first) or lost (cancelled or failed).",
            ),
            &["backend", "outcome"],
        )?;
        let dns_failures = IntGaugeVec::new(
            Opts::new(
                "proxy_dns_failures",
                "Consecutive failed DNS lookups of a DNS pool (0 while DNS answers).",
            ),
            &["backend"],
        )?;
        let dns_age = GaugeVec::new(
            Opts::new(
                "proxy_dns_last_success_age_seconds",
                "Age of a DNS pool's endpoint set: time since the last good answer.",
            ),
            &["backend"],
        )?;
        let healthy = IntGaugeVec::new(
            Opts::new(
                "proxy_endpoint_healthy",
                "Active health: 1 passing (or not checked), 0 failing.",
            ),
            labels,
        )?;
        let dns_lookups = IntCounterVec::new(
            Opts::new(
                "proxy_dns_lookups_total",
                "DNS lookups of a DNS pool, by result (ok, failed).",
            ),
            &["backend", "result"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "proxy_endpoint_ejections_total",
                "Times the endpoint's circuit breaker opened.",
            ),
            labels,
        )?;
        registry.register(Box::new(dns_lookups.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(healthy.clone()))?;
        registry.register(Box::new(dns_failures.clone()))?;
        registry.register(Box::new(dns_age.clone()))?;
        registry.register(Box::new(breaker.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(ewma.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(h3_fallbacks.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(hedges.clone()))?;
        Ok(Self {
            healthy,
            breaker,
            in_flight,
            ewma,
            retries,
            h3_fallbacks,
            budget_exhausted,
            hedges,
            dns_failures,
            dns_age,
            dns_lookups,
            ejections,
        })
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "proxy_build_info",
                "Always 1; the labels name the version and the commit edge was built from.",
            ),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("EDGE_COMMIT")])
            .set(1);
        registry.register(Box::new(build))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "proxy_requests_total",
                "Requests answered, by backend pool, client protocol (h1, h2, h3) and status.",
            ),
            &["backend", "protocol", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "proxy_request_duration_seconds",
                "Time from request head to response head, by client protocol and backend pool.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["protocol", "backend"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "proxy_open_connections",
                "Open client connections, by protocol.",
            ),
            &["protocol"],
        )?;
        let parked = IntGauge::new(
            "proxy_parked_connections",
            "Idle HTTP/1.1 client connections parked outside hyper (socket only).",
        )?;
        // Kinds are a fixed enum and each has one side: a bounded label set.
        let errors = IntCounterVec::new(
            Opts::new(
                "proxy_errors_total",
                "Requests edge answered with its own error, by kind and whose fault (client, upstream, local).",
            ),
            &["kind", "side"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(parked.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "proxy_config_reloads_total",
                "Config reloads by result (ok, refused).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "proxy_cert_expiry_timestamp_seconds",
                "When each serving certificate expires (notAfter, Unix time), by its file; alert on this minus time().",
            ),
            &["cert"],
        )?;
        registry.register(Box::new(cert_expiry.clone()))?;
        let sticky = IntCounterVec::new(
            Opts::new(
                "proxy_sticky_total",
                "Answers of sticky pools by what became of the user's pin: kept, moved (its endpoint could not take it), new, forged (a cookie edge did not sign), fallback (Redis away: hashed).",
            ),
            &["pool", "outcome"],
        )?;
        registry.register(Box::new(sticky.clone()))?;
        for p in [Proto::H1, Proto::H2, Proto::H3] {
            connections.with_label_values(&[p.as_str()]).set(0);
        }
        let slots = SlotMetrics::new(&registry)?;
        let endpoints = EndpointMetrics::new(&registry)?;
        let regions = RegionMetrics::new(&registry)?;
        let tunnels = TunnelMetrics::new(&registry)?;
        let gray = GrayMetrics::new(&registry)?;
        let handshakes = HandshakeMetrics::new(&registry)?;
        let compression = CompressionMetrics::new(&registry)?;
        Ok(Self {
            registry,
            requests,
            errors,
            duration,
            connections,
            parked,
            reloads,
            cert_expiry,
            sticky,
            slots,
            endpoints,
            regions,
            tunnels,
            gray,
            handshakes,
            compression,
        })
    }

    /// Counts a response compressed with `encoding`; its body counts its bytes
    /// in the tally returned.
    pub fn compressed(&self, encoding: crate::config::Encoding) -> crate::body::encode::Tally {
        let (responses, tally) = &self.compression.by[encoding as usize];
        responses.inc();
        tally.clone()
    }

    /// Counts an upgrade request's outcome (`result` is one of a fixed few).
    pub fn upgrade(&self, protocol: &str, result: &'static str) {
        self.tunnels
            .upgrades
            .with_label_values(&[protocol, result])
            .inc();
    }

    /// Counts a tunnel as open until the guard drops.
    pub fn tunnel_open(&self, protocol: &str) -> ConnGuard {
        let gauge = self.tunnels.open.with_label_values(&[protocol]);
        gauge.inc();
        ConnGuard { gauge }
    }

    /// Counts a closed tunnel (`reason` is one of a fixed few).
    pub fn tunnel_closed(&self, protocol: &str, reason: &'static str) {
        self.tunnels
            .closed
            .with_label_values(&[protocol, reason])
            .inc();
    }

    /// The byte counter of one direction of a protocol's tunnels.
    pub fn tunnel_bytes(&self, protocol: &str, direction: &'static str) -> prometheus::IntCounter {
        self.tunnels.bytes.with_label_values(&[protocol, direction])
    }

    pub fn observe(&self, proto: Proto, backend: &str, status: StatusCode, elapsed: Duration) {
        self.requests
            .with_label_values(&[backend, proto.as_str(), status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[proto.as_str(), backend])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an error answer by its kind and side.
    pub fn error(&self, kind: &str, side: &str) {
        self.errors.with_label_values(&[kind, side]).inc();
    }

    /// Counts a regional pool's answer by client region and serving region.
    pub fn region_request(&self, backend: &str, client_region: &str, region: &str) {
        self.regions
            .requests
            .with_label_values(&[backend, client_region, region])
            .inc();
    }

    /// Copies the regions' measured and effective distances into their series.
    pub fn refresh_regions(&self, regions: &[crate::locality::RegionStatus<'_>]) {
        let m = &self.regions;
        m.rtt.reset();
        m.samples.reset();
        m.distance.reset();
        for r in regions {
            if let Some((rtt, samples)) = r.measured {
                m.rtt.with_label_values(&[r.region]).set(rtt.as_secs_f64());
                m.samples
                    .with_label_values(&[r.region])
                    .set(i64::from(samples));
            }
            if let Some(d) = r.distance {
                m.distance
                    .with_label_values(&[r.region])
                    .set(d.as_secs_f64());
            }
        }
    }

    /// Counts a sticky pool's answer by what became of the pin.
    pub fn sticky(&self, pool: &str, outcome: &'static str) {
        self.sticky.with_label_values(&[pool, outcome]).inc();
    }

    /// Counts a split route's request by the version it went to.
    pub fn route_version(&self, route: &str, version: &str) {
        self.gray
            .requests
            .with_label_values(&[route, version])
            .inc();
    }

    /// Sets a guarded route's canary state (rolled back or not).
    pub fn canary_state(&self, route: &str, rolled_back: bool) {
        self.gray
            .state
            .with_label_values(&[route])
            .set(i64::from(rolled_back));
    }

    /// A progressive route's step in effect and its canary's weight.
    pub fn canary_step(&self, route: &str, step: usize, weight: u32) {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.gray.step.with_label_values(&[route]).set(step);
        self.gray
            .weight
            .with_label_values(&[route])
            .set(i64::from(weight));
    }

    /// Counts a rollback of a route's canary.
    pub fn canary_rollback(&self, route: &str) {
        self.gray.rollbacks.with_label_values(&[route]).inc();
        self.canary_state(route, true);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The serving certificates' expiry, replacing what was there (a reload may
    /// drop or rename certificates).
    pub fn cert_expiries(&self, expiries: &[(String, i64)]) {
        self.cert_expiry.reset();
        for (name, at) in expiries {
            self.cert_expiry.with_label_values(&[name]).set(*at);
        }
    }

    /// Counts a connection as open under `proto` until the guard drops.
    pub fn connection(&self, proto: Proto) -> ConnGuard {
        let gauge = self.connections.with_label_values(&[proto.as_str()]);
        gauge.inc();
        ConnGuard { gauge }
    }

    /// Counts a failed accept (`reason` is one of a fixed few).
    pub fn accept_error(&self, reason: &'static str) {
        self.slots.accept_errors.with_label_values(&[reason]).inc();
    }

    /// Counts a client connection closed at accept.
    pub fn connection_refused(&self, reason: &'static str) {
        self.slots.refused.with_label_values(&[reason]).inc();
    }

    /// Counts a response cut off because the client stopped reading.
    pub fn write_idle_timeout(&self, proto: Proto) {
        self.slots
            .write_idle
            .with_label_values(&[proto.as_str()])
            .inc();
    }

    /// The counter of 103 Early Hints passed on to `proto` clients (one per
    /// request that may get some: a clone, not a lookup).
    pub fn early_hints(&self, proto: Proto) -> prometheus::IntCounter {
        self.slots.early_hints[proto as usize].clone()
    }

    /// Counts a PROXY protocol header read (or refused) on a TCP listener.
    pub fn proxy_protocol(&self, result: &'static str) {
        self.slots.proxy_protocol.with_label_values(&[result]).inc();
    }

    /// Counts an HTTP/2 connection edge closed on a bound (`reason` is one of a fixed few).
    pub fn h2_connection_closed(&self, reason: &'static str) {
        self.slots.h2_closes.with_label_values(&[reason]).inc();
    }

    /// Counts HTTP/2 streams reset by the client before their response was complete.
    pub fn h2_premature_resets(&self, n: u64) {
        self.slots.h2_premature.inc_by(n);
    }

    pub fn set_overload(&self, active: bool) {
        self.slots.overload.set(i64::from(active));
    }

    /// Counts a client handshake that did not complete (`transport` tls or
    /// quic; `reason` one of a fixed few, see the metric's help).
    pub fn handshake_failed(&self, transport: &str, reason: &str) {
        self.handshakes
            .failures
            .with_label_values(&[transport, reason])
            .inc();
    }

    /// Counts a request that arrived in early data (`outcome`: accepted, too_early).
    pub fn early_data(&self, proto: Proto, outcome: &'static str) {
        self.handshakes
            .early_data
            .with_label_values(&[proto.as_str(), outcome])
            .inc();
    }

    /// Records a QUIC client connection's path figures as it ends.
    pub fn quic_connection_ended(&self, p: &QuicPath) {
        let h = &self.handshakes;
        h.rtt.observe(p.rtt.as_secs_f64());
        // Precision loss is irrelevant for a bucket.
        #[allow(clippy::cast_precision_loss)]
        h.cwnd.observe(p.cwnd as f64);
        h.packets
            .with_label_values(&["sent"])
            .inc_by(p.sent_packets);
        h.packets
            .with_label_values(&["lost"])
            .inc_by(p.lost_packets);
        h.congestion.inc_by(p.congestion_events);
        h.datagrams
            .with_label_values(&["in"])
            .inc_by(p.datagrams_in);
        h.datagrams
            .with_label_values(&["out"])
            .inc_by(p.datagrams_out);
    }

    /// The shutdown phase `proxy_draining` shows (0 serving, 1 withdrawn, 2 draining).
    pub fn set_drain_phase(&self, phase: i64) {
        self.slots.drain.set(phase);
    }

    pub fn overload_shed(&self, n: u64) {
        self.slots.shed.inc_by(n);
    }

    pub fn set_rss(&self, bytes: u64) {
        self.slots.rss.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts an HTTP/1.1 connection as parked until the guard drops.
    pub fn parked(&self) -> ConnGuard {
        self.parked.inc();
        ConnGuard {
            gauge: self.parked.clone(),
        }
    }

    /// Copies pools' state into the endpoint series (endpoints that left are dropped).
    /// Pool counters are carried over as increments, so they stay monotonic.
    pub fn refresh_pools<'a>(&self, pools: impl IntoIterator<Item = (&'a str, PoolStatus)>) {
        let m = &self.endpoints;
        m.healthy.reset();
        m.breaker.reset();
        m.in_flight.reset();
        m.ewma.reset();
        m.dns_failures.reset();
        m.dns_age.reset();
        for (pool, status) in pools {
            if let Some(dns) = &status.dns {
                let failures = i64::try_from(dns.failures).unwrap_or(i64::MAX);
                m.dns_failures.with_label_values(&[pool]).set(failures);
                m.dns_age
                    .with_label_values(&[pool])
                    .set(dns.last_success_age.as_secs_f64());
                let ok = dns.lookups.saturating_sub(dns.failed_lookups);
                advance(&m.dns_lookups.with_label_values(&[pool, "ok"]), ok);
                advance(
                    &m.dns_lookups.with_label_values(&[pool, "failed"]),
                    dns.failed_lookups,
                );
            }
            for e in &status.endpoints {
                let labels = [pool, e.endpoint.as_str()];
                m.healthy
                    .with_label_values(&labels)
                    .set(i64::from(e.healthy));
                advance(&m.ejections.with_label_values(&labels), e.ejections);
                m.breaker
                    .with_label_values(&labels)
                    .set(e.breaker.as_gauge());
                m.in_flight
                    .with_label_values(&labels)
                    .set(i64::from(e.in_flight));
                m.ewma.with_label_values(&labels).set(e.ewma.as_secs_f64());
            }
            advance(&m.retries.with_label_values(&[pool]), status.retries);
            if status.h3_fallbacks > 0 {
                advance(
                    &m.h3_fallbacks.with_label_values(&[pool]),
                    status.h3_fallbacks,
                );
            }
            advance(
                &m.budget_exhausted.with_label_values(&[pool]),
                status.budget_exhausted,
            );
            if status.hedges_won + status.hedges_lost > 0 {
                advance(
                    &m.hedges.with_label_values(&[pool, "won"]),
                    status.hedges_won,
                );
                advance(
                    &m.hedges.with_label_values(&[pool, "lost"]),
                    status.hedges_lost,
                );
            }
        }
    }

    /// The text exposition format.
    /// The registry, for components that register their own series (the cache).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Moves a Prometheus counter up to a total kept elsewhere; never down, so a pool
/// rebuilt by a reload (its totals back at zero) leaves the series monotonic.
fn advance(counter: &prometheus::IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

pub struct ConnGuard {
    gauge: IntGauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_requests_by_backend_and_status_and_connections_by_protocol() {
        let m = Metrics::new().expect("metrics");
        m.observe(Proto::H2, "api", StatusCode::OK, Duration::from_millis(3));
        m.observe(Proto::H2, "api", StatusCode::OK, Duration::from_millis(3));
        let c = m.connection(Proto::H3);
        let text = String::from_utf8(m.encode()).expect("utf-8");
        assert!(
            text.contains("proxy_requests_total{backend=\"api\",protocol=\"h2\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "proxy_request_duration_seconds_count{backend=\"api\",protocol=\"h2\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("proxy_open_connections{protocol=\"h3\"} 1"),
            "{text}"
        );
        drop(c);
        let text = String::from_utf8(m.encode()).expect("utf-8");
        assert!(
            text.contains("proxy_open_connections{protocol=\"h3\"} 0"),
            "{text}"
        );
    }
}
