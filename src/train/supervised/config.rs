//! What `rl-darts search` and `rl-darts train-arch` read: the data, the weight optimizer, the
//! search loop, the retraining and the checkpoints (`[data]`, `[search]`, `[train_arch]`,
//! `[checkpoint]`), with DARTS's defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SupervisedError;
use crate::data::{
    check_cifar10, check_digits, check_mnist, load_cifar10, load_digits, load_mnist, Augment,
    Dataset, Normalizer,
};
use crate::nas::{AlphaInit, DartsEvalConfig, DartsSearchConfig};
use crate::precision::{LayoutChoice, PrecisionChoice};
use crate::search::{SgdConfig, StrategyConfig};
use crate::train::checkpoint::CheckpointConfig;

/// Which dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// scikit-learn's 8x8 digits (1797 images); no official test split, so `test_fraction`
    /// of it is held out with `split_seed`.
    Digits,
    /// MNIST IDX files (60k train / 10k test).
    Mnist,
    /// CIFAR-10 binary batches (50k train / 10k test).
    Cifar10,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// The digits CSV, or the folder holding the MNIST / CIFAR-10 files.
    pub path: PathBuf,
    /// Digits only: fraction held out as the test set.
    pub test_fraction: f64,
    /// Seed of the held-out test split (fixed, so every run tests on the same images).
    pub split_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Digits,
            path: PathBuf::from(crate::data::DIGITS_CSV),
            test_fraction: 0.2,
            split_seed: 0,
        }
    }
}

impl DataConfig {
    pub fn name(&self) -> &'static str {
        match self.dataset {
            DatasetKind::Digits => "digits",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// Fails with the loader's message (which says what to download and where) unless the
    /// dataset's files exist; cheap, so the CLI checks before creating a run directory.
    pub fn check_present(&self) -> Result<(), SupervisedError> {
        match self.dataset {
            DatasetKind::Digits => check_digits(&self.path)?,
            DatasetKind::Mnist => check_mnist(&self.path)?,
            DatasetKind::Cifar10 => check_cifar10(&self.path)?,
        }
        Ok(())
    }

    /// `(train, test)`, normalised with statistics of the training images (CIFAR-10: the
    /// DARTS constants).
    pub fn load(&self) -> Result<(Dataset, Dataset), SupervisedError> {
        let (train, test) = match self.dataset {
            DatasetKind::Digits => {
                load_digits(&self.path)?.split(self.test_fraction, self.split_seed)?
            }
            DatasetKind::Mnist => (
                load_mnist(&self.path, true)?,
                load_mnist(&self.path, false)?,
            ),
            DatasetKind::Cifar10 => (
                load_cifar10(&self.path, true)?,
                load_cifar10(&self.path, false)?,
            ),
        };
        let norm = match self.dataset {
            DatasetKind::Cifar10 => Normalizer::cifar10(),
            _ => Normalizer::fit(&train.images),
        };
        let normalise = |d: Dataset| Dataset {
            images: norm.apply(&d.images),
            ..d
        };
        Ok((normalise(train), normalise(test)))
    }
}

/// The weight optimizer: SGD, cosine-annealed per epoch (`CosineAnnealingLR`), gradient norm
/// clipped. Defaults: DARTS search (lr 0.025 -> 0.001, momentum 0.9, wd 3e-4, clip 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightOptimConfig {
    pub lr: f64,
    /// Learning rate reached at the last epoch. DARTS search: 0.001; evaluation: 0.
    pub lr_min: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Max global gradient norm. DARTS: 5.
    pub grad_clip: f64,
}

impl Default for WeightOptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.025,
            lr_min: 0.001,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
        }
    }
}

impl WeightOptimConfig {
    /// `lr_min + (lr - lr_min) (1 + cos(pi epoch / epochs)) / 2`, PyTorch's `CosineAnnealingLR`
    /// stepped once per epoch.
    pub fn lr_at(&self, epoch: usize, epochs: usize) -> f64 {
        let t = epoch as f64 / epochs.max(1) as f64;
        self.lr_min + (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }

    pub(super) fn sgd(&self) -> SgdConfig {
        SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }
}

/// `[search]`: the search loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchLoopConfig {
    /// DARTS CIFAR-10: 50.
    pub epochs: usize,
    /// DARTS: 64.
    pub batch_size: usize,
    /// Share of the training set that trains the weights; the rest is the search (val) split.
    /// DARTS: 0.5.
    pub train_portion: f64,
    pub weights: WeightOptimConfig,
    /// Augmentation of training batches (DARTS search: crop + flip on CIFAR, no cutout).
    pub augment: Augment,
    pub strategy: StrategyConfig,
    /// Initial alphas. DARTS: N(0, 1e-3^2).
    pub alpha_init: AlphaInit,
    /// Search health (`[search.health]`, [`crate::train::health`]): every `every` weight
    /// steps (unset: 100; 0 = off) the dominant alpha-Hessian eigenvalue of the strategy's
    /// search loss on a fixed batch (the first `batch_size` images of each split), the
    /// entropies and the parameter-free share; optional RobustDARTS early stop.
    pub health: crate::train::health::HealthConfig,
}

