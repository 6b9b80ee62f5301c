//! From what `rl-darts train` was asked to a validated config, before anything is written:
//! the defaults for the env (the pipeline's or a single PPO run's), the config file (read
//! once), the flags, then `--set`, checked by the run's own validation. The CLI and the sweep
//! planner (which checks every trial before it writes a plan) resolve through here alike, so
//! a bad value (`--set ppo.num_envs=0`, `--device cuda` without a GPU) is an error that leaves
//! no run directory behind.

use std::path::{Path, PathBuf};

use crate::config::{load_config_with_section, ConfigFile};
use crate::envs::gym::GYM_ENVS;
use crate::train::pipeline::{self, PipelineConfig, PipelineRunConfig};
use crate::train::rl::{self, TrainConfig};
use crate::train::TrainError;

/// The few-minutes preset of `--quick`, relative to the repository.
pub const QUICK_PRESET: &str = "configs/coinrun-darts-quick.toml";

/// The quick preset as `train --quick` finds it: under `workdir`, else in the source tree this
/// binary was built from.
pub fn quick_preset(workdir: &Path) -> Option<PathBuf> {
    [
        workdir.join(QUICK_PRESET),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(QUICK_PRESET),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Whether a new `train` run is the RL-DARTS pipeline: a Procgen game without `--encoder`,
/// unless the config file asks for another encoder than the searched one (e.g.
/// configs/coinrun-impala.toml).
pub fn wants_pipeline(env: &str, encoder_flag: Option<&str>, file_encoder: Option<&str>) -> bool {
    encoder_flag.is_none()
        && !GYM_ENVS.contains(&env)
        && file_encoder.is_none_or(|k| k == "rl_darts")
}

/// What a new `train` run was asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct TrainRequest {
    /// `--config` (or the quick preset's path).
    pub config: Option<PathBuf>,
    pub env: Option<String>,
    pub encoder: Option<String>,
    pub strategy: Option<String>,
    /// A single run's `ppo.total_timesteps`, or both of the pipeline's phase budgets.
    pub total_steps: Option<u64>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    /// Pipeline only.
    pub skip_baseline: bool,
    /// Pipeline only; made absolute here.
    pub baseline_from: Option<PathBuf>,
    /// `distributed.backend` (single runs only): mpi, nccl or none.
    pub distributed: Option<String>,
    /// `--set KEY=VALUE`, applied last.
    pub sets: Vec<String>,
}

/// A resolved and validated `train` config.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedTrain {
    Single(TrainConfig),
    Pipeline(PipelineRunConfig),
}

impl ResolvedTrain {
    /// The PPO run's config (a pipeline's phases start from it).
    pub fn train(&self) -> &TrainConfig {
        match self {
            ResolvedTrain::Single(c) => c,
            ResolvedTrain::Pipeline(p) => &p.train,
        }
    }
}

impl TrainRequest {
    /// Resolves and validates the config of a new run. Reads the config file once; writes
    /// nothing.
    pub fn resolve(&self) -> Result<ResolvedTrain, TrainError> {
        let file = self.config.as_deref().map(ConfigFile::read).transpose()?;
        let file = file.as_ref();
        let env = self
            .env
            .clone()
            .or_else(|| file.and_then(|f| f.get_str("env")).map(str::to_string))
            .unwrap_or_else(|| "coinrun".to_string());
        let pipeline = wants_pipeline(
            &env,
            self.encoder.as_deref(),
            file.and_then(|f| f.get_str("encoder.kind")),
        );
        let mut sets = vec![format!("env={env:?}")];
        if let Some(e) = &self.encoder {
            // The whole table: a new kind starts from its own default params.
            sets.push(format!("encoder={{ kind = {e:?}, params = {{}} }}"));
        }
        if let Some(name) = &self.strategy {
            // Checked here for the list of valid names; the whole table, so the strategy
            // starts from its own default params.
            crate::search::StrategyConfig::from_name(name)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            sets.push(format!("search.strategy={{ kind = {name:?} }}"));
        }
        if let Some(n) = self.total_steps {
            sets.push(format!("ppo.total_timesteps={n}"));
        }
        if let Some(s) = self.seed {
            sets.push(format!("seed={s}"));
        }
        if let Some(d) = &self.device {
            sets.push(format!("device={d:?}"));
        }
        if let Some(b) = &self.distributed {
            // Checked here for the list of valid names (the config would say the same, less
            // plainly).
            crate::distributed::Backend::parse(b)?;
            sets.push(format!("distributed.backend={b:?}"));
        }
        if pipeline {
            sets.extend(self.pipeline_sets()?);
            sets.extend(self.sets.iter().cloned());
            let config = PipelineRunConfig::load(file, pipeline::pipeline_defaults(&env), &sets)?;
            refuse_distributed_pipeline(&config)?;
            pipeline::validate(&config)?;
            Ok(ResolvedTrain::Pipeline(config))
        } else {
            if self.skip_baseline || self.baseline_from.is_some() {
                return Err(TrainError::Invalid(
                    "--skip-baseline and --baseline-from belong to the RL-DARTS pipeline, which `train` runs on a Procgen game without --encoder".into(),
                ));
            }
            sets.extend(self.sets.iter().cloned());
            let config = load_single(file, &env, &sets)?;
            rl::validate(&config)?;
            Ok(ResolvedTrain::Single(config))
        }
    }

