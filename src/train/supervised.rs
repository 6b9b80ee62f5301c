//! Supervised architecture search and retraining on image classification, after the official
//! DARTS code (Liu et al., ICLR 2019: `train_search.py`, `train.py`): the search loop (alpha
//! step on a search batch through a [`SearchStrategy`], then an SGD weight step on the train
//! batch), the from-scratch random-search baseline (Li & Talwalkar 2019), and `train-arch`
//! (the derived network trained from scratch with cutout, drop-path and the auxiliary head).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::rl::Progress;
use super::run_dir::RunDir;
use crate::data::{
    check_cifar10, check_digits, check_mnist, epoch_batches, load_cifar10, load_digits, load_mnist,
    Augment, DataError, Dataset, Normalizer,
};
use crate::logging::MetricsSink;
use crate::nas::{
    AlphaInit, ArchParams, CellType, CellWeights, DartsEvalConfig, DartsEvalNet, DartsSearchConfig,
    DartsSearchNet, Genotype, NasError, Supernet,
};
use crate::search::{
    ArchStepStats, Objective, Phase, RandomSearch, SearchError, SearchStrategy, Sgd, SgdConfig,
    StrategyConfig, VirtualStep, WeightStepReport,
};

/// Errors of a supervised search or retraining run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Nas(#[from] NasError),
    #[error(transparent)]
    Run(#[from] super::TrainError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} became {value} in epoch {epoch}; the run stopped. Try a lower learning rate.")]
    NonFinite {
        epoch: usize,
        what: String,
        value: f64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SupervisedError + '_ {
    move |source| SupervisedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

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

    fn sgd(&self) -> SgdConfig {
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

/// Checkpoint cadence, in epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochCheckpointConfig {
    pub every: usize,
    pub keep: usize,
}

impl Default for EpochCheckpointConfig {
    fn default() -> Self {
        Self { every: 1, keep: 2 }
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
    pub data: DataConfig,
    /// The supernet searched over (DARTS: C 16, 8 cells).
    pub network: DartsSearchConfig,
    pub search: SearchLoopConfig,
    pub train_arch: TrainArchConfig,
    pub checkpoint: EpochCheckpointConfig,
}

impl Default for SupervisedConfig {
    fn default() -> Self {
        Self {
            seed: 2,
            device: "auto".into(),
            torch_threads: 0,
            data: DataConfig::default(),
            network: DartsSearchConfig::default(),
            search: SearchLoopConfig::default(),
            train_arch: TrainArchConfig::default(),
            checkpoint: EpochCheckpointConfig::default(),
        }
    }
}

fn check_shapes(
    what: &str,
    in_channels: i64,
    num_classes: i64,
    data: &Dataset,
) -> Result<(), SupervisedError> {
    let [c, _, _] = data.image_shape();
    if in_channels != c || num_classes != data.num_classes {
        return Err(SupervisedError::Invalid(format!(
            "{what}.in_channels = {in_channels} and {what}.num_classes = {num_classes}, but the data has {c} channels and {} \
             classes; set them to match",
            data.num_classes
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The objective the strategies see

/// Mean cross-entropy in the logits' own precision (tch's `cross_entropy_for_logits` computes
/// in f32, which the f64 gradient checks cannot use).
///
/// # Shapes
/// `logits: [N, K]`, `labels: [N]` -> `[]`
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, logits.kind()).nll_loss(labels)
}

fn correct(logits: &Tensor, labels: &Tensor) -> i64 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .sum(Kind::Int64)
        .int64_value(&[])
}

/// The vision loop as an [`Objective`]: a supernet, its weight store, the weight optimizer
/// (for the virtual step) and the current train / search batches.
pub struct VisionObjective<'a> {
    pub net: &'a dyn Supernet,
    pub vs: &'a nn::VarStore,
    pub sgd: &'a Sgd,
    /// `([N, C, H, W], [N])`.
    pub train: (Tensor, Tensor),
    pub search: (Tensor, Tensor),
}

impl VisionObjective<'_> {
    fn loss(&self, batch: &(Tensor, Tensor), weights: &CellWeights) -> Tensor {
        cross_entropy(&self.net.forward_with(&batch.0, weights, true), &batch.1)
    }
}

impl Objective for VisionObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.train, weights))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.search, weights))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.sgd.parameters()
    }

    /// BatchNorm running statistics: every non-trainable variable, in name order.
    fn buffers(&self) -> Vec<Tensor> {
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
    }

    fn virtual_step(&self) -> VirtualStep {
        let c = self.sgd.config;
        VirtualStep {
            lr: c.lr,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            momentum_buffers: self.sgd.momentum_buffers(),
        }
    }
}

