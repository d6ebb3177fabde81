//! What a forecast means for a pool, decided without I/O: the scale
//! recommendation and whether (and how far) to pre-warm connections.

use crate::config::Forecast as Settings;

/// Below this many requests a second, a pool counts as this busy when a rise
/// is judged, so an idle pool's 0 → 0.3 is not a "rise" worth connections.
pub const RISE_FLOOR_RPS: f64 = 1.0;

/// The decisions drawn from one pool's forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Endpoints the pool should have for the coming peak (`endpoint_rps` set).
    pub recommendation: Option<u64>,
    /// Connections each endpoint should have open now (a rise is coming).
    pub prewarm: Option<usize>,
}

/// `current`: the latest bucket's rate; `forecast`: the next buckets' rates;
/// `endpoints`: the pool's endpoints now.
///
/// - recommendation: `ceil(max(current, forecast peak) / endpoint_rps)`, at
///   least 1 — the endpoint count that serves the coming peak at the
///   configured per-endpoint capacity.
/// - pre-warm: when the peak is at least `prewarm_rise` above the current rate
///   (floored at [`RISE_FLOOR_RPS`]), each endpoint should have
///   `ceil(peak / endpoints / connection_rps)` connections open, 1 to
///   `prewarm_max`.
pub fn plan(cfg: &Settings, current: f64, forecast: &[f64], endpoints: usize) -> Plan {
    let peak = forecast.iter().copied().fold(0.0, f64::max);
    let recommendation = cfg
        .endpoint_rps
        .map(|cap| (peak.max(current) / cap).ceil().max(1.0) as u64);
    let rising = peak >= current.max(RISE_FLOOR_RPS) * (1.0 + cfg.prewarm_rise);
    let prewarm = (cfg.prewarm && rising && endpoints > 0).then(|| {
        let per_endpoint = (peak / endpoints as f64 / cfg.connection_rps).ceil();
        (per_endpoint as usize).clamp(1, cfg.prewarm_max)
    });
    Plan {
        recommendation,
        prewarm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            endpoint_rps: Some(100.0),
            prewarm_rise: 0.2,
            connection_rps: 10.0,
            prewarm_max: 8,
            ..Settings::default()
        }
    }

    #[test]
    fn recommends_endpoints_for_the_forecast_peak() {
        let p = plan(&settings(), 120.0, &[150.0, 250.0, 180.0], 2);
        assert_eq!(p.recommendation, Some(3));
    }

    #[test]
    fn recommends_for_the_current_rate_when_it_is_above_the_forecast() {
        let p = plan(&settings(), 420.0, &[300.0, 200.0], 2);
        assert_eq!(p.recommendation, Some(5));
    }

    #[test]
    fn recommends_at_least_one_endpoint_and_none_without_a_capacity() {
        assert_eq!(plan(&settings(), 0.0, &[0.0], 1).recommendation, Some(1));
        let cfg = Settings {
            endpoint_rps: None,
            ..settings()
        };
        assert_eq!(plan(&cfg, 50.0, &[500.0], 1).recommendation, None);
    }

    #[test]
    fn prewarms_ahead_of_a_rise_sized_by_the_peak() {
        // 100 → 150 is a 50% rise: 150 rps over 2 endpoints at 10 rps a connection.
        let p = plan(&settings(), 100.0, &[110.0, 150.0], 2);
        assert_eq!(p.prewarm, Some(8));
        let p = plan(&settings(), 20.0, &[30.0, 50.0], 2);
        assert_eq!(p.prewarm, Some(3));
    }

    #[test]
    fn no_prewarm_on_a_flat_or_falling_forecast_or_below_the_threshold() {
        assert_eq!(plan(&settings(), 100.0, &[100.0, 95.0], 2).prewarm, None);
        assert_eq!(plan(&settings(), 100.0, &[119.0], 2).prewarm, None);
        assert_eq!(plan(&settings(), 100.0, &[60.0], 2).prewarm, None);
    }

    #[test]
    fn an_idle_pool_waking_slightly_is_not_a_rise() {
        assert_eq!(plan(&settings(), 0.0, &[0.5, 1.1], 1).prewarm, None);
        assert_eq!(plan(&settings(), 0.0, &[3.0], 1).prewarm, Some(1));
    }

    #[test]
    fn no_prewarm_when_switched_off_or_without_endpoints() {
        let off = Settings {
            prewarm: false,
            ..settings()
        };
        assert_eq!(plan(&off, 10.0, &[100.0], 1).prewarm, None);
        assert_eq!(plan(&settings(), 10.0, &[100.0], 0).prewarm, None);
    }
}
