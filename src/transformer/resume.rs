//! Checkpoints of the transformer search and exact resume (`rl-darts search --resume RUN_DIR`),
//! in the run-directory layout of the vision search: `checkpoints/iter_<epochs done>/`, written
//! under a temporary name and renamed into place once complete ([`RunDir::save_checkpoint`]).
//!
//! A supernet checkpoint holds the weights, the alphas, the SGD momentum buffers, the
//! strategy's own state (its alpha optimizer, sampler RNG, temperature) and the loop's state
//! ([`SupernetState`]: epochs and iterations done, the batch RNG, the last validation
//! metrics). Nothing else in the loop is random: batches come from the loop's ChaCha RNG,
//! the strategies sample from their own checkpointed RNGs, and there is no dropout, so a
//! resumed run computes bit for bit what the uninterrupted run computes. A random search from
//! scratch checkpoints after each candidate ([`RandomState`]); each candidate's initial
//! weights are seeded from its index, so a resumed search trains the same candidates the same
//! way.
//!
//! A retraining (`rl-darts train-arch --resume OUT`) checkpoints after every epoch: weights,
//! Adam's moments and step count, and [`RetrainState`] (epochs and steps done, the batch RNG,
//! the last validation metrics). Its initial weights come from a seed, and nothing else in its
//! loop is random, so it too resumes bit for bit.

use std::path::Path;

use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::nn;

use super::tasks::SeqMetrics;
use super::TransformerError;
use crate::nas::{ArchParams, Genotype};
use crate::search::{Adam, SearchStrategy, Sgd};
use crate::train::run_dir::RunDir;
use crate::train::TrainError;

const WEIGHTS_FILE: &str = "weights.safetensors";
const ALPHAS_FILE: &str = "alphas.safetensors";
const SGD_FILE: &str = "sgd.safetensors";
const LOOP_FILE: &str = "loop.json";
const ADAM_FILE: &str = "adam.safetensors";

/// The supernet search loop's state beyond weights, alphas and optimizers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupernetState {
    pub epochs_done: usize,
    /// Search iterations done (the strategies' global step).
    pub iteration: u64,
    /// Draws the train and validation batches.
    pub rng: ChaCha8Rng,
    /// The supernet on the validation split after the last epoch done.
    pub val: SeqMetrics,
    /// Search-health measurements so far (absent from checkpoints written before search
    /// health existed).
    #[serde(default)]
    pub health: crate::train::health::HealthMonitor,
}

/// The random search's state beyond its sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomState {
    pub candidates_done: usize,
    /// Training iterations of all candidates done.
    pub iterations: u64,
    /// Wall time spent on the candidates done (the budget of `search.random_budget_seconds`).
    pub seconds: f64,
    /// Best candidate so far and its validation metrics.
    pub best: Option<(Genotype, SeqMetrics)>,
}

/// The retraining loop's state beyond weights and Adam.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrainState {
    pub epochs_done: usize,
    /// Adam steps taken (TensorBoard's x axis).
    pub step: u64,
    /// Draws the training batches.
    pub rng: ChaCha8Rng,
    /// Validation metrics after the last epoch done.
    pub val: SeqMetrics,
    /// Wall time of the epochs done, over every call.
    pub seconds: f64,
}

/// Writes a retraining checkpoint named after `state.epochs_done`, keeping the newest `keep`.
pub fn save_retrain(
    run_dir: &RunDir,
    keep: usize,
    (vs, adam): (&nn::VarStore, &Adam),
    state: &RetrainState,
) -> Result<(), TransformerError> {
    run_dir.save_checkpoint(state.epochs_done as u64, keep, |dir| {
        wrap(dir, || {
            vs.save(dir.join(WEIGHTS_FILE))?;
            adam.save(&dir.join(ADAM_FILE))?;
            write_json(dir, state)
        })
    })?;
    Ok(())
}

