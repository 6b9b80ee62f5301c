//! PPO training runs (Cobbe et al. 2020's Procgen recipe, CleanRL's tags) and, with a supernet
//! encoder (`rl_darts`, `mlp_darts`), the search of its architecture during PPO with any
//! strategy of [`crate::search`] (RL-DARTS, Miao, Song et al. 2021).
//!
//! One concern per file: [`config`] (what a run reads), [`build`] (the encoder and the policy),
//! [`search`] (alphas and strategy; how PPO drives a strategy), [`objective`] (PPO as a
//! bilevel objective), [`search_envs`] (the search rollout), [`driver`] (one iteration, per
//! kind of encoder), [`run`] (the loop: logs, progress, checkpoints, resume), [`eval`]
//! (evaluating a checkpoint), [`parallel`] (one process of a data-parallel run).

pub mod build;
mod compute_probe;
pub mod config;
mod driver;
pub mod eval;
mod health;
mod io;
pub mod memory;
pub mod objective;
mod parallel;
pub mod parallel_check;
mod report;
pub mod run;
pub mod search;
mod search_envs;

pub use build::{build_fixed_encoder, build_policy, make_env, validate, Policy};
pub use config::{
    CheckpointConfig, EncoderConfig, MlpDartsFixedConfig, MlpDartsSearchConfig, RlDartsFixedConfig,
    RlDartsSearchConfig, RlSearchConfig, SearchBatch, TrainConfig,
};
pub use eval::{evaluate, EvalOptions, EvalResult};
pub use memory::{plan_update, MemoryConfig, MemoryPlan};
pub use objective::PpoObjective;
pub use run::{format_secs, train, NoProgress, Progress, TrainRun, TrainSummary, MEMORY_PLAN_FILE};
pub use search::{stores_are_disjoint, ArchSearch};
