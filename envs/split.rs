//! A batch of envs held as two halves that can be stepped separately, for EnvPool-style
//! asynchronous stepping in the PPO rollout (`crate::agents::rollout_async`): one half steps
//! on another thread while the policy runs on the other half's frames.

use tch::Tensor;

use super::procgen::{ProcgenOptions, ProcgenVecEnv};
use super::{EnvError, EnvSpec, EpisodeStats, LevelInfo, StepView, VecEnv};

/// Procgen envs `0..split` in `halves.0`, `split..N` in `halves.1`, seen as one batch of `N`.
///
/// As a [`VecEnv`] it steps both halves one after the other and copies their transitions into
/// buffers of the whole batch; the asynchronous rollout steps the halves itself
/// ([`VecEnv::halves`]) and then calls [`VecEnv::gather_halves`] so that `observe` shows the
/// whole batch again.
pub struct SplitVecEnv {
    halves: (Box<dyn VecEnv>, Box<dyn VecEnv>),
    split: usize,
    spec: EnvSpec,
    obs: Tensor,
    reward: Vec<f32>,
    first: Vec<u8>,
    finished: Vec<EpisodeStats>,
    level_seed: Vec<i32>,
    prev_level_seed: Vec<i32>,
    prev_level_complete: Vec<u8>,
}

impl std::fmt::Debug for SplitVecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitVecEnv")
            .field("spec", &self.spec)
            .field("split", &self.split)
            .finish()
    }
}

impl SplitVecEnv {
    /// `num_envs` Procgen games, made exactly as [`ProcgenVecEnv::new`] makes them (same
    /// levels for every env), then split into `num_envs / 2` and the rest.
    pub fn procgen(
        env_name: &str,
        num_envs: usize,
        options: ProcgenOptions,
    ) -> Result<Self, EnvError> {
        if num_envs < 2 {
            return Err(EnvError::State(format!(
                "stepping envs asynchronously needs at least 2 envs, got {num_envs}"
            )));
        }
        let whole = ProcgenVecEnv::new(env_name, num_envs, options)?;
        let (a, b) = whole.split_at(num_envs / 2)?;
        Self::new(Box::new(a), Box::new(b))
    }

    /// Two batches of the same Procgen game as one (`a`'s envs first).
    fn new(a: Box<dyn VecEnv>, b: Box<dyn VecEnv>) -> Result<Self, EnvError> {
        let (sa, sb) = (a.spec().clone(), b.spec().clone());
        if sa.name != sb.name || sa.obs_shape != sb.obs_shape || sa.obs_kind != sb.obs_kind {
            return Err(EnvError::State(format!(
                "the two halves differ: {sa:?} and {sb:?}"
            )));
        }
        let n = sa.num_envs + sb.num_envs;
        let mut shape = vec![n as i64];
        shape.extend(&sa.obs_shape);
        let mut env = Self {
            split: sa.num_envs,
            spec: EnvSpec {
                num_envs: n,
                ..sa.clone()
            },
            obs: Tensor::zeros(shape.as_slice(), (sa.obs_kind, tch::Device::Cpu)),
            reward: vec![0.0; n],
            first: vec![0; n],
            finished: Vec::new(),
            level_seed: Vec::new(),
            prev_level_seed: Vec::new(),
            prev_level_complete: Vec::new(),
            halves: (a, b),
        };
        env.gather_halves();
        Ok(env)
    }

    fn view(&self) -> StepView<'_> {
        StepView {
            obs: &self.obs,
            reward: &self.reward,
            first: &self.first,
            finished: &self.finished,
            level: LevelInfo {
                level_seed: &self.level_seed,
                prev_level_seed: &self.prev_level_seed,
                prev_level_complete: &self.prev_level_complete,
            },
        }
    }
}

impl VecEnv for SplitVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn observe(&self) -> StepView<'_> {
        self.view()
    }

    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError> {
        super::check_actions(&self.spec, actions)?;
        self.halves.0.step(&actions[..self.split])?;
        self.halves.1.step(&actions[self.split..])?;
        self.gather_halves();
        Ok(self.view())
    }

    fn halves(&mut self) -> Option<(&mut dyn VecEnv, &mut dyn VecEnv)> {
        Some((self.halves.0.as_mut(), self.halves.1.as_mut()))
    }

    /// Copies the halves' last transitions into the whole batch's buffers (the second half's
    /// envs renumbered from `split`).
    fn gather_halves(&mut self) {
        let (a, b) = (self.halves.0.observe(), self.halves.1.observe());
        let (na, nb) = (
            self.split as i64,
            self.spec.num_envs as i64 - self.split as i64,
        );
        self.obs.narrow(0, 0, na).copy_(a.obs);
        self.obs.narrow(0, na, nb).copy_(b.obs);
        self.reward = [a.reward, b.reward].concat();
        self.first = [a.first, b.first].concat();
        self.finished = a.finished.to_vec();
        self.finished
            .extend(b.finished.iter().map(|e| EpisodeStats {
                env: e.env + self.split,
                ..*e
            }));
        self.level_seed = [a.level.level_seed, b.level.level_seed].concat();
        self.prev_level_seed = [a.level.prev_level_seed, b.level.prev_level_seed].concat();
        self.prev_level_complete =
            [a.level.prev_level_complete, b.level.prev_level_complete].concat();
    }

    /// The state of the whole batch, in the format of one [`ProcgenVecEnv`] of `N` envs, so
    /// that a checkpoint resumes with or without the split.
    fn save_state(&self) -> Result<Vec<u8>, EnvError> {
        super::procgen::split::join_states(
            &self.halves.0.save_state()?,
            &self.halves.1.save_state()?,
        )
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError> {
        let (a, b) = super::procgen::split::split_state(state, self.split)?;
        self.halves.0.load_state(&a)?;
        self.halves.1.load_state(&b)?;
        self.gather_halves();
        Ok(())
    }
}
