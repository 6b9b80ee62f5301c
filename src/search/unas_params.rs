//! `[search.strategy.params]` of UNAS (Vahdat et al. CVPR 2020): the cell, the estimator, the
//! latency penalty and their defaults (see [`super::unas`] for where they come from).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ArchAdamConfig, SearchError};
use crate::nas::DeriveRule;

/// Which cell the search parameterises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasCell {
    /// The DARTS cell: one categorical over the op set (with `none`) per edge, the
    /// supernet's alphas.
    #[default]
    Darts,
    /// UNAS's factorised cell: per node two input selectors and two op selectors (the op set
    /// without `none`), exactly two incoming edges per node
    /// ([`super::unas_factorised`]).
    Factorised,
}

/// Which gradient estimator the alpha step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasEstimator {
    /// `(f(z) - f(zeta)) grad log p(z) + grad f(zeta)` (biased, low variance).
    RelaxedBaseline,
    /// REBAR with the conditional Gumbel sample: unbiased.
    Rebar,
    /// Plain REINFORCE `f(z) grad log p(z)`, no baseline: the reference the other two are
    /// compared with (unbiased, high variance). Not meant for real searches.
    Reinforce,
}

/// Where the latency of an architecture comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencySource {
    /// No latency penalty.
    Off,
    /// The sum of per-op times measured on the search device ([`crate::nas::latency`]).
    Table,
}

/// `[search.strategy.params.latency]`: UNAS's penalty `c_t relu(latency(z) - target)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnasLatencyParams {
    /// `off` (default) | `table`.
    pub source: LatencySource,
    /// Latency below which there is no penalty, milliseconds per forward of `batch` inputs on
    /// the search device (the table's units).
    pub target_ms: f64,
    /// Final penalty coefficient `c`, per millisecond. UNAS: 0.1.
    pub weight: f64,
    /// Alpha steps over which `c_t` ramps linearly from 0 to `weight`; 0 = no ramp. UNAS: 30k.
    pub ramp_steps: u64,
    /// Untimed warm-up forwards per op before timing.
    pub warmup: usize,
    /// Timed forwards per op; the median is kept.
    pub repeats: usize,
    /// Batch size of the timed forwards.
    pub batch: i64,
    /// Folder caching measured tables per device and shape (JSON); unset = measure each run.
    pub cache_dir: Option<PathBuf>,
}

impl Default for UnasLatencyParams {
    fn default() -> Self {
        Self {
            source: LatencySource::Off,
            target_ms: 0.0,
            weight: 0.1,
            ramp_steps: 30_000,
            warmup: 3,
            repeats: 10,
            batch: 64,
            cache_dir: None,
        }
    }
}

impl UnasLatencyParams {
    /// `c_t` after `steps` alpha steps.
    pub fn coefficient(&self, steps: u64) -> f64 {
        if self.ramp_steps == 0 {
            self.weight
        } else {
            self.weight * (steps as f64 / self.ramp_steps as f64).min(1.0)
        }
    }
}

