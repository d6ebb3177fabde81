//! `[forecast]`: per-pool request-rate forecasts, the scale recommendation
//! derived from them, and connections opened ahead of a forecast rise. Off
//! without the table.

use std::time::Duration;

use super::walk::{Cx, FromToml, Table};

/// Buckets (of `interval`) a forecast needs before the first fit.
pub const MIN_HISTORY: usize = 12;

/// `[forecast]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// One bucket of the per-pool request count: the rate is counted per
    /// bucket, and forecasts are made in steps of it.
    pub interval: Duration,
    /// Buckets kept per pool (the oldest is dropped); the model is fitted on them.
    pub history: usize,
    /// Buckets ahead each fit forecasts (`horizon` label 1..=horizons).
    pub horizons: usize,
    /// The model is fitted again every this many buckets; in between, the last
    /// fit's forecast is read further along.
    pub refit_every: usize,
    /// Requests a second one endpoint serves at most: the scale recommendation
    /// is the forecast peak over this. `None`: no recommendation exported.
    pub endpoint_rps: Option<f64>,
    /// Open upstream connections ahead of a forecast rise.
    pub prewarm: bool,
    /// A rise is the forecast peak at least this share above the current rate.
    pub prewarm_rise: f64,
    /// Requests a second one pooled connection is counted to carry, to size
    /// how many connections a rise needs.
    pub connection_rps: f64,
    /// Connections per endpoint a pre-warm keeps open at most.
    pub prewarm_max: usize,
}

impl Default for Forecast {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            history: 1440,
            horizons: 15,
            refit_every: 5,
            endpoint_rps: None,
            prewarm: true,
            prewarm_rise: 0.2,
            connection_rps: 50.0,
            prewarm_max: 16,
        }
    }
}

/// A whole number within a range, read with the range in the reason.
fn bounded(
    cx: &mut Cx<'_>,
    t: &mut Table<'_>,
    key: &'static str,
    d: usize,
    lo: usize,
    hi: usize,
) -> usize {
    match t.opt::<usize>(cx, key) {
        Some(v) if !(lo..=hi).contains(&v) => {
            let line = t.line_of(cx, key);
            cx.error(
                line,
                &t.path(key),
                format!("must be between {lo} and {hi}, found {v}"),
            );
            d
        }
        Some(v) => v,
        None => d,
    }
}

/// A finite number above zero.
struct PositiveF64(f64);

impl FromToml for PositiveF64 {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let n = f64::from_toml(v)?;
        if n.is_finite() && n > 0.0 {
            Ok(Self(n))
        } else {
            Err(format!("must be a number greater than zero, found {n}"))
        }
    }
}

pub(super) fn read_forecast(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Option<Forecast> {
    let mut t = root.table(cx, "forecast")?;
    let d = Forecast::default();
    let interval = match t.opt::<Duration>(cx, "interval") {
        Some(v) if v < Duration::from_millis(50) => {
            let line = t.line_of(cx, "interval");
            cx.error(
                line,
                &t.path("interval"),
                format!("must be at least 50ms, found {v:?}"),
            );
            d.interval
        }
        Some(v) => v,
        None => d.interval,
    };
    let history = bounded(cx, &mut t, "history", d.history, MIN_HISTORY, 100_000);
    let horizons = bounded(cx, &mut t, "horizons", d.horizons, 1, 120);
    let refit_every = bounded(cx, &mut t, "refit_every", d.refit_every, 1, 10_000);
    let endpoint_rps = t.opt::<PositiveF64>(cx, "endpoint_rps").map(|v| v.0);
    let prewarm = t.or(cx, "prewarm", d.prewarm);
    let prewarm_rise = t
        .opt::<PositiveF64>(cx, "prewarm_rise")
        .map_or(d.prewarm_rise, |v| v.0);
    let connection_rps = t
        .opt::<PositiveF64>(cx, "connection_rps")
        .map_or(d.connection_rps, |v| v.0);
    let prewarm_max = bounded(cx, &mut t, "prewarm_max", d.prewarm_max, 1, 1024);
    t.finish(cx);
    Some(Forecast {
        interval,
        history,
        horizons,
        refit_every,
        endpoint_rps,
        prewarm,
        prewarm_rise,
        connection_rps,
        prewarm_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const POOL: &str = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";

    fn parse(forecast: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(&format!("{POOL}{forecast}"), "edge.toml", None)
    }

    #[test]
    fn off_without_the_table_and_defaults_with_an_empty_one() {
        assert_eq!(parse("").expect("valid").forecast, None);
        let c = parse("[forecast]\n").expect("valid");
        assert_eq!(c.forecast, Some(Forecast::default()));
    }

    #[test]
    fn reads_every_key() {
        let c = parse(
            "[forecast]\ninterval = \"200ms\"\nhistory = 300\nhorizons = 4\nrefit_every = 1\n\
             endpoint_rps = 50\nprewarm = false\nprewarm_rise = 0.5\nconnection_rps = 20.5\nprewarm_max = 3\n",
        )
        .expect("valid");
        let f = c.forecast.expect("on");
        assert_eq!(f.interval, Duration::from_millis(200));
        assert_eq!((f.history, f.horizons, f.refit_every), (300, 4, 1));
        assert_eq!(f.endpoint_rps, Some(50.0));
        assert!(!f.prewarm);
        assert_eq!(
            (f.prewarm_rise, f.connection_rps, f.prewarm_max),
            (0.5, 20.5, 3)
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_key_and_reason() {
        let cases = [
            ("interval = \"10ms\"", "forecast.interval", "at least 50ms"),
            (
                "interval = \"soon\"",
                "forecast.interval",
                "invalid duration",
            ),
            ("history = 5", "forecast.history", "between 12 and"),
            ("horizons = 0", "forecast.horizons", "between 1 and"),
            ("refit_every = 0", "forecast.refit_every", "between 1 and"),
            (
                "endpoint_rps = 0",
                "forecast.endpoint_rps",
                "greater than zero",
            ),
            (
                "prewarm_rise = -1",
                "forecast.prewarm_rise",
                "greater than zero",
            ),
            (
                "connection_rps = \"many\"",
                "forecast.connection_rps",
                "expected a number",
            ),
            ("prewarm_max = 0", "forecast.prewarm_max", "between 1 and"),
            ("warm = true", "forecast.warm", ""),
        ];
        for (line, key, reason) in cases {
            let err = parse(&format!("[forecast]\n{line}\n")).expect_err(line);
            let found = err.errors.iter().find(|e| e.key == key);
            let e = found.unwrap_or_else(|| panic!("{line}: no error on {key}: {err}"));
            assert!(e.reason.contains(reason), "{line}: {}", e.reason);
            assert_eq!(e.line, 4, "{line}");
        }
    }
}
