//! `[pipeline]`: budgets, the baseline, evaluation; the pipeline's defaults and checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::agents::ImpalaConfig;
use crate::config::{load_config_with_section, ConfigError, ConfigFile};
use crate::envs::procgen::find_game;
use crate::train::rl::RlDartsSearchConfig;
use crate::train::rl::{EncoderConfig, TrainConfig};
use crate::train::TrainError;

use super::random::{candidate_timesteps, from_scratch_random_params};

/// `[pipeline]`: the budgets and choices of `rl-darts train` when it runs the whole pipeline
/// (unused by a single PPO run). The other sections ([ppo], [procgen], [encoder], seed) apply
/// to every phase; `ppo.total_timesteps` is replaced by the phase's budget below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Env steps of the search (PPO with the supernet and its alphas). RL-DARTS trains the
    /// supernet for the Procgen budget: 25M (easy mode).
    pub search_timesteps: u64,
    /// Env steps of the retraining of the discrete cell from scratch, and of the IMPALA-CNN
    /// baseline (the same budget and seed, so the comparison is at equal compute). 25M.
    pub retrain_timesteps: u64,
    /// Do not train the IMPALA-CNN baseline (`--skip-baseline`): the table has one row.
    pub skip_baseline: bool,
    /// Reuse the baseline of an earlier run (`--baseline-from`): a pipeline run directory
    /// (its baseline/) or the directory of a single `train --encoder impala` run.
    pub baseline_from: Option<PathBuf>,
    /// The baseline's network: the Procgen paper's IMPALA-CNN ([16, 32, 32], 256).
    pub baseline_encoder: ImpalaConfig,
    pub eval: PipelineEvalConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            search_timesteps: 25_000_000,
            retrain_timesteps: 25_000_000,
            skip_baseline: false,
            baseline_from: None,
            baseline_encoder: ImpalaConfig::default(),
            eval: PipelineEvalConfig::default(),
        }
    }
}

/// `[pipeline.eval]`: how the retrained cell and the baseline are evaluated. The training
/// levels are `procgen.num_levels` from `procgen.start_level`; the held-out levels are below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineEvalConfig {
    /// Episodes per model and level set (each env contributes the same number).
    pub episodes: usize,
    /// Envs stepped in parallel during evaluation.
    pub num_envs: usize,
    /// Held-out levels: 0 = the full distribution, the Procgen paper's test protocol
    /// (procgen then draws level seeds from [0, 2^31) and ignores the start level). A positive
    /// value gives levels `test_start_level .. test_start_level + test_num_levels`.
    pub test_num_levels: i32,
    /// First held-out level; unset = right after the training range (`procgen.start_level +
    /// procgen.num_levels`, i.e. 200), so a positive `test_num_levels` never overlaps it.
    pub test_start_level: Option<i32>,
    /// argmax actions; RL-DARTS and the Procgen paper evaluate the stochastic policy (false).
    pub greedy: bool,
    /// Seeds the evaluation envs' level sampling and the policy's action sampling; both models
    /// see the same level sequence.
    pub seed: u64,
}

impl Default for PipelineEvalConfig {
    fn default() -> Self {
        Self {
            episodes: 100,
            num_envs: 20,
            test_num_levels: 0,
            test_start_level: None,
            greedy: false,
            seed: 12345,
        }
    }
}

/// The defaults of `rl-darts train --env ENV` when it runs the pipeline: the Procgen recipe
/// with the RL-DARTS "standard" supernet as the encoder.
pub fn pipeline_defaults(env: &str) -> PipelineRunConfig {
    PipelineRunConfig {
        train: TrainConfig {
            encoder: EncoderConfig::RlDarts(RlDartsSearchConfig::default()),
            ..TrainConfig::procgen(env)
        },
        pipeline: PipelineConfig::default(),
    }
}

/// What a pipeline run reads: the PPO run's config that every phase starts from (its
/// `ppo.total_timesteps` replaced by the phase's budget), and `[pipeline]`. One TOML file
/// holds both (RUN_DIR/config.toml); [`PipelineRunConfig::load`] splits it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRunConfig {
    #[serde(flatten)]
    pub train: TrainConfig,
    pub pipeline: PipelineConfig,
}

impl PipelineRunConfig {
    /// `defaults`, the file and `--set` overrides merged into one tree, `[pipeline]` read as
    /// [`PipelineConfig`] and the rest as [`TrainConfig`] (each rejecting unknown keys).
    pub fn load(
        file: Option<&ConfigFile>,
        defaults: PipelineRunConfig,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let (train, pipeline) = load_config_with_section(
            file,
            defaults.train,
            "pipeline",
            defaults.pipeline,
            overrides,
        )?;
        Ok(Self { train, pipeline })
    }
}

/// Checks what the pipeline needs before anything is created or trained.
pub fn validate(run: &PipelineRunConfig) -> Result<(), TrainError> {
    let (config, p) = (&run.train, &run.pipeline);
    if !config.is_procgen() {
        return Err(TrainError::Invalid(format!(
            "the RL-DARTS pipeline searches a CNN cell and needs a Procgen game; for '{}' run a single PPO run (--encoder mlp)",
            config.env
        )));
    }
    find_game(&config.env)?;
    if !matches!(config.encoder, EncoderConfig::RlDarts(_)) {
        return Err(TrainError::Invalid(format!(
            "the pipeline searches with [encoder] kind = \"rl_darts\", this config has \"{}\" (for a single PPO run pass --encoder {})",
            config.encoder.name(),
            config.encoder.name()
        )));
    }
    crate::train::rl::validate(config)?;
    let batch = config.ppo.batch_size() as u64;
    for (key, steps) in [
        ("search_timesteps", p.search_timesteps),
        ("retrain_timesteps", p.retrain_timesteps),
    ] {
        if steps < batch {
            return Err(TrainError::Invalid(format!(
                "pipeline.{key} = {steps} is less than one PPO iteration (ppo.num_envs x ppo.num_steps = {batch})"
            )));
        }
    }
    if let Some(random) = from_scratch_random_params(config) {
        if random.num_candidates == 0 {
            return Err(TrainError::Invalid(
                "search.strategy.params.num_candidates must be at least 1".into(),
            ));
        }
        let each = candidate_timesteps(config, p, random);
        if each < batch {
            return Err(TrainError::Invalid(format!(
                "random search gives each of its {} candidates pipeline.search_timesteps / num_candidates = {each} env steps, less than one PPO iteration ({batch}); raise pipeline.search_timesteps or lower search.strategy.params.num_candidates",
                random.num_candidates
            )));
        }
    }
    if p.skip_baseline && p.baseline_from.is_some() {
        return Err(TrainError::Invalid(
            "pipeline.skip_baseline and pipeline.baseline_from exclude each other (--skip-baseline, --baseline-from)".into(),
        ));
    }
    if p.eval.episodes == 0 || p.eval.num_envs == 0 {
        return Err(TrainError::Invalid(
            "pipeline.eval.episodes and pipeline.eval.num_envs must be at least 1".into(),
        ));
    }
    if p.eval.test_num_levels < 0 || p.eval.test_start_level.is_some_and(|s| s < 0) {
        return Err(TrainError::Invalid(
            "pipeline.eval.test_num_levels and test_start_level must not be negative".into(),
        ));
    }
    Ok(())
}
