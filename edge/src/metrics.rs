//! Prometheus metrics. Label names are part of the product: dashboards and alert
//! rules in ops/ use them.

use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

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
    duration: HistogramVec,
    connections: IntGaugeVec,
    reloads: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "proxy_requests_total",
                "Requests answered, by backend pool and status.",
            ),
            &["backend", "status"],
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "proxy_config_reloads_total",
                "Config reloads by result (ok, refused).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        for p in [Proto::H1, Proto::H2, Proto::H3] {
            connections.with_label_values(&[p.as_str()]).set(0);
        }
        Ok(Self {
            registry,
            requests,
            duration,
            connections,
            reloads,
        })
    }

    pub fn observe(&self, proto: Proto, backend: &str, status: StatusCode, elapsed: Duration) {
        self.requests
            .with_label_values(&[backend, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[proto.as_str(), backend])
            .observe(elapsed.as_secs_f64());
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Counts a connection as open under `proto` until the guard drops.
    pub fn connection(&self, proto: Proto) -> ConnGuard {
        let gauge = self.connections.with_label_values(&[proto.as_str()]);
        gauge.inc();
        ConnGuard { gauge }
    }

    /// The text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
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
            text.contains("proxy_requests_total{backend=\"api\",status=\"200\"} 2"),
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