/// `[search.strategy.params]` of `kind = "unas"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnasParams {
    /// Weight of the generalisation gap `|L_val - L_train|` in `f`. UNAS: 0.5.
    pub gap_weight: f64,
    /// Temperature of the relaxed samples. UNAS: 0.4.
    pub tau: f64,
    /// `rebar` (unbiased) | `relaxed_baseline` | `reinforce`.
    pub estimator: UnasEstimator,
    /// Epochs that train the weights only before alpha steps start. UNAS: 15 of 100 on
    /// CIFAR-10 (set in configs/cifar10-unas.toml); the default 0 leaves the schedule to the
    /// preset, since an epoch means different amounts of work in the vision and RL loops.
    pub warmup_epochs: usize,
    /// Decay of the running mean/variance of the alpha gradient logged as
    /// `estimator_variance` (an EWMA over steps; monitoring only).
    pub variance_decay: f64,
    /// How the genotype is read off `softmax(alpha)`: `darts` (top-2 edges per node, `none`
    /// excluded) for the DARTS cell.
    pub derive: DeriveRule,
    /// Adam over the alphas. UNAS: lr 1e-3; the rest as DARTS.
    pub optimizer: ArchAdamConfig,
    /// The measured-latency penalty (off by default).
    pub latency: UnasLatencyParams,
    /// `darts` (default) | `factorised`. The factorised cell selects among the op set's ops
    /// other than `none`, whatever the supernet's op set; its genotype is read off the
    /// selectors' argmax (`derive` is not used).
    pub cell: UnasCell,
    /// Which sample of the current distribution the loop's weight step trains on. UNAS:
    /// `relaxed` (the official `train` steps the weights on a detached copy of the same
    /// Gumbel-softmax sample `zeta` the arch step used, every op computed); `hard` trains the
    /// one-hot `z` (only the sampled op of each edge computed, cheaper, the network the
    /// REINFORCE term scores).
    pub weights_sample: UnasWeightsSample,
    /// Factorised cell only: weight of the duplicate-edge penalty added to `f`, per node
    /// `sum_{j,o} w0[j,o] w1[j,o]` with `w_s = z_in_s z_op_s^T` the (input, op) choice of
    /// slot `s` (1 when both slots pick the same input *and* op, for the hard sample). UNAS:
    /// 0.2 (the official `--alpha_loss`, on by default, `--alpha_loss_lambda 0.2`).
    pub duplicate_penalty: f64,
    /// `false` (UNAS's default, `same_alpha_minibatch=False`): each alpha step draws one
    /// architecture per example of the batch, scores example `b` of the training and of the
    /// search batch under architecture `b`, and weights that example's `f` by its own
    /// `log p(z_b)`; the estimate is the mean over the batch (lower variance, same
    /// expectation). Needs per-example losses from the loop ([`Objective::per_example_losses`]:
    /// the supervised search has them) and the DARTS cell. `true`: one architecture for the
    /// whole batch, `f` of the batch means (the RL search always runs this way: see
    /// `train::rl::search`).
    pub same_alpha_minibatch: bool,
}

/// Which sample the weight step trains on (see [`UnasParams::weights_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasWeightsSample {
    /// The relaxed `zeta`, detached (official).
    #[default]
    Relaxed,
    /// The hard one-hot `z`.
    Hard,
}

impl Default for UnasParams {
    fn default() -> Self {
        Self {
            gap_weight: 0.5,
            tau: 0.4,
            estimator: UnasEstimator::Rebar,
            warmup_epochs: 0,
            variance_decay: 0.9,
            derive: DeriveRule::Darts,
            optimizer: ArchAdamConfig {
                lr: 1e-3,
                ..ArchAdamConfig::default()
            },
            latency: UnasLatencyParams::default(),
            cell: UnasCell::Darts,
            weights_sample: UnasWeightsSample::Relaxed,
            duplicate_penalty: 0.2,
            same_alpha_minibatch: false,
        }
    }
}

impl UnasParams {
    /// Refuses settings the estimator cannot run with, naming the key.
    pub(crate) fn validate(&self) -> Result<(), SearchError> {
        let p = self;
        if !(p.tau > 0.0 && p.tau.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: tau must be finite and > 0, got {}",
                p.tau
            )));
        }
        if !(p.gap_weight >= 0.0 && p.gap_weight.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: gap_weight must be finite and >= 0, got {}",
                p.gap_weight
            )));
        }
        if !(0.0..1.0).contains(&p.variance_decay) {
            return Err(SearchError::Invalid(format!(
                "unas: variance_decay must be in [0, 1), got {}",
                p.variance_decay
            )));
        }
        if !(p.duplicate_penalty >= 0.0 && p.duplicate_penalty.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: duplicate_penalty must be finite and >= 0 (0 = off), got {}",
                p.duplicate_penalty
            )));
        }
        let l = &p.latency;
        if l.source == LatencySource::Table
            && !(l.target_ms >= 0.0
                && l.target_ms.is_finite()
                && l.weight >= 0.0
                && l.weight.is_finite()
                && l.batch > 0
                && l.repeats > 0)
        {
            return Err(SearchError::Invalid(format!(
                "unas: latency needs target_ms >= 0, weight >= 0, batch > 0, repeats > 0, got {l:?}"
            )));
        }
        if p.cell == UnasCell::Factorised && !p.same_alpha_minibatch {
            // The factorised sampler builds one (input, op) choice per node and its sparse hard
            // weights; drawing it per example would need that machinery batched too.
            return Err(SearchError::Invalid(
                "unas: the factorised cell draws one architecture per minibatch; set \
                 search.strategy.params.same_alpha_minibatch = true (per-example samples are \
                 implemented for the DARTS cell)"
                    .into(),
            ));
        }
        Ok(())
    }
}
