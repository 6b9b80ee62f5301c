//! Aggregate statistics across runs and tasks as rliable recommends (Agarwal et al. 2021,
//! "Deep Reinforcement Learning at the Edge of the Statistical Precipice"): the interquartile
//! mean (IQM) of all normalised scores, with a percentile confidence interval from a
//! stratified bootstrap (runs resampled with replacement within each task, tasks kept).
//!
//! Definitions follow the `rliable` package exactly so its numbers can be compared:
//! IQM is `scipy.stats.trim_mean(scores, 0.25, axis=None)` (cut `floor(0.25 n)` scores from
//! each end of the sorted flattened scores, no fractional weights), and the interval is the
//! percentile method of `arch`'s bootstrap (numpy's linear-interpolation percentile).
//! tests/sweep_stats.rs checks both against rliable itself.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mean; None for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Sample standard deviation (n - 1 in the denominator, as over seeds); 0 for one value.
pub fn std_dev(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    if values.len() < 2 {
        return Some(0.0);
    }
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

/// `scipy.stats.trim_mean(values, proportion)`: drop `floor(proportion * n)` values from each
/// end of the sorted values, average the rest. None for no values.
pub fn trim_mean(values: &[f64], proportion: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let cut = (proportion * sorted.len() as f64) as usize;
    mean(&sorted[cut..sorted.len() - cut])
}

/// Interquartile mean of every score of every task (rliable's `aggregate_iqm`).
pub fn iqm(scores_per_task: &[Vec<f64>]) -> Option<f64> {
    let all: Vec<f64> = scores_per_task.iter().flatten().copied().collect();
    trim_mean(&all, 0.25)
}

/// numpy's default (linear) percentile of sorted values, `q` in [0, 100].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A point estimate with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// `statistic` of `scores_per_task` with a `confidence` (e.g. 0.95) percentile interval from
/// `reps` stratified bootstrap resamples: each task's runs are drawn with replacement, as many
/// as it has, independently of the other tasks. Deterministic for a `seed`. None when a task
/// has no scores or there are none.
pub fn stratified_bootstrap(
    scores_per_task: &[Vec<f64>],
    statistic: impl Fn(&[Vec<f64>]) -> Option<f64>,
    reps: usize,
    confidence: f64,
    seed: u64,
) -> Option<Interval> {
    if scores_per_task.is_empty() || scores_per_task.iter().any(Vec::is_empty) || reps == 0 {
        return None;
    }
    let estimate = statistic(scores_per_task)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sample: Vec<Vec<f64>> = scores_per_task.iter().map(|t| vec![0.0; t.len()]).collect();
    let mut stats = Vec::with_capacity(reps);
    for _ in 0..reps {
        for (task, out) in scores_per_task.iter().zip(sample.iter_mut()) {
            for slot in out.iter_mut() {
                *slot = task[rng.gen_range(0..task.len())];
            }
        }
        stats.push(statistic(&sample)?);
    }
    stats.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0 * 100.0;
    Some(Interval {
        estimate,
        lower: percentile(&stats, tail),
        upper: percentile(&stats, 100.0 - tail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_mean_matches_scipy_by_hand() {
        // n = 8: floor(0.25 * 8) = 2 cut from each end -> mean(3, 4, 5, 6) = 4.5.
        assert_eq!(
            trim_mean(&[8., 1., 7., 2., 6., 3., 5., 4.], 0.25),
            Some(4.5)
        );
        // n = 6: floor(1.5) = 1 cut -> mean(2, 3, 4, 100) = 27.25 (scipy gives the same).
        assert_eq!(trim_mean(&[1., 2., 3., 4., 100., 1000.], 0.25), Some(27.25));
        // n = 3: nothing cut.
        assert_eq!(trim_mean(&[1., 2., 6.], 0.25), Some(3.0));
        assert_eq!(trim_mean(&[], 0.25), None);
    }

    #[test]
    fn std_is_the_sample_std() {
        // mean 2, squares 1 + 0 + 1 = 2, / (3 - 1) = 1.
        assert_eq!(std_dev(&[1., 2., 3.]), Some(1.0));
        assert_eq!(std_dev(&[5.]), Some(0.0));
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let x = [1., 2., 3., 4.];
        // np.percentile([1,2,3,4], [2.5, 50, 97.5]) = [1.075, 2.5, 3.925]
        assert!((percentile(&x, 2.5) - 1.075).abs() < 1e-12);
        assert!((percentile(&x, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&x, 97.5) - 3.925).abs() < 1e-12);
    }

    #[test]
    fn stratification_keeps_tasks_apart() {
        // Each task's runs agree, so any stratified resample is the data itself and the
        // interval collapses to the estimate. A bootstrap pooling runs across tasks would
        // mix 0s and 1s and widen it.
        let scores = vec![vec![0.0; 4], vec![1.0; 4], vec![0.5; 4]];
        let ci = stratified_bootstrap(&scores, iqm, 500, 0.95, 7).unwrap();
        assert_eq!(ci.lower, ci.estimate);
        assert_eq!(ci.upper, ci.estimate);
        // Spread within tasks widens it, and the same seed gives the same interval.
        let noisy = vec![vec![0.0, 0.2, 0.4], vec![0.6, 0.8, 1.0]];
        let a = stratified_bootstrap(&noisy, iqm, 2000, 0.95, 1).unwrap();
        assert!(a.lower < a.estimate && a.estimate < a.upper, "{a:?}");
        assert_eq!(a, stratified_bootstrap(&noisy, iqm, 2000, 0.95, 1).unwrap());
        assert!(stratified_bootstrap(&[vec![], vec![1.0]], iqm, 10, 0.95, 1).is_none());
    }
}