    /// `--set`s for the pipeline's own flags, applied before the user's --set.
    fn pipeline_sets(&self) -> Result<Vec<String>, TrainError> {
        pipeline_flag_sets(
            self.total_steps,
            self.skip_baseline,
            self.baseline_from.as_deref(),
        )
    }
}

/// The pipeline runs several phases and evaluations; one data-parallel PPO run is one of them.
fn refuse_distributed_pipeline(config: &PipelineRunConfig) -> Result<(), TrainError> {
    let backend = config.train.distributed.backend;
    if backend == crate::distributed::Backend::None {
        return Ok(());
    }
    Err(TrainError::Invalid(format!(
        "distributed.backend = {:?} trains one PPO run over several processes; the pipeline runs \
         several phases (and an evaluation) that would each need it. Give --encoder (e.g. \
         --encoder rl_darts for the search, rl_darts_fixed for the retraining) to run a phase \
         as a single data-parallel run",
        backend.name()
    )))
}

fn pipeline_flag_sets(
    total_steps: Option<u64>,
    skip_baseline: bool,
    baseline_from: Option<&Path>,
) -> Result<Vec<String>, TrainError> {
    let mut sets = Vec::new();
    if let Some(n) = total_steps {
        sets.push(format!("pipeline.search_timesteps={n}"));
        sets.push(format!("pipeline.retrain_timesteps={n}"));
    }
    if skip_baseline {
        sets.push("pipeline.skip_baseline=true".into());
    }
    if let Some(dir) = baseline_from {
        let dir = std::path::absolute(dir).map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        sets.push(format!(
            "pipeline.baseline_from={:?}",
            dir.display().to_string()
        ));
    }
    Ok(sets)
}

/// A single PPO run's config. A `[pipeline]` table in the file (a pipeline preset run with
/// `--encoder`, or a run directory written before the pipeline's config had its own type) is
/// read and checked, then left aside: a single run has no use for it.
fn load_single(
    file: Option<&ConfigFile>,
    env: &str,
    sets: &[String],
) -> Result<TrainConfig, TrainError> {
    let (config, _pipeline) = load_config_with_section(
        file,
        TrainConfig::defaults_for(env),
        "pipeline",
        PipelineConfig::default(),
        sets,
    )?;
    Ok(config)
}

/// What `train --resume DIR` may change.
#[derive(Debug, Clone, Default)]
pub struct ResumeRequest {
    pub total_steps: Option<u64>,
    pub device: Option<String>,
    /// Pipeline only.
    pub skip_baseline: bool,
    /// Pipeline only.
    pub baseline_from: Option<PathBuf>,
    /// `precision=...` / `layout=...` overrides (`--precision`, `--layout`).
    pub compute_sets: Vec<String>,
}

/// The saved config of the run in `dir` (a single run or a pipeline, as `dir` says), with what
/// `resume` changes, validated.
pub fn resolve_resume(dir: &Path, resume: &ResumeRequest) -> Result<ResolvedTrain, TrainError> {
    if !pipeline::is_pipeline_run(dir) {
        // Says what is wrong with a directory that is neither kind of run.
        crate::train::run_dir::RunDir::open(dir)?;
    }
    let path = dir.join(crate::config::RESOLVED_CONFIG_FILE);
    let file = ConfigFile::read(&path)?;
    let env = file.get_str("env").unwrap_or("coinrun").to_string();
    let mut sets = Vec::new();
    if let Some(d) = &resume.device {
        sets.push(format!("device={d:?}"));
    }
    sets.extend(resume.compute_sets.iter().cloned());
    if pipeline::is_pipeline_run(dir) {
        sets.extend(pipeline_flag_sets(
            resume.total_steps,
            resume.skip_baseline,
            resume.baseline_from.as_deref(),
        )?);
        let config =
            PipelineRunConfig::load(Some(&file), pipeline::pipeline_defaults(&env), &sets)?;
        pipeline::validate(&config)?;
        Ok(ResolvedTrain::Pipeline(config))
    } else {
        if resume.skip_baseline || resume.baseline_from.is_some() {
            return Err(TrainError::Invalid(format!(
                "{} is a single PPO run; --skip-baseline and --baseline-from belong to the RL-DARTS pipeline",
                dir.display()
            )));
        }
        if let Some(n) = resume.total_steps {
            sets.push(format!("ppo.total_timesteps={n}"));
        }
        let config = load_single(Some(&file), &env, &sets)?;
        rl::validate(&config)?;
        Ok(ResolvedTrain::Single(config))
    }
}