/// Global-norm gradient clipping (`clip_grad_norm_`); returns the squared norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let sq: f64 = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum();
        let coef = max_norm / (sq.sqrt() + 1e-6);
        if coef < 1.0 {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
        sq
    })
}

// ---------------------------------------------------------------------------------------------
// Search

/// Loop state beyond weights, alphas and optimizers, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoopState {
    epochs_done: usize,
    iteration: u64,
    rng: ChaCha8Rng,
    /// Position in the cycled search split (DARTS draws `next(iter(valid_queue))`).
    search_cursor: usize,
    search_order: Vec<i64>,
}

/// One call of [`search`].
pub struct SearchRun<'a> {
    pub config: &'a SupervisedConfig,
    pub run_dir: &'a RunDir,
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// How a search ended.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSummary {
    pub genotype: Genotype,
    pub genotype_path: PathBuf,
    pub epochs_done: usize,
    /// Validation (search split) accuracy of the supernet (or best candidate) at the end.
    pub val_accuracy: f64,
    pub interrupted: bool,
    pub seconds: f64,
}

pub const GENOTYPE_JSON: &str = "genotype.json";
pub const GENOTYPE_TXT: &str = "genotype.txt";

fn setup(config: &SupervisedConfig) -> Result<Device, SupervisedError> {
    let device = crate::device::parse_device(&config.device)?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads);
    }
    tch::manual_seed(config.seed as i64);
    Ok(device)
}

/// Runs the search `config.search.strategy` describes: the DARTS-style bilevel loop, or for
/// `random` the from-scratch baseline. Writes `genotype.json` and `genotype.txt` (DARTS text).
pub fn search(mut run: SearchRun<'_>) -> Result<SearchSummary, SupervisedError> {
    let config = run.config;
    let started = Instant::now();
    let device = setup(config)?;
    let (train_full, _test) = config.data.load()?;
    check_shapes(
        "network",
        config.network.in_channels,
        config.network.num_classes,
        &train_full,
    )?;
    let (w_train, w_search) = train_full.split_head(config.search.train_portion)?;
    let (w_train, w_search) = (w_train.to_device(device), w_search.to_device(device));
    if !run.resume {
        run.sink
            .text("config", &crate::config::to_markdown(config)?, 0);
    }
    let summary = match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => {
            random_from_scratch(&mut run, device, &w_train, &w_search)?
        }
        _ => bilevel_search(&mut run, device, &w_train, &w_search)?,
    };
    let (genotype, epochs_done, val_accuracy, interrupted) = summary;
    let genotype_path = run.run_dir.root.join(GENOTYPE_JSON);
    genotype.save_json(&genotype_path)?;
    let txt = run.run_dir.root.join(GENOTYPE_TXT);
    std::fs::write(&txt, genotype.to_darts_string() + "\n").map_err(io(&txt))?;
    let summary = SearchSummary {
        genotype,
        genotype_path,
        epochs_done,
        val_accuracy,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = run.run_dir.root.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(io(&path))?;
    Ok(summary)
}

type Outcome = (Genotype, usize, f64, bool);

fn batch(
    data: &Dataset,
    index: &[i64],
    augment: &Augment,
    rng: &mut ChaCha8Rng,
) -> (Tensor, Tensor) {
    let sub = data.subset(index);
    (augment.apply(&sub.images, rng), sub.labels)
}

/// What [`weight_step`] did.
pub struct WeightStep {
    /// `[N, num_classes]`, with graph.
    pub logits: Tensor,
    pub loss: f64,
    /// Squared global gradient norm before clipping.
    pub grad_norm_sq: f64,
}

/// The weight half of a search iteration (`train_search.py` `train`): cross-entropy on the
/// train batch with the given op weights, backward, global-norm clipping, SGD step. Public so
/// that the search benchmark (examples/bench_darts_search.rs) times exactly this code.
pub fn weight_step(
    net: &dyn Supernet,
    weights: &CellWeights,
    sgd: &mut Sgd,
    x: &Tensor,
    y: &Tensor,
    grad_clip: f64,
) -> WeightStep {
    sgd.zero_grad();
    let logits = net.forward_with(x, weights, true);
    let loss = cross_entropy(&logits, y);
    loss.backward();
    let grad_norm_sq = clip_grad_norm(&sgd.parameters(), grad_clip);
    sgd.step();
    WeightStep {
        logits,
        loss: loss.double_value(&[]),
        grad_norm_sq,
    }
}

