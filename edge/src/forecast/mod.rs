//! Traffic forecast: per pool, the request rate counted per bucket of
//! `forecast.interval`, a bounded history of it, AutoETS refitted every
//! `refit_every` buckets on the blocking pool (`fit`), and what the forecast
//! means (`plan`): a scale recommendation and connections opened ahead of a
//! rise. Exports `proxy_forecast_*`.
//!
//! The request path's whole cost is one relaxed atomic add on the pool's
//! counter (`forward`); everything else runs in one task, off the request path.
//! Counters and histories are kept by pool name across reloads. Nothing here
//! may block the runtime: fits go to `spawn_blocking`, pre-warms to tasks of
//! their own.

mod fit;
mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use upstream::{Pool, ReqBody};

pub use fit::{forecast, FitError, History};
pub use plan::{plan, Plan, RISE_FLOOR_RPS};

use crate::config::Forecast as Settings;

/// The forecast's state, built once at start and kept across reloads.
pub struct Forecast {
    cfg: Settings,
    /// Requests counted per pool name since the last bucket closed.
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    metrics: ForecastMetrics,
}

struct ForecastMetrics {
    forecast: GaugeVec,
    observed: GaugeVec,
    recommendation: IntGaugeVec,
    prewarmed: IntCounterVec,
    fits: IntCounterVec,
}

impl ForecastMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            forecast: GaugeVec::new(
                Opts::new(
                    "proxy_forecast_requests_per_second",
                    "Forecast request rate of a pool, horizon buckets (of forecast.interval) after the latest one.",
                ),
                &["pool", "horizon"],
            )?,
            observed: GaugeVec::new(
                Opts::new(
                    "proxy_forecast_observed_requests_per_second",
                    "Request rate of a pool in the latest complete bucket (what the forecast is measured against).",
                ),
                &["pool"],
            )?,
            recommendation: IntGaugeVec::new(
                Opts::new(
                    "proxy_forecast_scale_recommendation",
                    "Endpoints a pool should have for its forecast peak: ceil(max(current, peak over the horizons) / forecast.endpoint_rps), at least 1.",
                ),
                &["pool"],
            )?,
            prewarmed: IntCounterVec::new(
                Opts::new(
                    "proxy_forecast_prewarmed_connections_total",
                    "Upstream connections opened ahead of a forecast rise.",
                ),
                &["pool"],
            )?,
            fits: IntCounterVec::new(
                Opts::new(
                    "proxy_forecast_fits_total",
                    "Model fits by result (ok; error: no model fitted, the last forecast is read on).",
                ),
                &["pool", "result"],
            )?,
        };
        registry.register(Box::new(m.forecast.clone()))?;
        registry.register(Box::new(m.observed.clone()))?;
        registry.register(Box::new(m.recommendation.clone()))?;
        registry.register(Box::new(m.prewarmed.clone()))?;
        registry.register(Box::new(m.fits.clone()))?;
        Ok(m)
    }

    /// Drops a pool's series (it left the config).
    fn forget(&self, pool: &str, horizons: usize) {
        let _ = self.observed.remove_label_values(&[pool]);
        let _ = self.recommendation.remove_label_values(&[pool]);
        for h in 1..=horizons {
            let _ = self.forecast.remove_label_values(&[pool, &h.to_string()]);
        }
    }
}

/// One pool's history and its latest fit.
struct Series {
    history: History,
    /// The last fit's forecast: `path[i]` is the bucket `i + 1` after the
    /// fit's last point (`refit_every + horizons` long).
    path: Vec<f64>,
    /// Buckets recorded since that fit (or since the series began).
    since_fit: usize,
    /// A pre-warm of this pool is under way.
    warming: Arc<AtomicBool>,
}

impl Series {
    fn new(cfg: &Settings) -> Self {
        Self {
            history: History::new(cfg.history),
            path: Vec::new(),
            since_fit: 0,
            warming: Arc::default(),
        }
    }

    fn record(&mut self, rate: f64) {
        self.history.push(rate);
        self.since_fit += 1;
    }

    /// Whether to fit now: none yet (with enough history) or `refit_every`
    /// buckets since the last.
    fn fit_due(&self, cfg: &Settings) -> bool {
        self.history.len() >= crate::config::FORECAST_MIN_HISTORY
            && (self.path.is_empty() || self.since_fit >= cfg.refit_every)
    }

    fn fitted(&mut self, path: Vec<f64>) {
        self.path = path;
        self.since_fit = 0;
    }

    /// The forecast for the `horizons` buckets after the latest one, read from
    /// the last fit; `None` before a fit or once the fit is too old to cover it.
    fn window(&self, horizons: usize) -> Option<&[f64]> {
        self.path.get(self.since_fit..self.since_fit + horizons)
    }
}

