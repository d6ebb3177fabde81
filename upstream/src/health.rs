//! Active health checking: a pure record of probe outcomes per endpoint, and the
//! settings of the probe a pool sends. An endpoint goes unhealthy after
//! `unhealthy` failed probes in a row and healthy again after `healthy` good ones;
//! new endpoints start healthy, so a pool serves before its first round of probes.

use std::time::Duration;

/// How a pool probes its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path of the GET probe; a 2xx or 3xx answer is healthy.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Good probes in a row that make an unhealthy endpoint healthy.
    pub healthy: u32,
    /// Failed probes in a row that make a healthy endpoint unhealthy.
    pub unhealthy: u32,
}

impl HealthCheck {
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// One endpoint's probe history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    /// Probes in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, cfg: &HealthCheck) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { cfg.healthy } else { cfg.unhealthy };
        if self.streak < needed.max(1) {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_enough_probes_in_a_row() {
        let cfg = HealthCheck {
            healthy: 2,
            unhealthy: 3,
            ..HealthCheck::new("/healthz")
        };
        let mut h = Health::default();
        assert!(h.is_healthy(), "new endpoints start healthy");
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(true, &cfg), None, "a good probe resets the streak");
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(false, &cfg), None);
        assert_eq!(h.record(false, &cfg), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record(true, &cfg), None);
        assert_eq!(h.record(true, &cfg), Some(true));
        assert!(h.is_healthy());
    }
}