/// Restores the newest retraining checkpoint of `run_dir` into `vs` and `adam`.
pub fn load_retrain(
    run_dir: &RunDir,
    vs: &mut nn::VarStore,
    adam: &mut Adam,
) -> Result<RetrainState, TransformerError> {
    let dir = latest(run_dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    vs.load(&weights).map_err(|e| {
        TransformerError::Config(format!(
            "{}: {e} (a checkpoint of another network?)",
            weights.display()
        ))
    })?;
    adam.load(&dir.join(ADAM_FILE))?;
    read_json(&dir)
}

/// What a supernet checkpoint restores into.
pub struct SupernetParts<'a> {
    pub vs: &'a mut nn::VarStore,
    pub arch: &'a mut ArchParams,
    pub sgd: &'a mut Sgd,
    pub strategy: &'a mut dyn SearchStrategy,
}

/// Writes a checkpoint named after `state.epochs_done`, keeping the newest `keep`.
pub fn save_supernet(
    run_dir: &RunDir,
    keep: usize,
    (vs, arch, sgd, strategy): (&nn::VarStore, &ArchParams, &Sgd, &dyn SearchStrategy),
    state: &SupernetState,
) -> Result<(), TransformerError> {
    run_dir.save_checkpoint(state.epochs_done as u64, keep, |dir| {
        wrap(dir, || {
            vs.save(dir.join(WEIGHTS_FILE))?;
            arch.save(dir.join(ALPHAS_FILE))?;
            sgd.save(&dir.join(SGD_FILE))?;
            strategy.save(dir)?;
            write_json(dir, state)
        })
    })?;
    Ok(())
}

/// Restores the newest checkpoint of `run_dir` into `parts` and returns the loop state.
pub fn load_supernet(
    run_dir: &RunDir,
    parts: SupernetParts<'_>,
) -> Result<SupernetState, TransformerError> {
    let dir = latest(run_dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    parts.vs.load(&weights).map_err(|e| {
        TransformerError::Config(format!(
            "{}: {e} (a checkpoint of another network?)",
            weights.display()
        ))
    })?;
    parts.arch.load(dir.join(ALPHAS_FILE))?;
    parts.sgd.load(&dir.join(SGD_FILE))?;
    parts.strategy.load(&dir)?;
    read_json(&dir)
}

/// Writes a checkpoint named after `state.candidates_done`.
pub fn save_random(
    run_dir: &RunDir,
    keep: usize,
    sampler: &dyn SearchStrategy,
    state: &RandomState,
) -> Result<(), TransformerError> {
    run_dir.save_checkpoint(state.candidates_done as u64, keep, |dir| {
        wrap(dir, || {
            sampler.save(dir)?;
            write_json(dir, state)
        })
    })?;
    Ok(())
}

/// Restores the sampler from the newest checkpoint and returns the loop state.
pub fn load_random(
    run_dir: &RunDir,
    sampler: &mut dyn SearchStrategy,
) -> Result<RandomState, TransformerError> {
    let dir = latest(run_dir)?;
    sampler.load(&dir)?;
    read_json(&dir)
}

fn latest(run_dir: &RunDir) -> Result<std::path::PathBuf, TransformerError> {
    run_dir.latest_checkpoint()?.ok_or_else(|| {
        TransformerError::Config(format!(
            "{} has no complete checkpoint to resume from",
            run_dir.root.display()
        ))
    })
}

/// Runs `write` and reports its failure as a checkpoint error of `dir` (what
/// [`RunDir::save_checkpoint`] expects, so that it removes the half-written folder).
fn wrap(
    dir: &Path,
    write: impl FnOnce() -> Result<(), TransformerError>,
) -> Result<(), TrainError> {
    write().map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_json<T: Serialize>(dir: &Path, value: &T) -> Result<(), TransformerError> {
    let path = dir.join(LOOP_FILE);
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| TransformerError::Config(format!("{}: {e}", path.display())))?;
    std::fs::write(&path, json).map_err(TransformerError::io(&path))
}

fn read_json<T: DeserializeOwned>(dir: &Path) -> Result<T, TransformerError> {
    let path = dir.join(LOOP_FILE);
    let bytes = std::fs::read(&path).map_err(TransformerError::io(&path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TransformerError::Config(format!("{}: {e}", path.display())))
}