impl Default for SearchLoopConfig {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 64,
            train_portion: 0.5,
            weights: WeightOptimConfig::default(),
            augment: Augment::default(),
            strategy: StrategyConfig::default(),
            alpha_init: AlphaInit::default(),
            health: crate::train::health::HealthConfig::default(),
        }
    }
}

/// `[train_arch]`: retraining a derived genotype from scratch (DARTS `train.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainArchConfig {
    pub network: DartsEvalConfig,
    /// DARTS CIFAR-10: 600.
    pub epochs: usize,
    /// DARTS: 96.
    pub batch_size: usize,
    /// DARTS evaluation: lr 0.025 cosine to 0, momentum 0.9, wd 3e-4, clip 5.
    pub weights: WeightOptimConfig,
    /// DARTS: crop 4 + flip + cutout 16.
    pub augment: Augment,
    /// Weight of the auxiliary head's loss (used when `network.auxiliary`). DARTS: 0.4.
    pub auxiliary_weight: f64,
}

impl Default for TrainArchConfig {
    fn default() -> Self {
        Self {
            network: DartsEvalConfig::default(),
            epochs: 600,
            batch_size: 96,
            weights: WeightOptimConfig {
                lr_min: 0.0,
                ..WeightOptimConfig::default()
            },
            augment: Augment {
                crop_padding: 4,
                flip: true,
                cutout: 16,
            },
            auxiliary_weight: 0.4,
        }
    }
}

/// Everything `rl-darts search` and `rl-darts train-arch` read. TOML is the source of truth
/// (configs/digits-darts.toml and the other digits-* presets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedConfig {
    /// Seeds libtorch (initialisation) and the loop's RNG (shuffling, augmentation, sampling).
    pub seed: u64,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0 = libtorch's default).
    pub torch_threads: i32,
    /// Floating-point format of convolutions and matmuls: `auto` (the default: the fastest
    /// the device runs natively, by a short timed probe of this run's network at start-up),
    /// `fp32`, `bf16` (mixed: softmax, losses, optimiser and master weights stay fp32) or
    /// `fp16` (CUDA only, with loss scaling). The choice is written to `compute.json`.
    pub precision: PrecisionChoice,
    /// Memory order of image activations: `auto` (the default, by the same probe), `nchw`
    /// or `channels_last`.
    pub layout: LayoutChoice,
    pub data: DataConfig,
    /// The supernet searched over (DARTS: C 16, 8 cells).
    pub network: DartsSearchConfig,
    pub search: SearchLoopConfig,
    pub train_arch: TrainArchConfig,
    /// Search and train-arch checkpoints; `every` counts epochs here (default: every epoch,
    /// the newest 2 kept; `every_minutes` as in PPO runs).
    pub checkpoint: CheckpointConfig,
    /// How the search's and train-arch's weight steps fit the machine (as PPO's `[memory]`):
    /// `cap_gib` (unset: 90% of what the process can have) and `micro_batch_size` (unset:
    /// planned by measuring a pass). A split batch accumulates its micro-batches' gradients;
    /// BatchNorm then uses each micro-batch's statistics (see `train::supervised::micro`).
    pub memory: crate::train::rl::memory::MemoryConfig,
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        Self {
            seed: 2,
            device: "auto".into(),
            torch_threads: 0,
            precision: PrecisionChoice::Auto,
            layout: LayoutChoice::Auto,
            data: DataConfig::default(),
            network: DartsSearchConfig::default(),
            search: SearchLoopConfig::default(),
            train_arch: TrainArchConfig::default(),
            checkpoint: CheckpointConfig {
                every: 1,
                keep: 2,
                ..CheckpointConfig::default()
            },
            memory: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_config, ConfigError};

    /// `[checkpoint]` is the shared `CheckpointConfig` with the supervised defaults (every
    /// epoch, the newest 2 kept); its `every_minutes` is accepted and a misspelt key is refused.
    #[test]
    fn checkpoint_table_is_the_shared_config_with_epoch_defaults() {
        let c = SupervisedConfig::default();
        assert_eq!((c.checkpoint.every, c.checkpoint.keep), (1, 2));
        let set = |kv: &str| load_config(None, SupervisedConfig::default(), &[kv.to_string()]);
        let c = set("checkpoint.every_minutes=2.5").unwrap();
        assert_eq!(c.checkpoint.every_minutes, 2.5);
        match set("checkpoint.evry=3") {
            Err(ConfigError::UnknownKey { key, .. }) => assert_eq!(key, "checkpoint.evry"),
            other => panic!("expected an unknown-key error, got {other:?}"),
        }
    }
}
