//! What a PPO run reads from its TOML: the env, the encoder (fixed or searched), PPO, the
//! Procgen levels, checkpoints and, for a searched encoder, how its architecture is searched.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::agents::{ImpalaConfig, MlpConfig, PpoConfig};
use crate::envs::gym::GYM_ENVS;
use crate::envs::procgen::ProcgenOptions;
use crate::nas::{AlphaInit, MlpDartsConfig, RlDartsConfig};
use crate::precision::{LayoutChoice, PrecisionChoice};
use crate::search::{JointParams, StrategyConfig};
use crate::train::TrainError;

pub use super::memory::MemoryConfig;
/// The train/ wing's one checkpoint cadence; PPO's `every` counts iterations.
pub use crate::train::checkpoint::CheckpointConfig;

/// Which network turns observations into features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum EncoderConfig {
    /// IMPALA-CNN (Espeholt et al. 2018), the Procgen baseline.
    Impala(ImpalaConfig),
    /// A tanh MLP, for state-vector envs such as CartPole.
    Mlp(MlpConfig),
    /// RL-DARTS: a DARTS supernet over images whose alphas are searched during PPO by the
    /// strategy of `[search.strategy]` (default: joint first order, as RL-DARTS).
    RlDarts(RlDartsSearchConfig),
    /// RL-DARTS retraining: the discrete cell derived by an `rl_darts` search, in the same
    /// layout, trained from scratch (Miao, Song et al. 2021, section 3).
    RlDartsFixed(RlDartsFixedConfig),
    /// The RL-DARTS search over state vectors (CartPole): an MLP supernet of cells over the
    /// `mlp` op set (linear_relu, linear_tanh, skip_connect, none), searched like `rl_darts`.
    MlpDarts(MlpDartsSearchConfig),
    /// The discrete cell derived by an `mlp_darts` search, in the same layout, from scratch.
    MlpDartsFixed(MlpDartsFixedConfig),
}

/// `[encoder] kind = "mlp_darts"`: the searched vector encoder. How its alphas learn is
/// `[search]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MlpDartsSearchConfig {
    /// Cells, nodes, width, op set (default: 2 cells of 4 nodes, 64 features, `mlp` ops).
    pub supernet: MlpDartsConfig,
}

/// `[encoder] kind = "mlp_darts_fixed"`: a genotype derived by an `mlp_darts` search and the
/// supernet layout it was searched in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MlpDartsFixedConfig {
    /// genotype.json (or the DARTS text form) written by an `mlp_darts` search run. Required.
    pub genotype: PathBuf,
    /// The layout of the search's `encoder.params.supernet` (same keys and defaults).
    pub supernet: MlpDartsConfig,
}

/// `[encoder] kind = "rl_darts_fixed"`: a derived genotype and the supernet layout it was
/// searched in (stages, channels, nodes, op set, cell output), which the discrete network
/// keeps; only the mixed ops become the genotype's chosen ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsFixedConfig {
    /// genotype.json (or the DARTS text form) written by an `rl_darts` search run. Required.
    pub genotype: PathBuf,
    /// The layout of the search's `encoder.params.supernet` (same keys and defaults).
    pub supernet: RlDartsConfig,
}

impl Default for RlDartsFixedConfig {
    fn default() -> Self {
        Self {
            genotype: PathBuf::new(),
            supernet: RlDartsConfig::default(),
        }
    }
}

impl EncoderConfig {
    pub fn name(&self) -> &'static str {
        match self {
            EncoderConfig::Impala(_) => "impala",
            EncoderConfig::Mlp(_) => "mlp",
            EncoderConfig::RlDarts(_) => "rl_darts",
            EncoderConfig::RlDartsFixed(_) => "rl_darts_fixed",
            EncoderConfig::MlpDarts(_) => "mlp_darts",
            EncoderConfig::MlpDartsFixed(_) => "mlp_darts_fixed",
        }
    }

    /// Whether this encoder is a supernet whose architecture the run searches.
    pub fn is_supernet(&self) -> bool {
        matches!(self, EncoderConfig::RlDarts(_) | EncoderConfig::MlpDarts(_))
    }
}

/// Everything a training run needs. TOML is the source of truth; see configs/.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A Procgen game (`coinrun`, ...) or a classic-control env (`cartpole`, `mountaincar`).
    pub env: String,
    /// Seeds libtorch, the Rust RNGs and procgen's `rand_seed` (unless set in [procgen]).
    pub seed: u64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0 = libtorch's default: all cores).
    pub torch_threads: i32,
    /// Floating-point format of convolutions and matmuls: `auto` (the default: the fastest
    /// the device runs natively, by a short timed probe of this run's network at start-up),
    /// `fp32`, `bf16` (mixed: softmax, losses, optimiser and master weights stay fp32) or
    /// `fp16` (CUDA only, with loss scaling). The choice is written to `compute.json`.
    pub precision: PrecisionChoice,
    /// Memory order of image activations: `auto` (the default, by the same probe), `nchw`
    /// or `channels_last`.
    pub layout: LayoutChoice,
    pub encoder: EncoderConfig,
    pub ppo: PpoConfig,
    /// Training levels (Procgen only). Paper protocol: easy, 200 levels from 0.
    pub procgen: ProcgenOptions,
    pub checkpoint: CheckpointConfig,
    /// How the PPO update fits the machine's memory ([`MemoryConfig`]).
    pub memory: MemoryConfig,
    /// Architecture search: read only with a supernet encoder (`rl_darts`, `mlp_darts`).
    pub search: RlSearchConfig,
    /// One run over several processes (`mpirun -np N`): engine and timeout
    /// ([`crate::distributed`]). The keys above describe the whole run.
    pub distributed: crate::distributed::DistributedConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::procgen("coinrun")
    }
}