/// The DARTS loop (`train_search.py`): per iteration, alpha step on a search batch through the
/// strategy, then SGD on the train batch.
fn bilevel_search(
    run: &mut SearchRun<'_>,
    device: Device,
    w_train: &Dataset,
    w_search: &Dataset,
) -> Result<Outcome, SupervisedError> {
    let config = run.config;
    let sc = &config.search;
    let mut vs = nn::VarStore::new(device);
    let net = DartsSearchNet::new(vs.root() / "net", &config.network)?;
    let mut arch = ArchParams::new(
        device,
        net.space(),
        net.has_reduction_cells(),
        sc.alpha_init,
    )?;
    let mut strategy = sc.strategy.build(&arch, config.seed)?;
    // Resource-aware strategies (SNAS, UNAS) price ops at this dataset's input size.
    strategy.set_op_costs(&net.op_costs(w_train.image_shape()))?;
    // UNAS's latency penalty times the ops here, on the search device.
    if let Some(options) = strategy.latency_request() {
        let (table, _) =
            crate::nas::latency::load_or_measure(&net, w_train.image_shape(), device, &options)?;
        strategy.set_latency_table(table)?;
    }
    let mut sgd = Sgd::new(vs.variables(), sc.weights.sgd());
    let mut state = LoopState {
        epochs_done: 0,
        iteration: 0,
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        search_cursor: 0,
        search_order: Vec::new(),
    };
    if run.resume {
        let ckpt = run.run_dir.latest_checkpoint()?.ok_or_else(|| {
            SupervisedError::Invalid(format!(
                "{} has no complete checkpoint to resume from",
                run.run_dir.root.display()
            ))
        })?;
        load_weights(&mut vs, &ckpt.join(WEIGHTS_FILE))?;
        arch.load(ckpt.join(ALPHAS_FILE))?;
        sgd.load(&ckpt.join(SGD_FILE))?;
        strategy.load(&ckpt)?;
        let path = ckpt.join(LOOP_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        state = serde_json::from_slice(&bytes)
            .map_err(|e| SupervisedError::Invalid(format!("{}: {e}", path.display())))?;
    }

    let epochs = sc.epochs;
    let per_epoch = w_train.len().div_ceil(sc.batch_size.max(1)) as u64;
    let total = epochs as u64 * per_epoch;
    let mut epochs_here = 0;
    let mut interrupted = false;
    let mut val_accuracy = f64::NAN;
    while state.epochs_done < epochs {
        if run.max_epochs.is_some_and(|m| epochs_here >= m) {
            break;
        }
        let epoch = state.epochs_done;
        let lr = sc.weights.lr_at(epoch, epochs);
        sgd.set_lr(lr);
        strategy.begin_epoch(epoch, epochs);
        let batches = epoch_batches(w_train.len(), sc.batch_size, true, &mut state.rng);
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0i64, 0usize);
        let mut arch_stats = ArchStepStats::default();
        let mut arch_steps = 0u32;
        for index in &batches {
            let (x, y) = batch(w_train, index, &sc.augment, &mut state.rng);
            let arch_first = !strategy.arch_step_follows_weight_step();
            if arch_first {
                arch_step_of_iteration(
                    strategy.as_mut(),
                    &arch,
                    (&net, &vs, &sgd),
                    (&x, &y),
                    &mut state,
                    (w_search, sc),
                    (&mut arch_stats, &mut arch_steps),
                )?;
            }
            let weights = strategy.op_weights(&arch, Phase::Weights)?;
            let WeightStep {
                logits,
                loss: loss_value,
                grad_norm_sq,
            } = weight_step(&net, &weights, &mut sgd, &x, &y, sc.weights.grad_clip);
            if !loss_value.is_finite() {
                return Err(SupervisedError::NonFinite {
                    epoch,
                    what: "training loss".into(),
                    value: loss_value,
                });
            }
            let report = WeightStepReport {
                iteration: state.iteration,
                loss: loss_value,
                grad_norm_sq,
                lr,
            };
            if let Some(s) = strategy.after_weight_step(&arch, &report)? {
                arch_stats.loss += s.loss;
                arch_stats.grad_norm += s.grad_norm;
                arch_steps += 1;
            }
            if !arch_first {
                arch_step_of_iteration(
                    strategy.as_mut(),
                    &arch,
                    (&net, &vs, &sgd),
                    (&x, &y),
                    &mut state,
                    (w_search, sc),
                    (&mut arch_stats, &mut arch_steps),
                )?;
            }
            loss_sum += loss_value * index.len() as f64;
            hits += correct(&logits, &y);
            seen += index.len();
            state.iteration += 1;
            run.progress.update(
                state.iteration,
                total,
                &format!(
                    "epoch {}/{epochs} | loss {:.3} | acc {:.3}",
                    epoch + 1,
                    loss_sum / seen as f64,
                    hits as f64 / seen as f64
                ),
            );
        }
        let (val_loss, val_acc) =
            evaluate_supernet(&net, &arch, strategy.as_mut(), w_search, sc.batch_size)?;
        val_accuracy = val_acc;
        state.epochs_done += 1;
        epochs_here += 1;
        let step = state.epochs_done as i64;
        let sink = &mut *run.sink;
        sink.scalars(
            &[
                ("search/train_loss", loss_sum / seen.max(1) as f64),
                ("search/train_accuracy", hits as f64 / seen.max(1) as f64),
                ("search/val_loss", val_loss),
                ("search/val_accuracy", val_acc),
                ("search/lr", lr),
            ],
            step,
        );
        if arch_steps > 0 {
            sink.scalar(
                "search/arch_loss",
                arch_stats.loss / arch_steps as f64,
                step,
            );
            sink.scalar(
                "search/arch_grad_norm",
                arch_stats.grad_norm / arch_steps as f64,
                step,
            );
        }
        for (name, value) in strategy.scalars() {
            sink.scalar(&format!("strategy/{name}"), value, step);
        }
        log_alphas(sink, &arch, strategy.as_ref(), step)?;
        let genotype = strategy.derive(&arch)?;
        sink.text(
            "genotype",
            &format!("`{}`", genotype.to_darts_string()),
            step,
        );
        sink.flush();

        let stop = run.stop.load(Ordering::SeqCst);
        if stop
            || state
                .epochs_done
                .is_multiple_of(config.checkpoint.every.max(1))
            || state.epochs_done == epochs
        {
            let iteration = state.epochs_done as u64;
            run.run_dir
                .save_checkpoint(iteration, config.checkpoint.keep, |dir| {
                    let wrap = |e: SupervisedError| super::TrainError::Checkpoint {
                        path: dir.to_path_buf(),
                        reason: e.to_string(),
                    };
                    (|| -> Result<(), SupervisedError> {
                        vs.save(dir.join(WEIGHTS_FILE))?;
                        arch.save(dir.join(ALPHAS_FILE))?;
                        sgd.save(&dir.join(SGD_FILE))?;
                        strategy.save(dir)?;
                        let json = serde_json::to_vec_pretty(&state)
                            .map_err(|e| SupervisedError::Invalid(e.to_string()))?;
                        std::fs::write(dir.join(LOOP_FILE), json).map_err(io(&dir.join(LOOP_FILE)))
                    })()
                    .map_err(wrap)
                })?;
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    let genotype = strategy.derive(&arch)?;
    run.progress.finish(&format!(
        "search: {} epochs, val accuracy {val_accuracy:.4}",
        state.epochs_done
    ));
    Ok((genotype, state.epochs_done, val_accuracy, interrupted))
}

const WEIGHTS_FILE: &str = "weights.safetensors";
const ALPHAS_FILE: &str = "alphas.safetensors";
const SGD_FILE: &str = "sgd.safetensors";
const LOOP_FILE: &str = "loop.json";

fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<(), SupervisedError> {
    vs.load(path).map_err(|e| {
        SupervisedError::Invalid(format!(
            "{}: {e} (a checkpoint of another network?)",
            path.display()
        ))
    })
}

/// The iteration's alpha step when the strategy wants one: a search batch (augmented like the
/// train batch: `train_search.py` builds both queues from the one dataset with
/// `train_transform`) and the strategy's `arch_step` on the two batches; its statistics are
/// added to `sums`.
#[allow(clippy::too_many_arguments)]
fn arch_step_of_iteration(
    strategy: &mut dyn crate::search::SearchStrategy,
    arch: &ArchParams,
    (net, vs, sgd): (&dyn Supernet, &nn::VarStore, &Sgd),
    (x, y): (&Tensor, &Tensor),
    state: &mut LoopState,
    (w_search, sc): (&Dataset, &SearchLoopConfig),
    (stats, steps): (&mut ArchStepStats, &mut u32),
) -> Result<(), SupervisedError> {
    if !strategy.wants_arch_step(state.iteration) {
        return Ok(());
    }
    let search_index = next_search_batch(state, w_search.len(), sc.batch_size);
    let search = batch(w_search, &search_index, &sc.augment, &mut state.rng);
    let mut objective = VisionObjective {
        net,
        vs,
        sgd,
        train: (x.shallow_clone(), y.shallow_clone()),
        search,
    };
    let s = strategy.arch_step(arch, &mut objective)?;
    stats.loss += s.loss;
    stats.grad_norm += s.grad_norm;
    *steps += 1;
    Ok(())
}

/// The next search batch, cycling through a reshuffled search split.
fn next_search_batch(state: &mut LoopState, len: usize, batch_size: usize) -> Vec<i64> {
    let bs = batch_size.min(len).max(1);
    if state.search_order.len() != len || state.search_cursor + bs > len {
        state.search_order = epoch_batches(len, len, true, &mut state.rng).concat();
        state.search_cursor = 0;
    }
    let out = state.search_order[state.search_cursor..state.search_cursor + bs].to_vec();
    state.search_cursor += bs;
    out
}

/// Mean loss and accuracy of the supernet with the strategy's evaluation weights.
fn evaluate_supernet(
    net: &dyn Supernet,
    arch: &ArchParams,
    strategy: &mut dyn SearchStrategy,
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, f64), SupervisedError> {
    tch::no_grad(|| {
        let (mut loss, mut hits) = (0.0, 0i64);
        for start in (0..data.len()).step_by(batch_size.max(1)) {
            let n = batch_size.min(data.len() - start) as i64;
            let x = data.images.narrow(0, start as i64, n);
            let y = data.labels.narrow(0, start as i64, n);
            let weights = strategy.op_weights(arch, Phase::Eval)?;
            let logits = net.forward_with(&x, &weights, false);
            loss += cross_entropy(&logits, &y).double_value(&[]) * n as f64;
            hits += correct(&logits, &y);
        }
        let len = data.len().max(1) as f64;
        Ok((loss / len, hits as f64 / len))
    })
}

/// Per edge and op the strategy's expected op weight (`softmax(alpha)` for most strategies) as
/// scalars (`alpha/{cell}/e{edge}_{from}to{node}/{op}`), and one heatmap image per cell type
/// (rows: edges, columns: ops; white 0 -> dark blue 1).
pub fn log_alphas(
    sink: &mut dyn MetricsSink,
    arch: &ArchParams,
    strategy: &dyn SearchStrategy,
    step: i64,
) -> Result<(), SupervisedError> {
    let space = arch.space();
    let ops = space.op_set.ops();
    let cells = ["normal", "reduce"];
    for (cell, probs) in cells.into_iter().zip(strategy.expected_op_weights(arch)?) {
        for edge in space.edges() {
            for (o, op) in ops.iter().enumerate() {
                let tag = format!(
                    "alpha/{cell}/e{:02}_{}to{}/{}",
                    edge.index,
                    edge.from,
                    edge.node + space.num_inputs,
                    op.name()
                );
                sink.scalar(&tag, probs[edge.index][o], step);
            }
        }
        let (rgb, h, w) = crate::media::probability_heatmap(&probs, 12);
        sink.image(&format!("alpha_heatmap/{cell}"), &rgb, h, w, step);
    }
    Ok(())
}

/// DARTS's random-search baseline: `num_candidates` genotypes, each trained from scratch for
/// `epochs_per_candidate` epochs at the search network's size on the train split and scored on
/// the search split; the best is kept.
fn random_from_scratch(
    run: &mut SearchRun<'_>,
    device: Device,
    w_train: &Dataset,
    w_search: &Dataset,
) -> Result<Outcome, SupervisedError> {
    let config = run.config;
    let StrategyConfig::Random(params) = &config.search.strategy else {
        return Err(SupervisedError::Invalid(
            "random_from_scratch needs the random strategy".into(),
        ));
    };
    let probe = ArchParams::new(
        Device::Cpu,
        DartsSearchNet::new(nn::VarStore::new(Device::Cpu).root(), &config.network)?.space(),
        true,
        AlphaInit::default(),
    )?;
    let mut sampler = RandomSearch::new(&probe, params.clone(), config.seed)?;
    let net_config = DartsEvalConfig {
        c: config.network.c,
        layers: config.network.layers,
        num_classes: config.network.num_classes,
        auxiliary: false,
        drop_path_prob: 0.0,
        stem_multiplier: config.network.stem_multiplier,
        in_channels: config.network.in_channels,
        image_size: w_train.image_shape()[1],
    };
    let train_config = TrainArchConfig {
        network: net_config,
        epochs: params.epochs_per_candidate,
        batch_size: config.search.batch_size,
        weights: config.search.weights.clone(),
        augment: config.search.augment,
        auxiliary_weight: 0.0,
    };
    let mut best: Option<(f64, Genotype)> = None;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    for k in 0..params.num_candidates {
        if run.stop.load(Ordering::SeqCst) {
            break;
        }
        let genotype = sampler.sample_genotype();
        let result = train_genotype(
            &train_config,
            &genotype,
            device,
            w_train,
            w_search,
            &mut rng,
            &mut *run.progress,
        )?;
        run.sink.scalar(
            "random/candidate_val_accuracy",
            result.test_accuracy,
            k as i64 + 1,
        );
        run.sink.text(
            "random/candidate",
            &format!("{:.4}: `{}`", result.test_accuracy, genotype),
            k as i64 + 1,
        );
        if best
            .as_ref()
            .is_none_or(|(acc, _)| result.test_accuracy > *acc)
        {
            best = Some((result.test_accuracy, genotype));
        }
        if let Some((acc, _)) = &best {
            run.sink
                .scalar("random/best_val_accuracy", *acc, k as i64 + 1);
        }
        run.sink.flush();
    }
    let interrupted = run.stop.load(Ordering::SeqCst);
    let (acc, genotype) = best
        .ok_or_else(|| SupervisedError::Invalid("random search evaluated no candidate".into()))?;
    run.progress
        .finish(&format!("random search: best val accuracy {acc:.4}"));
    Ok((genotype, params.num_candidates, acc, interrupted))
}

// ---------------------------------------------------------------------------------------------
// Retraining a genotype

/// How a retraining ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainArchSummary {
    pub genotype: String,
    /// Epochs trained so far (all of `train_arch.epochs` unless interrupted).
    pub epochs: usize,
    pub parameters: i64,
    pub train_accuracy: f64,
    /// Accuracy on the held-out test set.
    pub test_accuracy: f64,
    pub seconds: f64,
    /// Stopped early (Ctrl-C or `max_epochs`); a checkpoint holds the state to resume from.
    pub interrupted: bool,
}

/// The summary `train_arch_run` writes into its run directory.
pub const TRAIN_ARCH_SUMMARY: &str = "train_arch_summary.json";

/// Trains `genotype` from scratch with `config.train_arch` on the training set and reports
/// the test accuracy (DARTS `train.py`), without checkpoints. Writes `weights.safetensors` and
/// `train_arch_summary.json` into `out_dir` when given. [`train_arch_run`] is the same with
/// checkpoints and resume.
pub fn train_arch(
    config: &SupervisedConfig,
    genotype: &Genotype,
    out_dir: Option<&Path>,
    sink: &mut dyn MetricsSink,
    progress: &mut dyn Progress,
) -> Result<TrainArchSummary, SupervisedError> {
    train_arch_impl(config, genotype, out_dir, sink, progress, None)
}

/// One call of [`train_arch_run`].
pub struct TrainArchRun<'a> {
    pub config: &'a SupervisedConfig,
    pub genotype: &'a Genotype,
    /// Receives `genotype.json`, `checkpoints/`, the final `weights.safetensors` and the
    /// summary. The caller writes `config.toml` into it (as for [`search`]).
    pub run_dir: &'a RunDir,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    /// Checked after every epoch: when set, a checkpoint is written and the run returns.
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// [`train_arch`] with a checkpoint every `config.checkpoint.every` epochs (and on stop) and
/// exact resume: weights, BatchNorm statistics, SGD momentum, the loop's RNG (shuffling,
/// augmentation, drop-path seeds) and the epoch counter are restored, so an interrupted and
/// resumed run computes the same numbers as an uninterrupted one.
pub fn train_arch_run(run: TrainArchRun<'_>) -> Result<TrainArchSummary, SupervisedError> {
    let root = run.run_dir.root.clone();
    if !run.resume {
        let path = root.join(GENOTYPE_JSON);
        run.genotype.save_json(&path)?;
    }
    let checkpoints = Checkpointing {
        run_dir: run.run_dir,
        resume: run.resume,
        every: run.config.checkpoint.every.max(1),
        keep: run.config.checkpoint.keep,
        stop: run.stop,
        max_epochs: run.max_epochs,
    };
    train_arch_impl(
        run.config,
        run.genotype,
        Some(&root),
        run.sink,
        run.progress,
        Some(checkpoints),
    )
}

fn train_arch_impl(
    config: &SupervisedConfig,
    genotype: &Genotype,
    out_dir: Option<&Path>,
    sink: &mut dyn MetricsSink,
    progress: &mut dyn Progress,
    checkpoints: Option<Checkpointing<'_>>,
) -> Result<TrainArchSummary, SupervisedError> {
    let started = Instant::now();
    let device = setup(config)?;
    let (train, test) = config.data.load()?;
    let (train, test) = (train.to_device(device), test.to_device(device));
    let ta = &config.train_arch;
    check_shapes(
        "train_arch.network",
        ta.network.in_channels,
        ta.network.num_classes,
        &train,
    )?;
    if !checkpoints.as_ref().is_some_and(|c| c.resume) {
        sink.text("genotype", &format!("`{genotype}`"), 0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut result = retrain(
        Retrain {
            ta,
            genotype,
            device,
            train: &train,
            test: &test,
            progress,
            sink: Some(sink),
            out_dir,
            checkpoints,
        },
        &mut rng,
    )?;
    result.seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = out_dir {
        let path = dir.join(TRAIN_ARCH_SUMMARY);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&result).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    Ok(result)
}

/// Checkpoint settings of a retraining run.
struct Checkpointing<'a> {
    run_dir: &'a RunDir,
    resume: bool,
    every: usize,
    keep: usize,
    stop: &'a AtomicBool,
    max_epochs: Option<usize>,
}

/// Retraining loop state beyond the weights and SGD buffers, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetrainState {
    epochs_done: usize,
    /// Minibatches done (progress bar).
    step: u64,
    rng: ChaCha8Rng,
    train_accuracy: f64,
}

/// One retraining: the network, its data and where results go.
struct Retrain<'a> {
    ta: &'a TrainArchConfig,
    genotype: &'a Genotype,
    device: Device,
    train: &'a Dataset,
    /// Test set (train-arch) or search split (random search's candidate scoring).
    test: &'a Dataset,
    progress: &'a mut dyn Progress,
    /// Per-epoch scalars when given.
    sink: Option<&'a mut dyn MetricsSink>,
    /// Final weights go here when given.
    out_dir: Option<&'a Path>,
    checkpoints: Option<Checkpointing<'a>>,
}

