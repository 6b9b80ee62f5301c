//! The checkpoint cadence every loop of the train/ wing reads from `[checkpoint]`: the PPO
//! loop counts iterations, the supervised search and `train-arch` count epochs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[checkpoint]`: when a loop saves and how many saves it keeps. Defaults are the PPO loop's;
/// the supervised config sets its own (`every = 1` epoch, `keep = 2`) in its `Default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many units of the loop (PPO iterations; supervised epochs), and always
    /// at the end.
    pub every: u64,
    /// Also save after the first unit that ends this many minutes after the last save, so that
    /// a kill loses at most about this much work plus one unit. 0 turns it off.
    pub every_minutes: f64,
    /// Keep the newest this many checkpoints.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every: 10,
            every_minutes: 10.0,
            keep: 3,
        }
    }
}

impl CheckpointConfig {
    /// Whether a loop that has finished `done` units, `since_save` after its last save (or its
    /// start), saves now by the cadence alone (the end of a run and a stop request are the
    /// caller's to add).
    pub fn due(&self, done: u64, since_save: Duration) -> bool {
        done.is_multiple_of(self.every.max(1))
            || (self.every_minutes > 0.0 && since_save.as_secs_f64() >= self.every_minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_by_count_or_by_minutes() {
        let c = CheckpointConfig {
            every: 5,
            every_minutes: 2.0,
            keep: 2,
        };
        assert!(c.due(10, Duration::ZERO));
        assert!(!c.due(11, Duration::from_secs(119)));
        assert!(c.due(11, Duration::from_secs(120)));
        let off = CheckpointConfig {
            every_minutes: 0.0,
            ..c
        };
        assert!(!off.due(11, Duration::from_secs(1_000_000)));
        // every = 0 is read as 1, not as a division by zero.
        let zero = CheckpointConfig { every: 0, ..off };
        assert!(zero.due(3, Duration::ZERO));
    }
}