impl TrainConfig {
    /// The Procgen paper's setup: PPO defaults, IMPALA-CNN, easy mode, 200 training levels.
    pub fn procgen(env: &str) -> Self {
        Self {
            env: env.to_string(),
            seed: 1,
            device: "auto".into(),
            torch_threads: 0,
            precision: PrecisionChoice::Auto,
            layout: LayoutChoice::Auto,
            encoder: EncoderConfig::Impala(ImpalaConfig::default()),
            ppo: PpoConfig::default(),
            procgen: ProcgenOptions {
                num_levels: 200,
                start_level: 0,
                ..ProcgenOptions::default()
            },
            checkpoint: CheckpointConfig::default(),
            memory: MemoryConfig::default(),
            search: RlSearchConfig::default(),
            distributed: crate::distributed::DistributedConfig::default(),
        }
    }

    /// CleanRL's ppo.py setup for classic control.
    pub fn classic_control(env: &str) -> Self {
        Self {
            env: env.to_string(),
            encoder: EncoderConfig::Mlp(MlpConfig::default()),
            ppo: PpoConfig::cartpole(),
            checkpoint: CheckpointConfig {
                every: 20,
                ..CheckpointConfig::default()
            },
            ..Self::procgen(env)
        }
    }

    /// Defaults fitting `env`: classic control or Procgen.
    pub fn defaults_for(env: &str) -> Self {
        if GYM_ENVS.contains(&env) {
            Self::classic_control(env)
        } else {
            Self::procgen(env)
        }
    }

    pub fn is_procgen(&self) -> bool {
        !GYM_ENVS.contains(&self.env.as_str())
    }

    /// Process `rank`'s share of a data-parallel run of `world` processes: `ppo.num_envs` and
    /// `ppo.total_timesteps` divided by `world` (so the batch, every minibatch and the budget
    /// are split and the number of iterations stays), and the seeds of its envs and of its
    /// action sampling offset by rank ([`crate::distributed::rank_seed`]). The architecture
    /// search and the weight initialisation keep `seed` (see `train`). `world = 1` is `self`.
    pub fn process_share(&self, rank: usize, world: usize) -> Result<Self, TrainError> {
        if world <= 1 {
            return Ok(self.clone());
        }
        let backend = self.distributed.backend.name();
        let ppo = &self.ppo;
        if !ppo.num_envs.is_multiple_of(world) {
            return Err(TrainError::Invalid(format!(
                "ppo.num_envs = {} does not split over {world} processes (distributed.backend = \
                 \"{backend}\"): use a multiple of {world}, or another number of processes",
                ppo.num_envs
            )));
        }
        let local_batch = ppo.num_envs / world * ppo.num_steps;
        if !local_batch.is_multiple_of(ppo.num_minibatches) {
            return Err(TrainError::Invalid(format!(
                "each of the {world} processes holds {local_batch} samples of the batch of {}, \
                 which ppo.num_minibatches = {} does not divide: every process needs an equal \
                 share of every minibatch",
                ppo.batch_size(),
                ppo.num_minibatches
            )));
        }
        let mut local = self.clone();
        local.ppo.num_envs /= world;
        local.ppo.total_timesteps /= world as u64;
        local.seed = crate::distributed::rank_seed(self.seed, rank);
        local.procgen.rand_seed = self
            .procgen
            .rand_seed
            .map(|s| (crate::distributed::rank_seed(s as u64, rank) % i32::MAX as u64) as i32);
        Ok(local)
    }
}

/// `[encoder] kind = "rl_darts"`: the searched image encoder. How its alphas learn is
/// `[search]` ([`RlSearchConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsSearchConfig {
    /// The supernet: layout, channels, nodes, op set (RL-DARTS: "standard", [16, 32, 32],
    /// 4 nodes, {conv_3x3, relu, tanh, skip, zero}).
    pub supernet: RlDartsConfig,
}

/// Where the search (validation) batch of a bilevel strategy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchBatch {
    /// `search_envs` more environments on the *training* levels, rolled out by the same policy
    /// at the same iteration as the training envs (just before them); their transitions never
    /// enter the weight update. The search loss then measures the same task on data the
    /// weights were not fitted to: DARTS's train/val split, cut along environments.
    RolloutSplit,
    /// `search_envs` environments on `heldout_num_levels` Procgen levels that follow the
    /// training levels (`start_level + num_levels` onwards, so disjoint from them), same
    /// policy. The search loss then rewards architectures that generalise to unseen levels,
    /// the Procgen benchmark's own question. Procgen with `num_levels > 0` only.
    HeldoutLevels,
}

