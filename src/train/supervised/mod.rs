//! Supervised architecture search and retraining on image classification, after the official
//! DARTS code (Liu et al., ICLR 2019: `train_search.py`, `train.py`): the search loop (alpha
//! step on a search batch through a [`SearchStrategy`](crate::search::SearchStrategy), then an
//! SGD weight step on the train batch), the from-scratch random-search baseline (Li &
//! Talwalkar 2019), and `train-arch` (the derived network trained from scratch with cutout,
//! drop-path and the auxiliary head).
//!
//! One concern per file: [`config`] (what a run reads), [`objective`] (the loss, the
//! [`Objective`](crate::search::Objective) the strategies see, gradient clipping),
//! `search` (the bilevel loop), `search_checkpoint` (its checkpoints and resume), `random`
//! (random search from scratch), `retrain` (`train-arch` and the candidates' training).

use std::path::Path;

use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Tensor};

use super::TrainError;
use crate::data::{Augment, DataError, Dataset};
use crate::nas::{CellType, DartsEvalConfig, DartsEvalNet, Genotype, NasError};
use crate::search::SearchError;

pub mod config;
pub mod micro;
pub mod objective;
mod random;
mod retrain;
mod search;
mod search_checkpoint;

pub use config::{
    DataConfig, DatasetKind, SearchLoopConfig, SupervisedConfig, TrainArchConfig, WeightOptimConfig,
};
pub use objective::{cross_entropy, cross_entropy_per_example, VisionObjective};
pub use retrain::{train_arch, train_arch_run, TrainArchRun, TrainArchSummary, TRAIN_ARCH_SUMMARY};
pub use search::{
    log_alphas, search, weight_step, SearchRun, SearchSummary, WeightStep, GENOTYPE_JSON,
    GENOTYPE_TXT,
};

/// Errors of a supervised search or retraining run: the train layer's ([`TrainError`], which
/// every lower layer converts into) and the two only the vision loops have.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error(transparent)]
    Run(#[from] TrainError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{what} became {value} in epoch {epoch}; the run stopped. Try a lower learning rate.")]
    NonFinite {
        epoch: usize,
        what: String,
        value: f64,
    },
}

/// The layers below reach a supervised run through the train layer's variants.
macro_rules! through_train_error {
    ($($source:ty),*) => {$(
        impl From<$source> for SupervisedError {
            fn from(e: $source) -> Self {
                SupervisedError::Run(TrainError::from(e))
            }
        }
    )*};
}

through_train_error!(
    SearchError,
    NasError,
    crate::config::ConfigError,
    crate::device::DeviceError,
    tch::TchError,
    crate::precision::PrecisionError
);

impl SupervisedError {
    /// A run that cannot work as configured ([`TrainError::Invalid`]).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        SupervisedError::Run(TrainError::Invalid(message.into()))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SupervisedError + '_ {
    move |source| {
        SupervisedError::Run(TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Weights (and BatchNorm statistics) in a checkpoint or a finished run directory.
const WEIGHTS_FILE: &str = "weights.safetensors";
/// The SGD momentum buffers in a checkpoint.
const SGD_FILE: &str = "sgd.safetensors";

fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<(), SupervisedError> {
    vs.load(path).map_err(|e| {
        SupervisedError::invalid(format!(
            "{}: {e} (a checkpoint of another network?)",
            path.display()
        ))
    })
}

/// Reads a loop's JSON state from a checkpoint.
fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SupervisedError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| SupervisedError::invalid(format!("{}: {e}", path.display())))
}

/// Writes a loop's JSON state into a checkpoint.
fn write_state<T: serde::Serialize>(path: &Path, state: &T) -> Result<(), SupervisedError> {
    let json =
        serde_json::to_vec_pretty(state).map_err(|e| SupervisedError::invalid(e.to_string()))?;
    std::fs::write(path, json).map_err(io(path))
}

/// Wraps a failure while writing a checkpoint into the run directory's error.
fn checkpoint_error(dir: &Path) -> impl FnOnce(SupervisedError) -> super::TrainError + '_ {
    move |e| super::TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The device, libtorch's threads and its seed, as `config` asks.
fn setup(config: &SupervisedConfig) -> Result<Device, SupervisedError> {
    let device = crate::device::parse_device(&config.device)?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads);
    }
    tch::manual_seed(config.seed as i64);
    Ok(device)
}

/// The run's precision and layout (the `precision` and `layout` keys, [`crate::precision`]):
/// printed, recorded in `run_dir` (`compute.json`, and the resolved values in `config.toml`)
/// when given, reused on resume. `pass` runs one forward + backward of the run's network for
/// the probe (in eval mode, so that no BatchNorm statistics move); None: the device rule.
fn choose_compute(
    config: &config::SupervisedConfig,
    device: Device,
    run_dir: Option<&Path>,
    resume: bool,
    pass: Option<&mut dyn FnMut() -> Result<(), String>>,
) -> Result<crate::precision::ComputePolicy, SupervisedError> {
    use crate::precision::{policy_for_run, timed, Probe};
    let mut probe = pass.map(|pass| move |c: crate::precision::Compute| timed(c, &mut *pass));
    let scratch;
    let dir = match run_dir {
        Some(d) => d,
        None => {
            scratch = std::env::temp_dir();
            scratch.as_path()
        }
    };
    let policy = policy_for_run(
        config.precision,
        config.layout,
        device,
        dir,
        resume && run_dir.is_some(),
        run_dir.is_some(),
        probe.as_mut().map(|p| p as &mut Probe<'_>),
    )?;
    if let Some(dir) = run_dir {
        let resolved = config::SupervisedConfig {
            precision: policy.precision.into(),
            layout: policy.layout.into(),
            ..config.clone()
        };
        crate::config::save_resolved_config(&resolved, dir)?;
    }
    Ok(policy)
}

fn check_shapes(
    what: &str,
    in_channels: i64,
    num_classes: i64,
    data: &Dataset,
) -> Result<(), SupervisedError> {
    let [c, _, _] = data.image_shape();
    if in_channels != c || num_classes != data.num_classes {
        return Err(SupervisedError::invalid(format!(
            "{what}.in_channels = {in_channels} and {what}.num_classes = {num_classes}, but the data has {c} channels and {} \
             classes; set them to match",
            data.num_classes
        )));
    }
    Ok(())
}

/// The examples `index` of `data`, augmented with draws from `rng`.
fn batch(
    data: &Dataset,
    index: &[i64],
    augment: &Augment,
    rng: &mut ChaCha8Rng,
) -> (Tensor, Tensor) {
    let sub = data.subset(index);
    (augment.apply(&sub.images, rng), sub.labels)
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
