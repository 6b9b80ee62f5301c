//! Batched, auto-resetting environments behind one trait (gym3's observe/act model):
//! the real Procgen games through their C library, and gym-rs classic control.

pub mod episodes;
pub mod error;
pub mod gym;
pub mod procgen;
pub mod split;

pub use episodes::{EpisodeStats, EpisodeTracker};
pub use error::EnvError;
pub use split::SplitVecEnv;

use tch::Tensor;

/// What a policy needs to know about an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSpec {
    /// Name as given on the command line, e.g. `coinrun` or `cartpole`.
    pub name: String,
    pub num_envs: usize,
    /// Shape of one observation, without the batch dimension: `[64, 64, 3]` (HWC) for
    /// Procgen, `[4]` for CartPole.
    pub obs_shape: Vec<i64>,
    /// `Uint8` for images (divide by 255 in the encoder), `Float` for state vectors.
    pub obs_kind: tch::Kind,
    /// Discrete actions `0..num_actions`.
    pub num_actions: i64,
}

/// Per-level facts reported by Procgen after each step (empty slices for other envs).
#[derive(Debug, Clone, Copy, Default)]
pub struct LevelInfo<'a> {
    /// Seed of the level each env is in now.
    pub level_seed: &'a [i32],
    /// Seed of the level each env was in before this step (differs when `first` is set).
    pub prev_level_seed: &'a [i32],
    /// 1 where the episode that just ended completed its level.
    pub prev_level_complete: &'a [u8],
}

/// A borrowed view of the latest transition. Borrowed because the buffers are reused by
/// the next step: copy what you keep.
#[derive(Debug)]
pub struct StepView<'a> {
    /// `[N, ..obs_shape]`, kind `EnvSpec::obs_kind`, on the CPU.
    pub obs: &'a Tensor,
    /// `[N]` reward of the last step (the final reward of an episode arrives with `first`).
    pub reward: &'a [f32],
    /// `[N]` 1 where `obs` is the first observation of a new episode.
    pub first: &'a [u8],
    /// Episodes that ended on the last step.
    pub finished: &'a [EpisodeStats],
    pub level: LevelInfo<'a>,
}

/// A batch of `N` environments that reset themselves when an episode ends.
///
/// `Send` so that a vec-env can be stepped on another thread than the one that built it; not
/// `Sync`: one caller steps it at a time.
pub trait VecEnv: Send {
    fn spec(&self) -> &EnvSpec;

    /// The current state without stepping (after construction: the first observations,
    /// `first` all ones, no reward).
    fn observe(&self) -> StepView<'_>;

    /// Applies one action per env (`actions.len() == num_envs`, each in `0..num_actions`)
    /// and returns the resulting transition.
    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError>;

    /// Everything needed to continue exactly from here (game states, RNGs, running episode
    /// returns), as opaque bytes for a checkpoint.
    fn save_state(&self) -> Result<Vec<u8>, EnvError>;

    /// Restores a `save_state` of an env built with the same name, size and options.
    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError>;

    /// Human-view frames of the last step, `[N, H, W, 3]` u8, where the env renders them
    /// (Procgen with `render_human`); None otherwise.
    fn render_frames(&self) -> Option<&Tensor> {
        None
    }

    /// Moves the observation buffer the env writes into page-locked (pinned) host memory, so
    /// that a non-blocking copy takes it to `device` by DMA, with no staging copy and no wait
    /// (CUDA only). Idempotent. True where the observations now live in pinned memory; the
    /// default keeps them where they are (false).
    fn pin_observations(&mut self, _device: tch::Device) -> Result<bool, EnvError> {
        Ok(false)
    }

    /// The batch as two halves that can be stepped separately, envs `0..k` and `k..N`
    /// ([`SplitVecEnv`]); `None` (the default) for a batch that steps as one. Whoever steps
    /// the halves calls [`VecEnv::gather_halves`] before the batch is observed or stepped as a
    /// whole again.
    fn halves(&mut self) -> Option<(&mut dyn VecEnv, &mut dyn VecEnv)> {
        None
    }

    /// After the halves were stepped on their own: brings the whole batch's view up to date.
    fn gather_halves(&mut self) {}
}

/// The environments this build knows, for `--env` and error messages.
pub fn all_env_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = procgen::GAMES.iter().map(|g| g.name).collect();
    names.extend(gym::GYM_ENVS);
    names
}

/// Checks an action batch against the spec before it reaches an environment.
pub fn check_actions(spec: &EnvSpec, actions: &[i64]) -> Result<(), EnvError> {
    if actions.len() != spec.num_envs {
        return Err(EnvError::ActionCount {
            expected: spec.num_envs,
            got: actions.len(),
        });
    }
    if let Some((env, &action)) = actions
        .iter()
        .enumerate()
        .find(|(_, &a)| a < 0 || a >= spec.num_actions)
    {
        return Err(EnvError::ActionOutOfRange {
            env,
            action,
            num_actions: spec.num_actions,
        });
    }
    Ok(())
}

/// Builds any known environment by name: a Procgen game (with `procgen` options; its
/// `rand_seed` defaults to `seed`) or a gym-rs env (seeded by `seed`).
pub fn make_vec_env(
    name: &str,
    num_envs: usize,
    seed: u64,
    procgen: &procgen::ProcgenOptions,
) -> Result<Box<dyn VecEnv>, EnvError> {
    if gym::GYM_ENVS.contains(&name) {
        let kind = gym::GymEnvKind::from_name(name)?;
        return Ok(Box::new(gym::GymVecEnv::new(kind, num_envs, seed)?));
    }
    Ok(Box::new(procgen::ProcgenVecEnv::new(
        name,
        num_envs,
        procgen_options_for_seed(procgen, seed),
    )?))
}

/// `procgen` with its `rand_seed` defaulting to `seed`, as [`make_vec_env`] builds Procgen
/// games.
pub fn procgen_options_for_seed(
    procgen: &procgen::ProcgenOptions,
    seed: u64,
) -> procgen::ProcgenOptions {
    let mut options = procgen.clone();
    if options.rand_seed.is_none() {
        // Procgen seeds are non-negative int32.
        options.rand_seed = Some((seed % (i32::MAX as u64)) as i32);
    }
    options
}