fn train_genotype(
    ta: &TrainArchConfig,
    genotype: &Genotype,
    device: Device,
    train: &Dataset,
    test: &Dataset,
    rng: &mut ChaCha8Rng,
    progress: &mut dyn Progress,
) -> Result<TrainArchSummary, SupervisedError> {
    retrain(
        Retrain {
            ta,
            genotype,
            device,
            train,
            test,
            progress,
            sink: None,
            out_dir: None,
            checkpoints: None,
        },
        rng,
    )
}

const RETRAIN_STATE_FILE: &str = "retrain.json";

/// DARTS `train.py`: SGD with cosine lr per epoch, drop-path ramped linearly, auxiliary loss,
/// gradient clipping. Draws shuffling and augmentation from `rng` (left where the run ended).
fn retrain(r: Retrain<'_>, rng: &mut ChaCha8Rng) -> Result<TrainArchSummary, SupervisedError> {
    let Retrain {
        ta,
        genotype,
        device,
        train,
        test,
        progress,
        mut sink,
        out_dir,
        checkpoints,
    } = r;
    let mut vs = nn::VarStore::new(device);
    let mut net = DartsEvalNet::new(vs.root() / "net", &ta.network, genotype)?;
    let mut sgd = Sgd::new(vs.variables(), ta.weights.sgd());
    let parameters = crate::nas::count_parameters(&vs, |name| !name.contains("auxiliary"));
    let mut state = RetrainState {
        epochs_done: 0,
        step: 0,
        rng: rng.clone(),
        train_accuracy: 0.0,
    };
    if let Some(ck) = checkpoints.as_ref().filter(|c| c.resume) {
        let dir = ck.run_dir.latest_checkpoint()?.ok_or_else(|| {
            SupervisedError::Invalid(format!(
                "{} has no complete checkpoint to resume from",
                ck.run_dir.root.display()
            ))
        })?;
        load_weights(&mut vs, &dir.join(WEIGHTS_FILE))?;
        sgd.load(&dir.join(SGD_FILE))?;
        let path = dir.join(RETRAIN_STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        state = serde_json::from_slice(&bytes)
            .map_err(|e| SupervisedError::Invalid(format!("{}: {e}", path.display())))?;
    }
    let total = (ta.epochs * train.len().div_ceil(ta.batch_size.max(1))) as u64;
    let mut epochs_here = 0;
    let mut interrupted = false;
    while state.epochs_done < ta.epochs {
        let epoch = state.epochs_done;
        sgd.set_lr(ta.weights.lr_at(epoch, ta.epochs));
        // DARTS ramps drop-path linearly from 0 over training.
        net.set_drop_path_prob(ta.network.drop_path_prob * epoch as f64 / ta.epochs as f64);
        // Drop-path masks come from libtorch's global generator, whose state tch cannot read
        // or write; reseeding it from the loop's (checkpointed) RNG at each epoch makes a
        // resumed run draw the same masks. The official code lets one stream run instead.
        tch::manual_seed(state.rng.gen_range(0..i64::MAX));
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0i64, 0usize);
        for index in epoch_batches(train.len(), ta.batch_size, true, &mut state.rng) {
            let (x, y) = batch(train, &index, &ta.augment, &mut state.rng);
            sgd.zero_grad();
            let (logits, aux) = net.forward_t(&x, true);
            let mut loss = cross_entropy(&logits, &y);
            if let Some(aux) = aux {
                loss += cross_entropy(&aux, &y) * ta.auxiliary_weight;
            }
            loss.backward();
            clip_grad_norm(&sgd.parameters(), ta.weights.grad_clip);
            sgd.step();
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(SupervisedError::NonFinite {
                    epoch,
                    what: "training loss".into(),
                    value,
                });
            }
            loss_sum += value * index.len() as f64;
            hits += correct(&logits, &y);
            seen += index.len();
            state.step += 1;
            progress.update(
                state.step,
                total,
                &format!(
                    "epoch {}/{} | loss {:.3} | acc {:.3}",
                    epoch + 1,
                    ta.epochs,
                    loss_sum / seen as f64,
                    hits as f64 / seen as f64
                ),
            );
        }
        state.train_accuracy = hits as f64 / seen.max(1) as f64;
        state.epochs_done += 1;
        epochs_here += 1;
        if let Some(sink) = sink.as_deref_mut() {
            let test_acc = accuracy(&net, test, ta.batch_size);
            sink.scalars(
                &[
                    ("train_arch/train_loss", loss_sum / seen.max(1) as f64),
                    ("train_arch/train_accuracy", state.train_accuracy),
                    ("train_arch/test_accuracy", test_acc),
                    ("train_arch/lr", sgd.config.lr),
                ],
                state.epochs_done as i64,
            );
            sink.flush();
        }
        if let Some(ck) = &checkpoints {
            let done = state.epochs_done == ta.epochs;
            let stop = !done
                && (ck.stop.load(Ordering::SeqCst)
                    || ck.max_epochs.is_some_and(|m| epochs_here >= m));
            if stop || done || state.epochs_done.is_multiple_of(ck.every) {
                save_retrain_checkpoint(ck, &vs, &sgd, &state)?;
            }
            if stop {
                interrupted = true;
                break;
            }
        }
    }
    *rng = state.rng.clone();
    let test_accuracy = accuracy(&net, test, ta.batch_size);
    if let Some(dir) = out_dir.filter(|_| !interrupted) {
        vs.save(dir.join(WEIGHTS_FILE))?;
    }
    progress.finish(&format!(
        "trained {} of {} epochs: test accuracy {test_accuracy:.4}",
        state.epochs_done, ta.epochs
    ));
    Ok(TrainArchSummary {
        genotype: genotype.to_darts_string(),
        epochs: state.epochs_done,
        parameters,
        train_accuracy: state.train_accuracy,
        test_accuracy,
        seconds: 0.0,
        interrupted,
    })
}

