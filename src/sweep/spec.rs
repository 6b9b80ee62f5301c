//! The sweep spec: what a user writes in configs/sweep-*.toml (or gives as `sweep plan`
//! flags): envs, seeds, strategies, a base config, fixed `--set`s, the grid of config keys,
//! and the resources of one trial. `plan` expands it into trials.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, SweepError};

/// What each trial runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepKind {
    /// `rl-darts train`: the RL-DARTS pipeline on a Procgen game, or one PPO run (`encoder`
    /// given, or a classic-control env).
    #[default]
    Train,
    /// `rl-darts search`: a supervised architecture search on an image data set.
    Search,
}

/// Which pipeline trials train the IMPALA-CNN baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselinePolicy {
    /// Only the trial of the first strategy at each (env, grid point, seed): the baseline does
    /// not depend on the strategy, so training it once per seed saves (strategies - 1) runs.
    #[default]
    Once,
    /// Every pipeline trial trains its own baseline.
    Every,
    /// No trial trains one (`--skip-baseline`).
    None,
}

/// What one trial asks of the machine it runs on (Ray task resources, Slurm `#SBATCH` lines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores per trial; the local runner runs `cores / cpus_per_trial` trials at once.
    #[serde(default = "one")]
    pub cpus_per_trial: u32,
    /// GPUs per trial (Ray `num_gpus`, Slurm `--gres=gpu:N`).
    #[serde(default)]
    pub gpus_per_trial: u32,
    /// Slurm `--mem`, e.g. "8G".
    #[serde(default)]
    pub mem: Option<String>,
    /// Slurm `--time`, e.g. "04:00:00".
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    /// At most this many array tasks at once (Slurm `--array=0-N%K`); none = no limit.
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Further `#SBATCH` lines, verbatim without the prefix (e.g. "--qos=long").
    #[serde(default)]
    pub sbatch: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus_per_trial: 1,
            gpus_per_trial: 0,
            mem: None,
            time: None,
            partition: None,
            account: None,
            max_parallel: None,
            sbatch: Vec::new(),
        }
    }
}

/// A sweep as the user writes it (configs/sweep-*.toml); flags of `sweep plan` override it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// A name for the sweep (Slurm job name, default run folder).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: SweepKind,
    /// Games or classic-control envs (train sweeps). Search sweeps take the data set from the
    /// config.
    #[serde(default)]
    pub envs: Vec<String>,
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Search strategies (`joint`, `darts`, `random`, ...); empty = the config's own.
    #[serde(default)]
    pub strategies: Vec<String>,
    /// Train sweeps: one PPO run per trial with this encoder instead of the pipeline.
    #[serde(default)]
    pub encoder: Option<String>,
    /// Base config of every trial (`--config`), relative to the working directory.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// `--quick`: the pipeline's few-minutes preset (train sweeps, no `config`).
    #[serde(default)]
    pub quick: bool,
    /// Folder of the trials' run directories (default runs/sweep-{name}).
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
    /// Overrides applied to every trial: `"ppo.total_timesteps" = 4096` (or nested tables).
    #[serde(default)]
    pub set: toml::Table,
    /// Config keys to sweep: `"ppo.learning_rate" = [3e-4, 5e-4]`; the grid is the product.
    #[serde(default)]
    pub grid: toml::Table,
    #[serde(default)]
    pub baseline: BaselinePolicy,
    #[serde(default)]
    pub resources: Resources,
}

impl SweepSpec {
    /// Reads a sweep TOML; unknown keys are errors naming the key.
    pub fn load(path: &Path) -> Result<Self, SweepError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        toml::from_str(&text).map_err(|e| SweepError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// `{ a = { b = 1 } }` -> `a.b = 1`: nested tables in `[set]`/`[grid]` mean dotted keys, as
/// `--set a.b=1` does. Arrays (grid values) and inline tables inside arrays stay whole.
pub(crate) fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(&full, t, out),
            other => {
                out.insert(full, other.clone());
            }
        }
    }
}

/// A TOML value as the literal `--set KEY=LITERAL` parses back to the same value.
pub fn toml_literal(value: &toml::Value) -> String {
    value.to_string()
}
