//! Splitting one Procgen batch into two, for stepping one half while the policy runs on the
//! other (`crate::envs::SplitVecEnv`).
//!
//! Procgen's `VecGame` seeds each game's level generator from one generator seeded with
//! `rand_seed`, game after game, so two handles of `N / 2` envs made with the run's seed would
//! both replay the first half's levels. Instead the whole batch is made as usual and each game's
//! complete state (procgen's own serialisation: level generator, game RNG, entities, step
//! counters; what checkpoints restore) is copied into the handle of its half, together with
//! the buffers of the last transition and the episode counters. Each env then continues
//! exactly as it would have in the one handle.

use super::{sys, EnvError, ProcgenSnapshot, ProcgenVecEnv};

impl ProcgenVecEnv {
    /// `(envs 0..split, envs split..N)`, each a handle of its own in exactly the state these
    /// envs are in here. Needs `0 < split < N`.
    pub fn split_at(&self, split: usize) -> Result<(ProcgenVecEnv, ProcgenVecEnv), EnvError> {
        let n = self.spec.num_envs;
        if split == 0 || split >= n {
            return Err(EnvError::State(format!(
                "cannot split a batch of {n} envs at {split}"
            )));
        }
        Ok((self.copy_range(0..split)?, self.copy_range(split..n)?))
    }

    fn copy_range(&self, range: std::ops::Range<usize>) -> Result<ProcgenVecEnv, EnvError> {
        let mut half = ProcgenVecEnv::new(&self.spec.name, range.len(), self.options.clone())?;
        let fns = sys::state_fns()?;
        let mut buf = vec![0u8; sys::MAX_STATE_SIZE];
        for (i, env) in range.clone().enumerate() {
            let state = self.game_state(fns, env, &mut buf)?;
            half.set_game_state(fns, i, state);
        }
        // The last transition's buffers are refilled in place: their addresses are registered
        // with the C env.
        let (start, len) = (range.start as i64, range.len() as i64);
        half.obs.copy_(&self.obs.narrow(0, start, len));
        if let (Some(dst), Some(src)) = (&half.render, &self.render) {
            let mut dst = dst.shallow_clone();
            dst.copy_(&src.narrow(0, start, len));
        }
        half.reward.copy_from_slice(&self.reward[range.clone()]);
        half.first.copy_from_slice(&self.first[range.clone()]);
        half.level_seed
            .copy_from_slice(&self.level_seed[range.clone()]);
        half.prev_level_seed
            .copy_from_slice(&self.prev_level_seed[range.clone()]);
        half.prev_level_complete
            .copy_from_slice(&self.prev_level_complete[range.clone()]);
        half.tracker = self.tracker.sub(range);
        Ok(half)
    }
}

/// The state of envs `0..k` (`a`, a [`ProcgenVecEnv::save_state`]) and of envs `k..N` (`b`) as
/// the state of one batch of `N`: what a split batch saves, so that a checkpoint resumes with
/// or without the split.
pub(crate) fn join_states(a: &[u8], b: &[u8]) -> Result<Vec<u8>, EnvError> {
    let (a, b) = (decode(a)?, decode(b)?);
    if a.env != b.env {
        return Err(EnvError::State(format!(
            "cannot join states of {} and {}",
            a.env, b.env
        )));
    }
    let joined = ProcgenSnapshot {
        env: a.env,
        games: [a.games, b.games].concat(),
        tracker: a.tracker.join(&b.tracker),
        obs: [a.obs, b.obs].concat(),
        reward: [a.reward, b.reward].concat(),
        first: [a.first, b.first].concat(),
        level_seed: [a.level_seed, b.level_seed].concat(),
        prev_level_seed: [a.prev_level_seed, b.prev_level_seed].concat(),
        prev_level_complete: [a.prev_level_complete, b.prev_level_complete].concat(),
    };
    bincode::serialize(&joined).map_err(|e| EnvError::State(e.to_string()))
}

/// The inverse of [`join_states`]: the states of envs `0..k` and `k..N` of a batch's state.
pub(crate) fn split_state(state: &[u8], k: usize) -> Result<(Vec<u8>, Vec<u8>), EnvError> {
    let s = decode(state)?;
    let n = s.games.len();
    if k == 0 || k >= n || s.obs.len() % n != 0 {
        return Err(EnvError::State(format!(
            "cannot split the state of {n} envs at {k}"
        )));
    }
    let frame = s.obs.len() / n;
    let part = |r: std::ops::Range<usize>| ProcgenSnapshot {
        env: s.env.clone(),
        games: s.games[r.clone()].to_vec(),
        tracker: s.tracker.sub(r.clone()),
        obs: s.obs[r.start * frame..r.end * frame].to_vec(),
        reward: s.reward[r.clone()].to_vec(),
        first: s.first[r.clone()].to_vec(),
        level_seed: s.level_seed[r.clone()].to_vec(),
        prev_level_seed: s.prev_level_seed[r.clone()].to_vec(),
        prev_level_complete: s.prev_level_complete[r].to_vec(),
    };
    let encode =
        |p: ProcgenSnapshot| bincode::serialize(&p).map_err(|e| EnvError::State(e.to_string()));
    Ok((encode(part(0..k))?, encode(part(k..n))?))
}

fn decode(state: &[u8]) -> Result<ProcgenSnapshot, EnvError> {
    bincode::deserialize(state).map_err(|e| EnvError::State(format!("corrupt procgen state: {e}")))
}