impl Forecast {
    pub fn new(cfg: &Settings, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            counters: Mutex::default(),
            metrics: ForecastMetrics::new(registry)?,
        }))
    }

    /// The counter requests to `pool` add one to (relaxed), the same one for
    /// the same name across reloads.
    pub fn counter(&self, pool: &str) -> Arc<AtomicU64> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.entry(pool.to_owned()).or_default().clone()
    }

    /// Closes a bucket every `interval`, refits when due and acts on the
    /// forecast, until `stop`. `pools` gives the current config's pools.
    pub async fn run<B, F>(self: Arc<Self>, pools: F, stop: CancellationToken)
    where
        B: ReqBody,
        F: Fn() -> Vec<Arc<Pool<B>>>,
    {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last = tokio::time::Instant::now();
        let mut series: HashMap<String, Series> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let now = tokio::time::Instant::now();
            // The bucket's true length: a late tick must not read as a surge.
            let secs = now.duration_since(last).as_secs_f64().max(1e-3);
            last = now;
            let pools = pools();
            self.close_bucket(&pools, &mut series, secs);
            self.refit(&mut series).await;
            for pool in &pools {
                if let Some(s) = series.get(pool.name()) {
                    self.act(pool, s);
                }
            }
        }
    }

    /// Records every pool's bucket and forgets pools no longer configured.
    fn close_bucket<B: ReqBody>(
        &self,
        pools: &[Arc<Pool<B>>],
        series: &mut HashMap<String, Series>,
        secs: f64,
    ) {
        for pool in pools {
            let count = self.counter(pool.name()).swap(0, Ordering::Relaxed);
            let s = series
                .entry(pool.name().to_owned())
                .or_insert_with(|| Series::new(&self.cfg));
            s.record(count as f64 / secs);
        }
        series.retain(|name, _| {
            let kept = pools.iter().any(|p| p.name() == name);
            if !kept {
                self.metrics.forget(name, self.cfg.horizons);
            }
            kept
        });
    }

    /// Fits every series that is due, together on the blocking pool.
    async fn refit(&self, series: &mut HashMap<String, Series>) {
        let steps = self.cfg.refit_every + self.cfg.horizons;
        let due: Vec<(String, Vec<f64>)> = series
            .iter()
            .filter(|(_, s)| s.fit_due(&self.cfg))
            .map(|(name, s)| (name.clone(), s.history.to_vec()))
            .collect();
        if due.is_empty() {
            return;
        }
        let fitted = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(name, h)| (name, forecast(&h, steps)))
                .collect::<Vec<_>>()
        })
        .await;
        let fitted = match fitted {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "forecast fit task failed");
                return;
            }
        };
        for (name, result) in fitted {
            let Some(s) = series.get_mut(&name) else {
                continue;
            };
            match result {
                Ok(path) => {
                    s.fitted(path);
                    self.metrics.fits.with_label_values(&[&name, "ok"]).inc();
                }
                Err(e) => {
                    tracing::debug!(pool = %name, error = %e, "forecast: no fit");
                    self.metrics.fits.with_label_values(&[&name, "error"]).inc();
                }
            }
        }
    }

    /// Publishes a pool's forecast and recommendation and starts a pre-warm
    /// when a rise is coming (one at a time per pool).
    fn act<B: ReqBody>(&self, pool: &Arc<Pool<B>>, s: &Series) {
        let name = pool.name();
        let current = s.history.last();
        self.metrics
            .observed
            .with_label_values(&[name])
            .set(current);
        let Some(window) = s.window(self.cfg.horizons) else {
            return;
        };
        for (h, rate) in window.iter().enumerate() {
            let horizon = (h + 1).to_string();
            self.metrics
                .forecast
                .with_label_values(&[name, &horizon])
                .set(*rate);
        }
        let decided = plan(&self.cfg, current, window, pool.endpoint_count());
        if let Some(n) = decided.recommendation {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics
                .recommendation
                .with_label_values(&[name])
                .set(n);
        }
        let Some(per_endpoint) = decided.prewarm else {
            return;
        };
        if s.warming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, warming) = (pool.clone(), s.warming.clone());
        let counter = self.metrics.prewarmed.with_label_values(&[name]);
        tokio::spawn(async move {
            let opened = pool.prewarm(per_endpoint).await;
            if opened > 0 {
                tracing::debug!(pool = %pool.name(), opened, per_endpoint, "forecast rise: pre-warmed connections");
                counter.inc_by(opened as u64);
            }
            warming.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            horizons: 2,
            refit_every: 3,
            ..Settings::default()
        }
    }

    #[test]
    fn a_series_is_fitted_once_it_has_history_then_every_refit_every_buckets() {
        let cfg = settings();
        let mut s = Series::new(&cfg);
        for _ in 0..crate::config::FORECAST_MIN_HISTORY - 1 {
            s.record(1.0);
            assert!(!s.fit_due(&cfg));
        }
        s.record(1.0);
        assert!(s.fit_due(&cfg));
        s.fitted(vec![10.0, 11.0, 12.0, 13.0, 14.0]);
        for _ in 0..2 {
            s.record(1.0);
            assert!(!s.fit_due(&cfg));
        }
        s.record(1.0);
        assert!(s.fit_due(&cfg));
    }

    #[test]
    fn between_fits_the_window_reads_further_along_the_last_forecast() {
        let cfg = settings();
        let mut s = Series::new(&cfg);
        assert_eq!(s.window(2), None);
        s.fitted(vec![10.0, 11.0, 12.0, 13.0, 14.0]);
        assert_eq!(s.window(2), Some(&[10.0, 11.0][..]));
        s.record(9.0);
        assert_eq!(s.window(2), Some(&[11.0, 12.0][..]));
        s.record(9.0);
        s.record(9.0);
        assert_eq!(s.window(2), Some(&[13.0, 14.0][..]));
        // A fit that failed leaves a forecast too old to cover the horizons.
        s.record(9.0);
        assert_eq!(s.window(2), None);
    }

    #[test]
    fn counters_are_one_per_pool_name() {
        let f = Forecast::new(&settings(), &Registry::new()).expect("registers");
        let a = f.counter("a");
        a.fetch_add(2, Ordering::Relaxed);
        assert_eq!(f.counter("a").load(Ordering::Relaxed), 2);
        assert_eq!(f.counter("b").load(Ordering::Relaxed), 0);
    }
}
