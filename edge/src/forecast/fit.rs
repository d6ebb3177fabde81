//! The model: a bounded history of per-bucket request rates, and AutoETS
//! (augurs) fitted on it to read the next buckets. Runs on the blocking pool;
//! nothing here touches the runtime.
//!
//! Non-seasonal ETS (error and trend chosen by AICc, damped or not): it follows
//! a daily curve a step or a few ahead from its level and slope. A seasonal
//! model (MSTL over ETS) needs two whole seasons of history (two days at 1m
//! buckets) before it says anything, and augurs' ETS has no seasonal form of
//! its own; it is the next step if short-horizon tracking proves too coarse.

use std::collections::VecDeque;

use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;

use crate::config::FORECAST_MIN_HISTORY;

/// The last `cap` buckets' rates (requests a second), oldest first.
#[derive(Clone, Debug)]
pub struct History {
    points: VecDeque<f64>,
    cap: usize,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self {
            points: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Records one bucket's rate, dropping the oldest past the bound.
    pub fn push(&mut self, rate: f64) {
        if self.points.len() == self.cap {
            self.points.pop_front();
        }
        self.points.push_back(rate);
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The latest bucket's rate (0 before any).
    pub fn last(&self) -> f64 {
        self.points.back().copied().unwrap_or(0.0)
    }

    /// A copy for the blocking pool to fit on.
    pub fn to_vec(&self) -> Vec<f64> {
        self.points.iter().copied().collect()
    }
}

/// Why a fit gave no forecast.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Too few buckets yet.
    #[error("{have} buckets of history, {need} needed")]
    NotEnoughHistory { have: usize, need: usize },
    /// augurs found no model, or its forecast was not a number.
    #[error("no ETS model fits")]
    Model(#[source] augurs_ets::Error),
    #[error("the model forecast a value that is not a number")]
    NotANumber,
}

/// The rates of the `steps` buckets after the last one of `history`, never
/// below zero.
pub fn forecast(history: &[f64], steps: usize) -> Result<Vec<f64>, FitError> {
    if history.len() < FORECAST_MIN_HISTORY {
        return Err(FitError::NotEnoughHistory {
            have: history.len(),
            need: FORECAST_MIN_HISTORY,
        });
    }
    let (lo, hi) = history
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    // A flat series (an idle pool) has nothing to fit: ETS's likelihood is
    // degenerate on it, and the forecast is the level.
    if hi - lo < 1e-9 {
        return Ok(vec![hi; steps]);
    }
    let model = AutoETS::non_seasonal()
        .fit(history)
        .map_err(FitError::Model)?;
    let points = model.predict(steps, None).map_err(FitError::Model)?.point;
    if points.iter().any(|p| !p.is_finite()) {
        return Err(FitError::NotANumber);
    }
    Ok(points.into_iter().map(|p| p.max(0.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily curve: `per_day` buckets a day, between `lo` and `hi`.
    fn day(i: usize, per_day: usize, lo: f64, hi: f64) -> f64 {
        let phase = i as f64 / per_day as f64 * std::f64::consts::TAU;
        lo + (hi - lo) * (1.0 - phase.cos()) / 2.0
    }

    #[test]
    fn history_keeps_the_latest_points_within_its_bound() {
        let mut h = History::new(3);
        for v in 1..=5 {
            h.push(f64::from(v));
        }
        assert_eq!(h.to_vec(), vec![3.0, 4.0, 5.0]);
        assert_eq!(h.last(), 5.0);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn too_short_a_history_is_no_forecast() {
        let err = forecast(&[1.0; FORECAST_MIN_HISTORY - 1], 3).expect_err("too short");
        assert!(matches!(err, FitError::NotEnoughHistory { .. }), "{err}");
    }

    #[test]
    fn a_flat_history_forecasts_its_level() {
        assert_eq!(forecast(&[0.0; 20], 2).expect("flat"), vec![0.0, 0.0]);
        assert_eq!(forecast(&[7.0; 20], 2).expect("flat"), vec![7.0, 7.0]);
    }

    #[test]
    fn a_rising_history_forecasts_a_rise() {
        let h: Vec<f64> = (0..30).map(|i| 10.0 + 2.0 * f64::from(i)).collect();
        let f = forecast(&h, 3).expect("fits");
        assert!(f[0] > 66.0 && f[2] > f[0], "{f:?}");
    }

    /// One step ahead over a daily curve (32 buckets a day), refitted every
    /// bucket from the second day on: mean absolute percentage error under 10%.
    #[test]
    fn one_step_ahead_tracks_a_daily_curve() {
        let per_day = 32;
        let series: Vec<f64> = (0..3 * per_day)
            .map(|i| day(i, per_day, 40.0, 160.0))
            .collect();
        let mut errors = Vec::new();
        for end in per_day..series.len() - 1 {
            let f = forecast(&series[..end], 1).expect("fits");
            errors.push((f[0] - series[end]).abs() / series[end]);
        }
        let mape = errors.iter().sum::<f64>() / errors.len() as f64;
        assert!(mape < 0.10, "MAPE {mape}");
    }
}
