//! Reward scaling by the running standard deviation of the discounted return, as gym's
//! `NormalizeReward` wrapper (gym 0.23) followed by a clip, which is what CleanRL's
//! `ppo_procgen.py` and the Procgen paper's baseline apply.

use serde::{Deserialize, Serialize};

/// Running mean and variance of a stream of batches (Chan et al.'s parallel update, as gym's
/// `RunningMeanStd`). Starts as one pseudo-sample of weight `count = 1e-4`, mean 0, var 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningMeanStd {
    pub mean: f64,
    /// Population variance.
    pub var: f64,
    pub count: f64,
}

impl Default for RunningMeanStd {
    fn default() -> Self {
        Self {
            mean: 0.0,
            var: 1.0,
            count: 1e-4,
        }
    }
}

impl RunningMeanStd {
    /// Merges one batch of samples.
    pub fn update(&mut self, batch: &[f64]) {
        if batch.is_empty() {
            return;
        }
        let batch_count = batch.len() as f64;
        let batch_mean = batch.iter().sum::<f64>() / batch_count;
        let batch_var = batch.iter().map(|x| (x - batch_mean).powi(2)).sum::<f64>() / batch_count;
        let delta = batch_mean - self.mean;
        let total = self.count + batch_count;
        let m2 = self.var * self.count
            + batch_var * batch_count
            + delta * delta * self.count * batch_count / total;
        self.mean += delta * batch_count / total;
        self.var = m2 / total;
        self.count = total;
    }
}

/// gym's `NormalizeReward(gamma)` + clip to `[-clip, clip]`, over `N` envs with gym3 `first`
/// flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardNormalizer {
    /// Discount of the tracked return: the agent's gamma (0.999 for Procgen).
    pub gamma: f64,
    /// Added to the variance before the square root (gym: 1e-8).
    pub epsilon: f64,
    /// Normalised rewards are clipped to `[-clip, clip]` (CleanRL / Procgen paper: 10).
    pub clip: f64,
    /// Per-env discounted return of the current episode.
    pub returns: Vec<f64>,
    /// Statistics of `returns`, one sample per env per step.
    pub return_rms: RunningMeanStd,
}

impl RewardNormalizer {
    pub fn new(num_envs: usize, gamma: f64, clip: f64) -> Self {
        Self {
            gamma,
            epsilon: 1e-8,
            clip,
            returns: vec![0.0; num_envs],
            return_rms: RunningMeanStd::default(),
        }
    }

    /// Normalises one step's rewards in place. `first[n] = 1` means the reward ended env
    /// `n`'s episode (gym3): it still counts into that episode's return, which is then reset,
    /// in the same order as gym's wrapper (accumulate, update statistics, scale, reset).
    pub fn normalize(&mut self, reward: &mut [f32], first: &[u8]) {
        for (ret, &r) in self.returns.iter_mut().zip(reward.iter()) {
            *ret = *ret * self.gamma + f64::from(r);
        }
        self.return_rms.update(&self.returns);
        let scale = (self.return_rms.var + self.epsilon).sqrt();
        for r in reward.iter_mut() {
            *r = (f64::from(*r) / scale).clamp(-self.clip, self.clip) as f32;
        }
        for (ret, &f) in self.returns.iter_mut().zip(first) {
            if f != 0 {
                *ret = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_naive_recomputation_from_all_returns() {
        let (n, steps, gamma) = (3usize, 200usize, 0.99);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut norm = RewardNormalizer::new(n, gamma, 10.0);
        // Naive: keep every discounted return ever seen; the variance is that of all of them
        // together with gym's prior pseudo-sample (weight 1e-4, mean 0, variance 1), computed
        // from raw moments: var = E[x^2] - E[x]^2 with E over the weighted samples.
        let mut seen: Vec<f64> = Vec::new();
        let mut returns = vec![0f64; n];
        for _ in 0..steps {
            let raw: Vec<f32> = (0..n).map(|_| rng.gen_range(-5.0..20.0)).collect();
            let first: Vec<u8> = (0..n).map(|_| u8::from(rng.gen_bool(0.05))).collect();
            let mut got = raw.clone();
            norm.normalize(&mut got, &first);
            for e in 0..n {
                returns[e] = returns[e] * gamma + f64::from(raw[e]);
            }
            seen.extend(&returns);
            let w = 1e-4 + seen.len() as f64;
            let mean = seen.iter().sum::<f64>() / w;
            let second = (1e-4 + seen.iter().map(|x| x * x).sum::<f64>()) / w;
            let std = (second - mean * mean + 1e-8).sqrt();
            for e in 0..n {
                let want = (f64::from(raw[e]) / std).clamp(-10.0, 10.0);
                assert!(
                    (f64::from(got[e]) - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{} vs {want}",
                    got[e]
                );
                if first[e] != 0 {
                    returns[e] = 0.0;
                }
            }
        }
        assert!((norm.return_rms.count - (1e-4 + (n * steps) as f64)).abs() < 1e-6);
    }

    #[test]
    fn clips_and_resets_at_episode_start() {
        let mut norm = RewardNormalizer::new(1, 0.9, 10.0);
        // First step: returns [1000], rms over {prior, 1000}: var ~= 1000^2 * 1e-4 (tiny
        // prior weight), so the reward scales to ~1000 / 10 = 100 and clips to 10.
        let mut r = [1000.0f32];
        norm.normalize(&mut r, &[1]);
        assert_eq!(r[0], 10.0);
        assert_eq!(norm.returns, [0.0]);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut norm = RewardNormalizer::new(2, 0.999, 10.0);
        norm.normalize(&mut [1.0, -2.0], &[0, 1]);
        let json = serde_json::to_string(&norm).unwrap();
        let back: RewardNormalizer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, norm);
    }
}
