//! Per-env episode bookkeeping: running return and length, reported when an episode ends.

/// One finished episode.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeStats {
    /// Index of the env within the batch.
    pub env: usize,
    /// Undiscounted sum of the raw (unnormalised) rewards.
    pub episode_return: f64,
    /// Number of steps.
    pub length: u64,
    /// Procgen level seed of the episode (None for other envs).
    pub level_seed: Option<i32>,
    /// Procgen: whether the level was completed (None for other envs).
    pub level_complete: Option<bool>,
}

/// Accumulates rewards per env; `record` is called once per step with that step's rewards
/// and `first` flags. gym3 semantics: the reward delivered together with `first = 1` is the
/// last reward of the episode that just ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpisodeTracker {
    returns: Vec<f64>,
    lengths: Vec<u64>,
    finished: Vec<EpisodeStats>,
}

impl EpisodeTracker {
    pub fn new(num_envs: usize) -> Self {
        Self {
            returns: vec![0.0; num_envs],
            lengths: vec![0; num_envs],
            finished: Vec::new(),
        }
    }

    /// Records one step. `prev_level` gives, per env, the seed and completion flag of the
    /// level played before this step (Procgen); pass `None` for envs without levels.
    pub fn record(&mut self, reward: &[f32], first: &[u8], prev_level: Option<(&[i32], &[u8])>) {
        self.finished.clear();
        for env in 0..self.returns.len() {
            self.returns[env] += f64::from(reward[env]);
            self.lengths[env] += 1;
            if first[env] != 0 {
                self.finished.push(EpisodeStats {
                    env,
                    episode_return: self.returns[env],
                    length: self.lengths[env],
                    level_seed: prev_level.map(|(seeds, _)| seeds[env]),
                    level_complete: prev_level.map(|(_, done)| done[env] != 0),
                });
                self.returns[env] = 0.0;
                self.lengths[env] = 0;
            }
        }
    }

    /// Episodes that ended on the last recorded step.
    pub fn finished(&self) -> &[EpisodeStats] {
        &self.finished
    }

    /// The tracker of `self`'s envs followed by `other`'s (renumbered after them): the
    /// inverse of [`EpisodeTracker::sub`].
    pub fn join(&self, other: &Self) -> Self {
        let offset = self.returns.len();
        Self {
            returns: [self.returns.as_slice(), &other.returns].concat(),
            lengths: [self.lengths.as_slice(), &other.lengths].concat(),
            finished: self
                .finished
                .iter()
                .copied()
                .chain(other.finished.iter().map(|e| EpisodeStats {
                    env: e.env + offset,
                    ..*e
                }))
                .collect(),
        }
    }

    /// The tracker of envs `range` alone, as a batch of their own (env `range.start` becomes
    /// env 0): their running returns and lengths, and the episodes they finished last step.
    pub fn sub(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            returns: self.returns[range.clone()].to_vec(),
            lengths: self.lengths[range.clone()].to_vec(),
            finished: self
                .finished
                .iter()
                .filter(|e| range.contains(&e.env))
                .map(|e| EpisodeStats {
                    env: e.env - range.start,
                    ..*e
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_reward_belongs_to_the_ended_episode() {
        let mut t = EpisodeTracker::new(2);
        t.record(&[1.0, 0.0], &[0, 0], None);
        t.record(&[10.0, 2.0], &[1, 0], None);
        assert_eq!(t.finished().len(), 1);
        assert_eq!(t.finished()[0].env, 0);
        assert_eq!(t.finished()[0].episode_return, 11.0);
        assert_eq!(t.finished()[0].length, 2);
        t.record(&[0.5, 0.0], &[0, 1], Some((&[7, 8], &[0, 1])));
        assert_eq!(t.finished()[0].env, 1);
        assert_eq!(t.finished()[0].episode_return, 2.0);
        assert_eq!(t.finished()[0].length, 3);
        assert_eq!(t.finished()[0].level_seed, Some(8));
        assert_eq!(t.finished()[0].level_complete, Some(true));
    }
}
