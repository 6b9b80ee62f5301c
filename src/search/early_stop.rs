//! RobustDARTS's early stop (DARTS-ES; Zela et al., "Understanding and Robustifying
//! Differentiable Architecture Search", ICLR 2020, and the official code, automl/RobustDARTS
//! `src/utils.py` `EVLocalAvg`): track the dominant eigenvalue of the Hessian of the search
//! loss with respect to the alphas, average it over a local window, and stop when the current
//! window's average has grown past `1 / ratio` times the average `lag` measurements earlier;
//! the search then returns the architecture of the earlier window's centre, from before the
//! curvature grew (../shared/REFERENCE.md section 10).
//!
//! Departure from the official tracker: the official local average also covers partial
//! windows at the start of the search (from `ceil(window / 2)` values on); here only full
//! windows are compared, so the first decision comes after `window + lag` measurements.

use serde::{Deserialize, Serialize};

/// `[search.health.early_stop]`: RobustDARTS's stop rule, off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStopConfig {
    /// Stop the search by the rule below. Default false (the search runs its full budget).
    pub enabled: bool,
    /// Measurements in each local average. RobustDARTS: 5 (`--window`).
    pub window: usize,
    /// How many measurements earlier the compared window lies. RobustDARTS: 4 (`--delta`).
    pub lag: usize,
    /// Stop when `earlier_average < ratio * current_average`, i.e. the current average grew
    /// past `1 / ratio` times the earlier one. The paper: 0.75 (`lambda(i-k) / lambda(i) <
    /// 0.75`); the official code's `--factor 1.3` is the same test as `current / earlier >
    /// 1.3`, i.e. ratio 1 / 1.3 = 0.769.
    pub ratio: f64,
    /// No stop before this iteration of the loop (the returned architecture's iteration must be
    /// at least this). RobustDARTS: epoch 10 of 50 (`--es_start_epoch`).
    pub start_iteration: u64,
}

impl Default for EarlyStopConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window: 5,
            lag: 4,
            ratio: 0.75,
            start_iteration: 0,
        }
    }
}

impl EarlyStopConfig {
    /// A clear error for settings the rule cannot use.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.lag == 0 {
            return Err(format!(
                "search.health.early_stop: window and lag must be at least 1, got {} and {}",
                self.window, self.lag
            ));
        }
        if !(self.ratio > 0.0 && self.ratio < 1.0) {
            return Err(format!(
                "search.health.early_stop.ratio must lie in (0, 1) (RobustDARTS: 0.75), got {}",
                self.ratio
            ));
        }
        Ok(())
    }
}

/// What [`robust_darts_stop`] decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopDecision {
    /// Index (into the series) of the measurement whose architecture the search returns: the
    /// centre of the earlier window.
    pub return_index: usize,
    /// Mean eigenvalue of the earlier and of the current window.
    pub earlier_mean: f64,
    pub current_mean: f64,
}

/// The rule on a series of `(iteration, eigenvalue)` measurements, oldest first: with `n` the
/// newest index, `w = window`, the current window is `n-w+1..=n` and the earlier one the same
/// `lag` measurements back; stop when both exist, the current mean is positive and
/// `earlier < ratio * current`, and the earlier window's centre (the architecture returned)
/// lies at or after `start_iteration`. Pure: series in, decision out.
pub fn robust_darts_stop(series: &[(u64, f64)], rule: &EarlyStopConfig) -> Option<StopDecision> {
    let (w, lag) = (rule.window, rule.lag);
    if w == 0 || series.len() < w + lag {
        return None;
    }
    let n = series.len() - 1;
    let mean = |end: usize| series[end + 1 - w..=end].iter().map(|p| p.1).sum::<f64>() / w as f64;
    let current_mean = mean(n);
    let earlier_end = n - lag;
    let earlier_mean = mean(earlier_end);
    // The centre of a window of w values ending at `end` (the official code dates a local
    // average at `epoch - floor(window / 2)` measurements).
    let return_index = earlier_end - w / 2;
    let grew = current_mean > 0.0 && earlier_mean < rule.ratio * current_mean;
    (grew && series[return_index].0 >= rule.start_iteration).then_some(StopDecision {
        return_index,
        earlier_mean,
        current_mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (10 * i as u64, v))
            .collect()
    }

    #[test]
    fn a_flat_series_never_stops() {
        let rule = EarlyStopConfig::default();
        let flat = series(&[1.0; 30]);
        for end in 1..=flat.len() {
            assert_eq!(robust_darts_stop(&flat[..end], &rule), None);
        }
    }

    /// 1 for 9 measurements, then 2: the first full current window whose mean passes
    /// 1 / 0.75 = 1.33 x the earlier one decides, and the architecture returned is the earlier
    /// window's centre.
    #[test]
    fn a_growing_eigenvalue_stops_and_returns_the_earlier_centre() {
        let rule = EarlyStopConfig::default();
        let mut values = vec![1.0; 9];
        values.extend([2.0; 6]);
        let s = series(&values);
        let first = (1..=s.len())
            .find_map(|end| robust_darts_stop(&s[..end], &rule).map(|d| (end, d)))
            .expect("the rule fires");
        // Newest index 10 (two 2.0s): current mean (3 + 4) / 5 = 1.4 > 1 / 0.75; index 9 gives
        // 1.2, below it.
        let (end, d) = first;
        assert_eq!(end - 1, 10);
        assert_eq!(d.earlier_mean, 1.0);
        assert!((d.current_mean - 1.4).abs() < 1e-12);
        // Earlier window 2..=6, centre 4.
        assert_eq!(d.return_index, 4);
    }

    #[test]
    fn too_short_series_and_late_start_do_not_stop() {
        let rule = EarlyStopConfig::default();
        let s = series(&[1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0]);
        assert_eq!(robust_darts_stop(&s, &rule), None, "8 < window + lag");
        let mut values = vec![1.0; 9];
        values.extend([5.0; 3]);
        let s = series(&values);
        assert!(robust_darts_stop(&s, &rule).is_some());
        let late = EarlyStopConfig {
            start_iteration: 1_000,
            ..rule.clone()
        };
        assert_eq!(robust_darts_stop(&s, &late), None);
    }

    /// A falling or negative eigenvalue is no reason to stop.
    #[test]
    fn shrinking_or_negative_curvature_does_not_stop() {
        let rule = EarlyStopConfig::default();
        let falling: Vec<f64> = (0..20).map(|i| 10.0 - 0.4 * i as f64).collect();
        assert_eq!(robust_darts_stop(&series(&falling), &rule), None);
        assert_eq!(robust_darts_stop(&series(&[-3.0; 20]), &rule), None);
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = EarlyStopConfig {
            ratio: 1.3,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("0.75"));
        assert!(EarlyStopConfig::default().validate().is_ok());
    }
}
