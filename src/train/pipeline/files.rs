//! The pipeline's files: its run directory, phase records, timing, JSON.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::Device;

use crate::envs::make_vec_env;
use crate::envs::procgen::ProcgenOptions;
use crate::train::rl::{build_policy, TrainConfig, TrainSummary};
use crate::train::run_dir::CONFIG_FILE;
use crate::train::TrainError;

use super::phases::{PhaseRecord, Timing};
use super::{PHASE_FILE, PIPELINE_FILE, TIMING_FILE};

/// True when `dir` holds a pipeline run (rather than a single PPO run).
pub fn is_pipeline_run(dir: &Path) -> bool {
    dir.join(PIPELINE_FILE).is_file()
}

/// A new, uniquely named pipeline directory under `base`: `{env}__rl_darts_pipeline__{seed}__{time}`.
pub fn new_pipeline_dir(base: &Path, env: &str, seed: u64) -> Result<PathBuf, TrainError> {
    let time = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let stem = format!("{env}__rl_darts_pipeline__{seed}__{time}");
    let mut root = base.join(&stem);
    let mut n = 1;
    while root.exists() {
        n += 1;
        root = base.join(format!("{stem}-{n}"));
    }
    fs::create_dir_all(&root).map_err(|source| TrainError::Io {
        path: root.clone(),
        source,
    })?;
    Ok(root)
}

/// Adds this process's share of `summary` to the phase's timing.json.
pub(super) fn add_timing(dir: &Path, summary: &TrainSummary) -> Result<Timing, TrainError> {
    let path = dir.join(TIMING_FILE);
    let mut timing: Timing = if path.is_file() {
        read_json(&path)?
    } else {
        Timing::default()
    };
    let secs = summary.rollout_secs + summary.update_secs;
    // steps_per_sec counts this process's iterations over its rollout + update time.
    timing.steps += (summary.steps_per_sec * secs).round() as u64;
    timing.secs += secs;
    write_json(&path, &timing)?;
    Ok(timing)
}

/// The record of a trained model: phase.json of a pipeline phase, or made from the
/// summary.json and config of a single PPO run (`--baseline-from`).
pub(super) fn model_record(dir: &Path) -> Result<PhaseRecord, TrainError> {
    let path = dir.join(PHASE_FILE);
    if path.is_file() {
        return read_json(&path);
    }
    let config = load_run_config(dir)?;
    let summary: serde_json::Value = read_json(&dir.join("summary.json"))?;
    let number = |key: &str| summary.get(key).and_then(serde_json::Value::as_f64);
    Ok(PhaseRecord {
        label: "baseline".into(),
        encoder: config.encoder.name().to_string(),
        global_step: number("global_step").unwrap_or(0.0) as u64,
        iterations: number("iterations").unwrap_or(0.0) as u64,
        steps_per_sec: number("steps_per_sec").unwrap_or(0.0),
        train_secs: number("rollout_secs").unwrap_or(0.0) + number("update_secs").unwrap_or(0.0),
        mean_return_last100: number("mean_return"),
        params: count_params(&config)?,
    })
}

pub(super) fn load_run_config(dir: &Path) -> Result<TrainConfig, TrainError> {
    Ok(crate::config::load_config(
        Some(&dir.join(CONFIG_FILE)),
        TrainConfig::default(),
        &[],
    )?)
}

/// Trainable parameters of the policy `config` builds (encoder and heads; a supernet's
/// alphas live in their own store and are not counted).
pub fn count_params(config: &TrainConfig) -> Result<i64, TrainError> {
    let procgen = ProcgenOptions {
        num_threads: 1,
        ..config.procgen.clone()
    };
    let env = make_vec_env(&config.env, 1, config.seed, &procgen)?;
    let (vs, _policy) = build_policy(config, env.spec(), Device::Cpu)?;
    Ok(vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum())
}

pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let bytes = fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes under a temporary name and renames, so a reader never sees half a file (these files
/// mark phases complete).
pub(super) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("pipeline records serialise");
    bytes.push(b'\n');
    write_bytes(path, &bytes)
}
