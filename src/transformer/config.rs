//! The TOML of a transformer preset (`configs/seq-*.toml`): the task, the network, the search
//! (`[search]`) and the retraining of a derived architecture (`[train_arch]`), with their
//! defaults in one place.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::net::SeqNetConfig;
use super::tasks::TaskConfig;
use crate::nas::AlphaInit;
use crate::precision::{LayoutChoice, PrecisionChoice};
use crate::search::{ArchAdamConfig, StrategyConfig};
use crate::train::supervised::WeightOptimConfig;

/// The whole TOML of a transformer preset (`configs/seq-*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqConfig {
    /// Seeds weights, alphas, batches and the strategy's sampler.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub torch_threads: i32,
    /// Floating-point format of the linear layers, attention products and convolutions:
    /// `auto` (the default: the fastest the device runs natively, by a short timed probe),
    /// `fp32`, `bf16` (softmax, layer norms, the f64 residual stream, losses and optimiser
    /// stay as they are) or `fp16` (CUDA only). Written to `compute.json`.
    pub precision: PrecisionChoice,
    /// Accepted for symmetry with the other commands; sequences have no image layout, so
    /// `auto` resolves to `nchw` without a probe.
    pub layout: LayoutChoice,
    pub task: TaskConfig,
    pub network: SeqNetConfig,
    pub search: SeqSearchConfig,
    pub train_arch: SeqTrainArchConfig,
}

impl Default for SeqConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            device: "cpu".into(),
            torch_threads: 0,
            precision: PrecisionChoice::Auto,
            layout: LayoutChoice::Auto,
            task: TaskConfig::default(),
            network: SeqNetConfig::default(),
            search: SeqSearchConfig::default(),
            train_arch: SeqTrainArchConfig::default(),
        }
    }
}

/// `[search]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqSearchConfig {
    /// Epochs (temperature schedules and the cosine learning rate step per epoch).
    pub epochs: usize,
    /// Iterations (one weight step, plus an alpha step when the strategy wants one) per epoch.
    pub iterations_per_epoch: usize,
    pub batch_size: usize,
    /// SGD of the weights (cosine per epoch, clipped).
    pub weights: WeightOptimConfig,
    pub strategy: StrategyConfig,
    /// Initial alphas, `N(mean, std^2)`.
    pub alpha_init: AlphaInit,
    /// Batch size of evaluations (no gradients).
    pub eval_batch_size: usize,
    /// Search health (`[search.health]`, [`crate::train::health`]): every `every` iterations
    /// (unset: 50; 0 = off) the dominant alpha-Hessian eigenvalue of the strategy's search
    /// loss on a fixed batch (the first `batch_size` examples of each split), the entropies
    /// and the parameter-free share (zero, identity); optional RobustDARTS early stop.
    pub health: crate::train::health::HealthConfig,
    /// Complete checkpoints kept in the run directory (one is written every epoch, or every
    /// candidate of a random search from scratch).
    pub checkpoint_keep: usize,
    /// Random search from scratch (`strategy.kind = "random"`, `weight_sharing = false`): with
    /// a value > 0, draw and train candidates until this many seconds are spent (the last one
    /// is finished), instead of exactly `num_candidates`. Equal compute with a supernet
    /// search: give it that search's `seconds` (summary.json). Wall time makes the number of
    /// candidates depend on the machine's speed and load; 0 keeps the count exact.
    pub random_budget_seconds: f64,
}

impl Default for SeqSearchConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iterations_per_epoch: 50,
            batch_size: 32,
            weights: WeightOptimConfig {
                lr: 0.05,
                lr_min: 0.005,
                momentum: 0.9,
                weight_decay: 3e-4,
                grad_clip: 5.0,
            },
            strategy: StrategyConfig::default(),
            alpha_init: AlphaInit::default(),
            eval_batch_size: 256,
            health: crate::train::health::HealthConfig::default(),
            checkpoint_keep: 2,
            random_budget_seconds: 0.0,
        }
    }
}

/// `[train_arch]`: retraining a derived architecture from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqTrainArchConfig {
    pub epochs: usize,
    pub iterations_per_epoch: usize,
    pub batch_size: usize,
    /// Adam over the weights (the paper: betas (0.9, 0.98)).
    pub optimizer: ArchAdamConfig,
    /// Max global gradient norm; 0 disables.
    pub grad_clip: f64,
    /// 0: the `[network]` size as it is. N > 0: the width (`d_model`, in steps that keep every
    /// split a multiple of `heads`) and `ffn_mult` (1..=8) whose parameter count is nearest
    /// to N, depth unchanged: the standard transformer of equal parameters to a derived one.
    pub target_parameters: i64,
}

impl Default for SeqTrainArchConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iterations_per_epoch: 100,
            batch_size: 32,
            optimizer: ArchAdamConfig {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-9,
                weight_decay: 0.0,
            },
            grad_clip: 1.0,
            target_parameters: 0,
        }
    }
}

/// Whether the TOML at `path` is a transformer preset (it has a `[task]` table; the vision
/// presets have `[data]`). Unreadable files are not: the vision loader then reports them.
pub fn is_transformer_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("task"))
}