/// PPO iterations between search-health measurements when `search.health.every` is unset
/// (a measurement costs about 11 minibatch steps' double backward at the default 10
/// power-iteration steps, against the 24 minibatch steps and the rollout of each iteration).
pub const RL_HEALTH_EVERY: u64 = 10;

/// `[search]`: how a supernet encoder's architecture is searched during PPO. Read only when
/// the encoder is a supernet (`rl_darts`, `mlp_darts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlSearchConfig {
    /// The strategy (`[search.strategy] kind = ...`, parameters in `[search.strategy.params]`):
    /// `joint` (default: RL-DARTS's joint first-order search, alphas trained by the PPO loss
    /// on the same backward pass), `darts` (bilevel, first or second order), `idarts`, `gdas`,
    /// `snas`, `random`.
    pub strategy: StrategyConfig,
    /// Bilevel strategies only (darts, idarts, gdas, random): `rollout_split` (default) or
    /// `heldout_levels`, see [`SearchBatch`].
    pub search_batch: SearchBatch,
    /// Environments of the search rollout (`ppo.num_steps` steps each per iteration; the
    /// rollout is split into `ppo.num_minibatches` minibatches, the size of both minibatches
    /// of an alpha step). Bilevel strategies only. Unset (the default): a quarter of
    /// `ppo.num_envs`, at least 1 (16 for the Procgen paper's 64 training envs; DARTS's 50/50
    /// split would double the env steps of the search).
    pub search_envs: Option<usize>,
    /// `heldout_levels` only: how many levels the search envs play, from the first level
    /// after the training levels. Default 200 (as many as the training levels).
    pub heldout_num_levels: i32,
    /// Initial alphas, `mean + std * N(0, 1)`. DARTS / RL-DARTS: N(0, 1e-3^2).
    pub alpha_init: AlphaInit,
    /// Log alpha softmaxes, entropies, heatmaps, strategy scalars and the derived genotype
    /// every this many PPO iterations.
    pub log_every: u64,
    /// Search health (`[search.health]`, [`crate::train::health`]): every `every` PPO
    /// iterations (unset: [`RL_HEALTH_EVERY`]; 0 = off) the dominant alpha-Hessian eigenvalue of the
    /// strategy's loss on the first minibatch of its batch (the search rollout for bilevel
    /// strategies, the update's training batch for single-level ones; a bilevel strategy that
    /// takes no alpha step in a due iteration is measured at its next one), the entropies and
    /// the parameter-free share; optional RobustDARTS early stop, after which the pipeline
    /// continues with the architecture derived at the stopping point.
    pub health: crate::train::health::HealthConfig,
}

impl RlSearchConfig {
    /// Envs of the search rollout for `num_envs` training envs.
    pub fn search_envs(&self, num_envs: usize) -> usize {
        self.search_envs.unwrap_or((num_envs / 4).max(1))
    }
}

impl Default for RlSearchConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyConfig::Joint(JointParams::default()),
            search_batch: SearchBatch::RolloutSplit,
            search_envs: None,
            heldout_num_levels: 200,
            alpha_init: AlphaInit::default(),
            log_every: 1,
            health: crate::train::health::HealthConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainConfig;

    /// Each process gets 1/N of the envs and of the budget, so the iterations stay; its seeds
    /// are its own, rank 0's the run's.
    #[test]
    fn process_share_splits_envs_and_budget_and_offsets_seeds() {
        let mut c = TrainConfig::procgen("coinrun");
        c.ppo.num_envs = 8;
        c.ppo.num_steps = 32;
        c.ppo.num_minibatches = 2;
        c.ppo.total_timesteps = 2_560;
        let r0 = c.process_share(0, 2).unwrap();
        let r1 = c.process_share(1, 2).unwrap();
        assert_eq!((r0.ppo.num_envs, r0.ppo.total_timesteps), (4, 1_280));
        assert_eq!(r0.ppo.num_iterations(), c.ppo.num_iterations());
        assert_eq!(r0.seed, c.seed);
        assert_ne!(r1.seed, c.seed);
        assert_eq!(c.process_share(0, 1).unwrap(), c);
    }

    #[test]
    fn process_share_refuses_uneven_splits() {
        let mut c = TrainConfig::procgen("coinrun");
        c.ppo.num_envs = 6;
        c.ppo.num_steps = 2;
        c.ppo.num_minibatches = 4;
        let e = c.process_share(0, 4).unwrap_err().to_string();
        assert!(
            e.contains("ppo.num_envs = 6 does not split over 4 processes"),
            "{e}"
        );
        // 3 envs x 2 steps per process: 6 samples in 4 minibatches.
        let e = c.process_share(1, 2).unwrap_err().to_string();
        assert!(
            e.contains("which ppo.num_minibatches = 4 does not divide"),
            "{e}"
        );
    }
}
