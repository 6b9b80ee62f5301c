//! PPO agents for batched environments: encoders, the actor-critic, rollout storage, GAE,
//! reward normalisation and one readable PPO update (PPO as in the Procgen paper, Cobbe et
//! al. 2020; CleanRL's `ppo_procgen.py` is the line-by-line peer).
//!
//! Weights live in a `VarStore` the caller owns; NAS encoders keep their architecture
//! parameters in a second store with their own optimizer, which the PPO update can step on
//! the same backward pass (see [`JointOptimizer`]).

pub mod adam;
pub mod error;
pub mod gae;
pub mod impala;
pub mod init;
pub mod mlp;
pub mod normalize;
pub mod policy;
pub mod ppo;
pub mod rollout;
pub mod storage;

pub use adam::{Adam, AdamConfig, JointOptimizer};
pub use error::AgentError;
pub use gae::gae;
pub use impala::{ImpalaCnn, ImpalaConfig};
pub use mlp::{Mlp, MlpConfig};
pub use normalize::{RewardNormalizer, RunningMeanStd};
pub use policy::{
    encoder_input_shape, preprocess_obs, sample_categorical, Act, ActorCritic, Evaluation,
};
pub use ppo::{clip_grad_norm, ppo_loss, ppo_update, PpoConfig, PpoLoss, PpoStats};
pub use rollout::{collect_rollout, IterationStats, PpoTrainer};
pub use storage::{Batch, RolloutStorage};

/// Maps preprocessed observations to a feature vector; the part of the agent that
/// architecture search replaces (IMPALA-CNN, MLP, DARTS supernets, derived cell networks).
pub trait Encoder: std::fmt::Debug + Send {
    /// obs already preprocessed: [N, C, H, W] f32 in [0,1] (images) or [N, D] (vectors) -> [N, feature_dim]
    fn features(&self, obs: &tch::Tensor, train: bool) -> tch::Tensor;
    fn feature_dim(&self) -> i64;
}
