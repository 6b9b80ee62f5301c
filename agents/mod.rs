//! PPO agents for batched environments: encoders, the actor-critic, rollout storage, GAE,
//! reward normalisation and one readable PPO update (PPO as in the Procgen paper, Cobbe et
//! al. 2020; CleanRL's `ppo_procgen.py` is the line-by-line peer).
//!
//! Weights live in a `VarStore` the caller owns. A searched encoder's architecture is an
//! argument of every forward ([`Encoder`]'s `A`), supplied per iteration by an
//! [`IterationArch`]: the trainer never reaches into the search.

/// The environments crate under the name these files used when they were modules of the
/// main crate (`crate::envs::...`).
pub use rl_darts_envs as envs;

pub mod arch;
pub mod compute;
pub mod error;
pub mod gae;
pub mod impala;
pub mod init;
pub mod mlp;
pub mod normalize;
pub mod optim;
pub mod policy;
pub mod ppo;
pub mod rollout;
pub mod rollout_async;
pub mod storage;

pub use arch::{FixedArch, Heartbeat, IterationArch, IterationPhase, NoHeartbeat, WeightStep};
pub use compute::{Compute, Layout, LossScaler, Precision};
pub use error::AgentError;
pub use gae::gae;
pub use impala::{ImpalaCnn, ImpalaConfig};
pub use mlp::{Mlp, MlpConfig};
pub use normalize::{RewardNormalizer, RunningMeanStd};
pub use optim::{
    clip_grad_norm, Adam, AdamConfig, AdamParams, GradNorm, NormArithmetic, OptimError,
};
pub use policy::{
    encoder_input_shape, preprocess_obs, sample_categorical, Act, ActorCritic, Evaluation,
};
pub use ppo::{
    normalize_advantages, normalize_advantages_global, ppo_loss, ppo_update, DataParallel,
    PpoConfig, PpoLoss, PpoStats, UpdateDriver,
};
pub use rollout::{collect_rollout, IterationStats, PpoTrainer};
pub use rollout_async::AsyncEnvs;
pub use storage::{Batch, RolloutStorage};

/// Maps preprocessed observations to a feature vector; the part of the agent that
/// architecture search replaces (IMPALA-CNN, MLP, DARTS supernets, derived cell networks).
///
/// `A` is the architecture a forward runs with, passed in by the caller: `()` for fixed
/// networks, op weights for supernets. Every RL encoder is one function of each frame,
/// whoever calls it: no train/eval switch (a BatchNorm inside an op runs on its fixed initial
/// statistics), so rollouts and updates evaluate the same policy.
pub trait Encoder<A = ()>: std::fmt::Debug + Send {
    /// # Shapes
    /// obs already preprocessed: `[N, C, H, W]` f32 in [0, 1] (images) or `[N, D]` (vectors)
    /// -> `[N, feature_dim]`
    fn features(&self, obs: &tch::Tensor, arch: &A) -> tch::Tensor;
    fn feature_dim(&self) -> i64;
}