fn save_retrain_checkpoint(
    ck: &Checkpointing<'_>,
    vs: &nn::VarStore,
    sgd: &Sgd,
    state: &RetrainState,
) -> Result<(), SupervisedError> {
    ck.run_dir
        .save_checkpoint(state.epochs_done as u64, ck.keep, |dir| {
            (|| -> Result<(), SupervisedError> {
                vs.save(dir.join(WEIGHTS_FILE))?;
                sgd.save(&dir.join(SGD_FILE))?;
                let json = serde_json::to_vec_pretty(state)
                    .map_err(|e| SupervisedError::Invalid(e.to_string()))?;
                let path = dir.join(RETRAIN_STATE_FILE);
                std::fs::write(&path, json).map_err(io(&path))
            })()
            .map_err(|e| super::TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })
        })?;
    Ok(())
}

fn accuracy(net: &DartsEvalNet, data: &Dataset, batch_size: usize) -> f64 {
    tch::no_grad(|| {
        let mut hits = 0i64;
        for start in (0..data.len()).step_by(batch_size.max(1)) {
            let n = batch_size.min(data.len() - start) as i64;
            let x = data.images.narrow(0, start as i64, n);
            let (logits, _) = net.forward_t(&x, false);
            hits += correct(&logits, &data.labels.narrow(0, start as i64, n));
        }
        hits as f64 / data.len().max(1) as f64
    })
}

/// A network of the derived cells runs forward on `[N, C, H, W]` (used by tests and as a
/// sanity check after a search).
pub fn derived_network_forward(
    genotype: &Genotype,
    config: &DartsEvalConfig,
    x: &Tensor,
) -> Result<Tensor, SupervisedError> {
    let vs = nn::VarStore::new(x.device());
    let net = DartsEvalNet::new(vs.root(), config, genotype)?;
    Ok(tch::no_grad(|| net.forward_t(x, false).0))
}

/// Which cell types a genotype has, for `genotype show`.
pub fn cell_types(genotype: &Genotype) -> Vec<CellType> {
    let mut out = vec![CellType::Normal];
    if !genotype.reduce.is_empty() {
        out.push(CellType::Reduce);
    }
    out
}
