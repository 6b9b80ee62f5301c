//! The RL-DARTS pipeline end to end (Miao, Song et al. 2021, section 3): search the encoder
//! cell jointly with PPO, derive the discrete cell, retrain it from scratch next to the
//! IMPALA-CNN baseline (same budget, same seed), and evaluate both on the training levels and
//! on held-out levels (Cobbe et al. 2020's generalisation protocol, ../shared/REFERENCE.md
//! section 1).
//!
//! A pipeline run directory:
//! ```text
//! RUN_DIR/config.toml           the resolved config: search encoder, [ppo], [procgen], [pipeline]
//! RUN_DIR/pipeline.json         marks a pipeline run; the status of each phase (informative)
//! RUN_DIR/search/               a `train` run of the supernet (checkpoints/, tb/, summary.json),
//!                               then genotype.json, genotype.txt, genotype_{normal,reduce}.{dot,png,svg}
//!                               (random search from scratch: candidate_NN/, one `train` run of
//!                               each sampled cell, candidates.json, tb/ with their scores)
//! RUN_DIR/retrain/              a `train` run of the discrete cell (encoder rl_darts_fixed)
//! RUN_DIR/baseline/             a `train` run of the IMPALA-CNN
//! RUN_DIR/eval/                 one JSON per (model, level set); tb/ holds the table as text
//! RUN_DIR/comparison.{md,json}  the comparison table
//! ```
//! Every training phase is an ordinary `train` run directory, so it checkpoints and resumes
//! with the loop's own mechanism (a resumed phase continues at its newest checkpoint and logs
//! what an uninterrupted one would). A training phase is complete once its `phase.json`
//! exists (the search writes it only after the genotype files); evaluations are kept one JSON
//! each, and the eval phase is complete once comparison.json exists. So `run_pipeline` on an
//! existing directory simply continues where the previous process stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::rl::RlDartsSearchConfig;
use super::rl::{
    build_policy, evaluate, train, EncoderConfig, EvalOptions, EvalResult, Progress,
    RlDartsFixedConfig, TrainConfig, TrainRun, TrainSummary,
};
use super::run_dir::{RunDir, CONFIG_FILE};
use super::TrainError;
use crate::agents::ImpalaConfig;
use crate::envs::make_vec_env;
use crate::envs::procgen::{find_game, DistributionMode, ProcgenOptions};
use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, CellType, Genotype, NasError};
use crate::search::{RandomParams, RandomSearch, StrategyConfig};

pub const SEARCH_DIR: &str = "search";
pub const RETRAIN_DIR: &str = "retrain";
pub const BASELINE_DIR: &str = "baseline";
pub const EVAL_DIR: &str = "eval";
/// The derived genotype, in the search directory (written by the search loop).
pub const GENOTYPE_FILE: &str = "genotype.json";
/// Random search from scratch: one entry per trained candidate, in the search directory.
pub const CANDIDATES_FILE: &str = "candidates.json";
pub const COMPARISON_JSON: &str = "comparison.json";
pub const COMPARISON_MD: &str = "comparison.md";
/// Marks a directory as a pipeline run (so `--resume` knows which kind it continues).
pub const PIPELINE_FILE: &str = "pipeline.json";
/// Written into a training phase's directory once that phase is complete.
pub const PHASE_FILE: &str = "phase.json";
/// Accumulated training time of a phase over all processes that worked on it.
const TIMING_FILE: &str = "timing.json";

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
pub fn pipeline_defaults(env: &str) -> TrainConfig {
    TrainConfig {
        encoder: EncoderConfig::RlDarts(RlDartsSearchConfig::default()),
        ..TrainConfig::procgen(env)
    }
}

/// The phases `--phase` can name. Retraining covers the discrete cell and the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// PPO with the supernet, then the derived genotype.
    Search,
    /// The discrete cell from scratch, and the IMPALA-CNN baseline.
    Retrain,
    /// Both on training and held-out levels; the comparison table.
    Eval,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Search, Phase::Retrain, Phase::Eval];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Search => "search",
            Phase::Retrain => "retrain",
            Phase::Eval => "eval",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown phase '{s}'; the phases are search, retrain, eval"))
    }
}

/// Where the pipeline reports to: a terminal (the CLI) or memory (tests).
pub trait PipelineReporter {
    /// The metrics sink of one run: `label` is search, retrain, baseline or eval, `dir` its
    /// directory (TensorBoard files go to `dir/tb`).
    fn sink(&mut self, label: &str, dir: &Path) -> Box<dyn MetricsSink>;
    /// A fresh progress display for one PPO run; the pipeline prefixes its messages with
    /// the label.
    fn progress(&mut self, label: &str) -> Box<dyn Progress>;
    /// One line of news (phase started, genotype derived, an evaluation's result).
    fn message(&mut self, line: &str);
}

/// Options of one call to [`run_pipeline`].
pub struct PipelineRun<'a> {
    /// The resolved pipeline config (what RUN_DIR/config.toml holds).
    pub config: &'a TrainConfig,
    /// The pipeline run directory; existing phases in it are continued, not redone.
    pub root: &'a Path,
    /// Only this phase (`--phase`); its predecessors must be complete. None = all remaining.
    pub only: Option<Phase>,
    pub reporter: &'a mut dyn PipelineReporter,
    /// Set (by Ctrl-C) to stop after the current PPO iteration or evaluation.
    pub stop: &'a AtomicBool,
}

/// How a call to [`run_pipeline`] ended.
#[derive(Debug)]
pub enum PipelineOutcome {
    /// Every phase is complete; the comparison table.
    Complete(Box<Comparison>),
    /// `--phase` ran this phase to completion; later ones remain.
    PhaseDone(Phase),
    /// Stopped (Ctrl-C) in this phase, after a checkpoint; `--resume` continues it.
    Interrupted(Phase),
}

/// What a training phase left behind once complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// search, retrain or baseline.
    pub label: String,
    pub encoder: String,
    pub global_step: u64,
    pub iterations: u64,
    /// Env steps per second of training (rollout + update), over every process that worked
    /// on the phase.
    pub steps_per_sec: f64,
    /// Seconds of rollout + update over all those processes.
    pub train_secs: f64,
    /// Mean return of the last 100 training episodes.
    pub mean_return_last100: Option<f64>,
    /// Trainable parameters of the policy (encoder and heads; alphas not counted).
    pub params: i64,
}

/// A level set, as procgen takes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    pub num_levels: i32,
    pub start_level: i32,
}

impl Levels {
    fn describe(self) -> String {
        if self.num_levels == 0 {
            "the full level distribution, num_levels = 0".to_string()
        } else {
            format!(
                "levels {}..{}",
                self.start_level,
                i64::from(self.start_level) + i64::from(self.num_levels) - 1
            )
        }
    }
}

/// One evaluation of one model on one level set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    pub levels: Levels,
    pub episodes: usize,
    pub mean_return: f64,
    pub std_return: f64,
    pub mean_normalized_return: Option<f64>,
    pub std_normalized_return: Option<f64>,
}

impl From<EvalResult> for LevelResult {
    fn from(r: EvalResult) -> Self {
        Self {
            levels: Levels {
                num_levels: r.num_levels,
                start_level: r.start_level,
            },
            episodes: r.episodes,
            mean_return: r.mean_return,
            std_return: r.std_return,
            mean_normalized_return: r.mean_normalized_return,
            std_normalized_return: r.std_normalized_return,
        }
    }
}

/// One row of the comparison: a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// `rl_darts` (the retrained discrete cell) or `impala` (the baseline).
    pub name: String,
    pub encoder: String,
    pub run_dir: PathBuf,
    pub params: i64,
    /// Env steps trained.
    pub global_step: u64,
    /// Training env steps per second (rollout + update).
    pub steps_per_sec: f64,
    pub train_levels: LevelResult,
    pub test_levels: LevelResult,
}

/// The search phase in the table's footnote: its cost next to the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchInfo {
    pub params: i64,
    pub global_step: u64,
    pub steps_per_sec: f64,
    /// The derived genotype in the DARTS text form.
    pub genotype: String,
    /// Random search from scratch: how many cells it trained (`params` is then the best
    /// one's). None: a supernet search.
    #[serde(default)]
    pub random_candidates: Option<usize>,
}

/// RUN_DIR/comparison.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub env: String,
    pub seed: u64,
    pub distribution_mode: DistributionMode,
    pub search_timesteps: u64,
    pub retrain_timesteps: u64,
    pub episodes: usize,
    pub greedy: bool,
    pub train_levels: Levels,
    pub test_levels: Levels,
    pub rows: Vec<ComparisonRow>,
    pub search: Option<SearchInfo>,
    /// The search's time per env step over the baseline's (RL-DARTS reports about 3x).
    pub search_overhead: Option<f64>,
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pm(mean: Option<f64>, std: Option<f64>, decimals: usize) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.decimals$} ± {s:.decimals$}"),
        _ => "-".into(),
    }
}

impl Comparison {
    /// The table as markdown (comparison.md, the terminal and TensorBoard's text tab).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## RL-DARTS pipeline on {} ({:?} mode, seed {})\n",
            self.env, self.distribution_mode, self.seed
        );
        let _ = writeln!(
            out,
            "Evaluated on the training levels ({}) and on held-out levels ({}); {} episodes each, {} policy.\n",
            self.train_levels.describe(),
            self.test_levels.describe(),
            self.episodes,
            if self.greedy { "greedy" } else { "stochastic" }
        );
        let _ = writeln!(
            out,
            "| model | params | env steps | train steps/s | train levels: return | normalised | held-out: return | normalised |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let random = self.search.as_ref().and_then(|s| s.random_candidates);
        for r in &self.rows {
            let title = match r.name.as_str() {
                "rl_darts" if random.is_some() => "random-search cell, retrained",
                "rl_darts" => "RL-DARTS cell, retrained",
                "impala" => "IMPALA-CNN baseline",
                other => other,
            };
            let _ = writeln!(
                out,
                "| {title} | {} | {} | {:.0} | {} | {} | {} | {} |",
                thousands(r.params.max(0) as u64),
                thousands(r.global_step),
                r.steps_per_sec,
                pm(
                    Some(r.train_levels.mean_return),
                    Some(r.train_levels.std_return),
                    2
                ),
                pm(
                    r.train_levels.mean_normalized_return,
                    r.train_levels.std_normalized_return,
                    3
                ),
                pm(
                    Some(r.test_levels.mean_return),
                    Some(r.test_levels.std_return),
                    2
                ),
                pm(
                    r.test_levels.mean_normalized_return,
                    r.test_levels.std_normalized_return,
                    3
                ),
            );
        }
        if let Some(s) = &self.search {
            let _ = match s.random_candidates {
                Some(k) => write!(
                    out,
                    "\nSearch: random search, {k} cells trained from scratch (the best has {} params), {} env steps at {:.0} steps/s",
                    thousands(s.params.max(0) as u64),
                    thousands(s.global_step),
                    s.steps_per_sec
                ),
                None => write!(
                    out,
                    "\nSearch: supernet with {} params, {} env steps at {:.0} steps/s",
                    thousands(s.params.max(0) as u64),
                    thousands(s.global_step),
                    s.steps_per_sec
                ),
            };
            match self.search_overhead {
                Some(x) => {
                    let _ = writeln!(out, " ({x:.2}x the baseline's time per step).");
                }
                None => out.push_str(".\n"),
            }
            let _ = writeln!(out, "\nDerived cell: `{}`", s.genotype);
        }
        out
    }
}

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

/// Checks what the pipeline needs before anything is created or trained.
pub fn validate(config: &TrainConfig) -> Result<(), TrainError> {
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
    super::rl::validate(config)?;
    let batch = config.ppo.batch_size() as u64;
    let p = &config.pipeline;
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
    if let Some(random) = random_from_scratch(config) {
        if random.num_candidates == 0 {
            return Err(TrainError::Invalid(
                "search.strategy.params.num_candidates must be at least 1".into(),
            ));
        }
        let each = candidate_timesteps(config, random);
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

/// The random-search parameters when the search phase trains candidates from scratch
/// (`[search.strategy] kind = "random"` without weight sharing).
fn random_from_scratch(config: &TrainConfig) -> Option<&RandomParams> {
    match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => Some(p),
        _ => None,
    }
}

/// Env steps of each random-search candidate: the search budget split evenly, rounded down to
/// whole PPO iterations, so the whole random search costs no more env steps than a supernet
/// search.
fn candidate_timesteps(config: &TrainConfig, random: &RandomParams) -> u64 {
    let batch = config.ppo.batch_size() as u64;
    let each = config.pipeline.search_timesteps / random.num_candidates.max(1) as u64;
    each / batch * batch
}

/// One trained candidate of the random search (an entry of candidates.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomCandidate {
    pub index: usize,
    /// DARTS text form.
    pub genotype: String,
    pub global_step: u64,
    pub train_secs: f64,
    /// Mean return of the candidate's last 100 training episodes: its score. None when no
    /// episode ended (scored below every other candidate).
    pub mean_return_last100: Option<f64>,
}

/// Runs the remaining phases of the pipeline in `run.root` (or only `run.only`).
pub fn run_pipeline(run: PipelineRun<'_>) -> Result<PipelineOutcome, TrainError> {
    validate(run.config)?;
    fs::create_dir_all(run.root).map_err(|source| TrainError::Io {
        path: run.root.to_path_buf(),
        source,
    })?;
    crate::config::save_resolved_config(run.config, run.root)?;
    let mut ctx = Ctx {
        config: run.config,
        root: run.root.to_path_buf(),
        reporter: run.reporter,
        stop: run.stop,
    };
    ctx.write_status()?;
    let phases: Vec<Phase> = match run.only {
        Some(phase) => {
            if let Some(missing) = Phase::ALL
                .into_iter()
                .take_while(|&p| p < phase)
                .find(|&p| !ctx.complete(p))
            {
                return Err(TrainError::Invalid(format!(
                    "--phase {phase} needs the {missing} phase, which is not complete in {} (continue it with --resume {} --phase {missing}, or run every remaining phase with --resume {})",
                    ctx.root.display(),
                    ctx.root.display(),
                    ctx.root.display()
                )));
            }
            vec![phase]
        }
        None => Phase::ALL.to_vec(),
    };
    for phase in phases.iter().copied() {
        if ctx.complete(phase) {
            ctx.reporter.message(&format!("[{phase}] already complete"));
            continue;
        }
        let finished = match phase {
            Phase::Search => ctx.search()?,
            Phase::Retrain => ctx.retrain()?,
            Phase::Eval => ctx.eval()?,
        };
        ctx.write_status()?;
        if !finished {
            return Ok(PipelineOutcome::Interrupted(phase));
        }
    }
    if ctx.complete(Phase::Eval) {
        Ok(PipelineOutcome::Complete(Box::new(read_json(
            &ctx.root.join(COMPARISON_JSON),
        )?)))
    } else {
        Ok(PipelineOutcome::PhaseDone(
            *phases.last().expect("at least one phase"),
        ))
    }
}

/// Where the baseline row comes from.
enum Baseline {
    Train(PathBuf),
    Reuse(PathBuf),
    Skip,
}

struct Ctx<'a> {
    config: &'a TrainConfig,
    root: PathBuf,
    reporter: &'a mut dyn PipelineReporter,
    stop: &'a AtomicBool,
}

/// Prefixes a phase's progress messages with its label.
struct Labeled {
    label: &'static str,
    inner: Box<dyn Progress>,
}

impl Progress for Labeled {
    fn update(&mut self, global_step: u64, total_steps: u64, message: &str) {
        self.inner.update(
            global_step,
            total_steps,
            &format!("[{}] {message}", self.label),
        );
    }
    fn finish(&mut self, message: &str) {
        self.inner.finish(&format!("[{}] {message}", self.label));
    }
}

/// Training time summed over the processes that worked on a phase.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Timing {
    steps: u64,
    secs: f64,
}

impl<'a> Ctx<'a> {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn baseline(&self) -> Baseline {
        let p = &self.config.pipeline;
        match (&p.baseline_from, p.skip_baseline) {
            (Some(from), _) => Baseline::Reuse(from.clone()),
            (None, true) => Baseline::Skip,
            (None, false) => Baseline::Train(self.dir(BASELINE_DIR)),
        }
    }

    fn complete(&self, phase: Phase) -> bool {
        match phase {
            Phase::Search => self.dir(SEARCH_DIR).join(PHASE_FILE).is_file(),
            Phase::Retrain => {
                self.dir(RETRAIN_DIR).join(PHASE_FILE).is_file()
                    && match self.baseline() {
                        Baseline::Train(dir) => dir.join(PHASE_FILE).is_file(),
                        Baseline::Reuse(_) | Baseline::Skip => true,
                    }
            }
            Phase::Eval => self.root.join(COMPARISON_JSON).is_file(),
        }
    }

    fn write_status(&self) -> Result<(), TrainError> {
        let status: BTreeMap<&str, &str> = Phase::ALL
            .into_iter()
            .map(|p| {
                (
                    p.name(),
                    if self.complete(p) {
                        "complete"
                    } else {
                        "pending"
                    },
                )
            })
            .collect();
        let value = serde_json::json!({
            "kind": "rl-darts pipeline (search, derive, retrain + baseline, eval)",
            "phases": status,
            "resume": format!("rl-darts train --resume {}", self.root.display()),
        });
        write_json(&self.root.join(PIPELINE_FILE), &value)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Trains one phase's PPO run in `dir` (resuming from its newest checkpoint if any).
    /// `None` when stopped before the end.
    fn train_phase(
        &mut self,
        label: &'static str,
        dir: &Path,
        config: &TrainConfig,
    ) -> Result<Option<PhaseRecord>, TrainError> {
        let run_dir = RunDir::create_at(dir)?;
        let resume = run_dir.latest_checkpoint()?.is_some();
        crate::config::save_resolved_config(config, dir)?;
        self.reporter.message(&format!(
            "[{label}] {} {} with {} for {} steps -> {}",
            if resume { "resuming" } else { "training" },
            config.env,
            config.encoder.name(),
            config.ppo.total_timesteps,
            dir.display()
        ));
        let mut sink = self.reporter.sink(label, dir);
        let mut progress = Labeled {
            label,
            inner: self.reporter.progress(label),
        };
        let summary = train(TrainRun {
            config,
            run_dir: &run_dir,
            resume,
            sink: sink.as_mut(),
            progress: &mut progress,
            stop: self.stop,
            max_iterations: None,
            env: None,
        })?;
        sink.flush();
        let timing = add_timing(dir, &summary)?;
        if summary.interrupted {
            return Ok(None);
        }
        Ok(Some(PhaseRecord {
            label: label.to_string(),
            encoder: config.encoder.name().to_string(),
            global_step: summary.global_step,
            iterations: summary.iterations,
            steps_per_sec: timing.steps as f64 / timing.secs.max(1e-9),
            train_secs: timing.secs,
            mean_return_last100: summary.mean_return,
            params: count_params(config)?,
        }))
    }

    fn search(&mut self) -> Result<bool, TrainError> {
        if let Some(random) = random_from_scratch(self.config) {
            return self.random_search(random.clone());
        }
        let dir = self.dir(SEARCH_DIR);
        let mut config = self.config.clone();
        config.ppo.total_timesteps = self.config.pipeline.search_timesteps;
        let Some(record) = self.train_phase("search", &dir, &config)? else {
            return Ok(false);
        };
        // Derivation: the search loop wrote the genotype its strategy's rule derives from the
        // final alphas (RL-DARTS: drop `zero`, argmax per edge, top-2 inputs per node).
        let path = dir.join(GENOTYPE_FILE);
        let genotype = Genotype::load(&path).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("the search left no usable genotype: {e}"),
        })?;
        self.write_genotype_files(&genotype, &dir)?;
        self.reporter.message(&format!(
            "[search] derived cell: {}",
            genotype.to_darts_string()
        ));
        write_json(&dir.join(PHASE_FILE), &record)?;
        Ok(true)
    }

    /// Random search from scratch, the baseline that DARTS has to beat (DARTS's Table 1; Li &
    /// Talwalkar 2019): `num_candidates` cells drawn uniformly from the search space (the same
    /// draw for a given seed, so a resumed search trains the same candidates), each retrained
    /// from scratch with PPO for an equal share of `pipeline.search_timesteps` in its own
    /// `train` run (search/candidate_NN/, resumable like every phase), scored by the mean
    /// return of its last 100 training episodes. No env step beyond the search's budget is
    /// spent on scoring, so the comparison with a supernet search is at equal env steps. The
    /// best candidate becomes the search's genotype.
    fn random_search(&mut self, params: RandomParams) -> Result<bool, TrainError> {
        let dir = self.dir(SEARCH_DIR);
        fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
            path: dir.clone(),
            source,
        })?;
        let supernet = match &self.config.encoder {
            EncoderConfig::RlDarts(c) => c.supernet.clone(),
            _ => unreachable!("validate() checked the encoder"),
        };
        let probe = ArchParams::new(
            Device::Cpu,
            supernet.space(),
            supernet.has_reduction_cells(),
            AlphaInit::default(),
        )
        .map_err(|e| TrainError::Invalid(format!("random search: {e}")))?;
        let mut sampler = RandomSearch::new(&probe, params.clone(), self.config.seed)
            .map_err(|e| TrainError::Invalid(format!("random search: {e}")))?;
        let genotypes: Vec<Genotype> = (0..params.num_candidates)
            .map(|_| sampler.sample_genotype())
            .collect();
        let steps = candidate_timesteps(self.config, &params);
        self.reporter.message(&format!(
            "[search] random search from scratch: {} candidates x {steps} env steps",
            genotypes.len()
        ));
        let mut sink = self.reporter.sink("search", &dir);
        let mut candidates: Vec<RandomCandidate> = Vec::new();
        let mut records: Vec<PhaseRecord> = Vec::new();
        for (index, genotype) in genotypes.iter().enumerate() {
            if self.stopped() {
                return Ok(false);
            }
            let cdir = dir.join(format!("candidate_{index:02}"));
            // A candidate finished by an earlier process was logged by it.
            let trained_before = cdir.join(PHASE_FILE).is_file();
            let record = if trained_before {
                read_json::<PhaseRecord>(&cdir.join(PHASE_FILE))?
            } else {
                fs::create_dir_all(&cdir).map_err(|source| TrainError::Io {
                    path: cdir.clone(),
                    source,
                })?;
                let path = cdir.join(GENOTYPE_FILE);
                genotype
                    .save_json(&path)
                    .map_err(|e| TrainError::Checkpoint {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                let path = fs::canonicalize(&path).map_err(|source| TrainError::Io {
                    path: path.clone(),
                    source,
                })?;
                self.reporter.message(&format!(
                    "[search] candidate {}/{}: {}",
                    index + 1,
                    genotypes.len(),
                    genotype.to_darts_string()
                ));
                let mut config = self.config.clone();
                config.encoder = EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
                    genotype: path,
                    supernet: supernet.clone(),
                });
                config.ppo.total_timesteps = steps;
                let Some(record) = self.train_phase("search", &cdir, &config)? else {
                    return Ok(false);
                };
                write_json(&cdir.join(PHASE_FILE), &record)?;
                record
            };
            let candidate = RandomCandidate {
                index,
                genotype: genotype.to_darts_string(),
                global_step: record.global_step,
                train_secs: record.train_secs,
                mean_return_last100: record.mean_return_last100,
            };
            candidates.push(candidate);
            records.push(record);
            if !trained_before {
                let step = index as i64 + 1;
                let candidate = &candidates[index];
                let score = candidate.mean_return_last100.unwrap_or(f64::NAN);
                sink.scalar("random/candidate_return", score, step);
                sink.text(
                    "random/candidate",
                    &format!("{score:.2}: `{}`", candidate.genotype),
                    step,
                );
                let best = best_candidate(&candidates);
                if let Some(r) = candidates[best].mean_return_last100 {
                    sink.scalar("random/best_return", r, step);
                }
                write_json(&dir.join(CANDIDATES_FILE), &candidates)?;
                sink.flush();
            }
        }
        let best = best_candidate(&candidates);
        let genotype = &genotypes[best];
        self.write_genotype_files(genotype, &dir)?;
        let steps_total: u64 = records.iter().map(|r| r.global_step).sum();
        let secs_total: f64 = records.iter().map(|r| r.train_secs).sum();
        let record = PhaseRecord {
            label: "search".to_string(),
            encoder: "random".to_string(),
            global_step: steps_total,
            iterations: records.iter().map(|r| r.iterations).sum(),
            steps_per_sec: steps_total as f64 / secs_total.max(1e-9),
            train_secs: secs_total,
            mean_return_last100: candidates[best].mean_return_last100,
            params: records[best].params,
        };
        self.reporter.message(&format!(
            "[search] best of {} candidates: #{} (mean return {}): {}",
            candidates.len(),
            best,
            candidates[best]
                .mean_return_last100
                .map_or("-".to_string(), |r| format!("{r:.2}")),
            genotype.to_darts_string()
        ));
        write_json(&dir.join(PHASE_FILE), &record)?;
        Ok(true)
    }

    /// genotype.json (rewritten, same content), genotype.txt (DARTS text form) and per cell
    /// type a Graphviz .dot file with .png and .svg renderings (when graphviz is installed).
    fn write_genotype_files(&mut self, g: &Genotype, dir: &Path) -> Result<(), TrainError> {
        let nas_err = |path: PathBuf| {
            move |e: NasError| TrainError::Checkpoint {
                path,
                reason: e.to_string(),
            }
        };
        g.save_json(dir.join(GENOTYPE_FILE))
            .map_err(nas_err(dir.join(GENOTYPE_FILE)))?;
        write_bytes(
            &dir.join("genotype.txt"),
            (g.to_darts_string() + "\n").as_bytes(),
        )?;
        let mut cells = vec![(CellType::Normal, "normal")];
        if !g.reduce.is_empty() {
            cells.push((CellType::Reduce, "reduce"));
        }
        let mut warned = false;
        for (cell, name) in cells {
            // RL-DARTS cells have one input (the previous cell).
            let dot = g.to_dot(cell, 1);
            write_bytes(&dir.join(format!("genotype_{name}.dot")), dot.as_bytes())?;
            for ext in ["png", "svg"] {
                let out = dir.join(format!("genotype_{name}.{ext}"));
                if let Err(e) = crate::nas::genotype::render_dot(&dot, &out) {
                    // The diagram is a convenience: the .dot file is there to render later.
                    if !warned {
                        self.reporter.message(&format!(
                            "[search] warning: no cell diagrams ({e}); the .dot files are written"
                        ));
                        warned = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn retrain(&mut self) -> Result<bool, TrainError> {
        let searched = match &self.config.encoder {
            EncoderConfig::RlDarts(c) => c.supernet.clone(),
            _ => unreachable!("validate() checked the encoder"),
        };
        let dir = self.dir(RETRAIN_DIR);
        if !dir.join(PHASE_FILE).is_file() {
            fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
                path: dir.clone(),
                source,
            })?;
            // A copy, so the retrain run (and `rl-darts eval` on it) stands on its own; an
            // absolute path, so it loads from any working directory.
            let genotype = dir.join(GENOTYPE_FILE);
            let source = self.dir(SEARCH_DIR).join(GENOTYPE_FILE);
            fs::copy(&source, &genotype).map_err(|source_err| TrainError::Io {
                path: source,
                source: source_err,
            })?;
            let genotype = fs::canonicalize(&genotype).map_err(|source| TrainError::Io {
                path: genotype.clone(),
                source,
            })?;
            let mut config = self.config.clone();
            config.encoder = EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
                genotype,
                supernet: searched,
            });
            config.ppo.total_timesteps = self.config.pipeline.retrain_timesteps;
            let Some(record) = self.train_phase("retrain", &dir, &config)? else {
                return Ok(false);
            };
            write_json(&dir.join(PHASE_FILE), &record)?;
        }
        match self.baseline() {
            Baseline::Train(dir) => {
                if !dir.join(PHASE_FILE).is_file() {
                    let mut config = self.config.clone();
                    config.encoder =
                        EncoderConfig::Impala(self.config.pipeline.baseline_encoder.clone());
                    config.ppo.total_timesteps = self.config.pipeline.retrain_timesteps;
                    let Some(record) = self.train_phase("baseline", &dir, &config)? else {
                        return Ok(false);
                    };
                    write_json(&dir.join(PHASE_FILE), &record)?;
                }
            }
            Baseline::Reuse(from) => {
                let dir = self.reused_baseline(&from)?;
                self.reporter
                    .message(&format!("[baseline] reusing {}", dir.display()));
            }
            Baseline::Skip => self
                .reporter
                .message("[baseline] skipped (pipeline.skip_baseline)"),
        }
        Ok(true)
    }

    /// The run directory `--baseline-from` points at: an earlier pipeline's baseline/, or a
    /// single PPO run. It must be on the same game and have a checkpoint.
    fn reused_baseline(&mut self, from: &Path) -> Result<PathBuf, TrainError> {
        let dir = if from.join(BASELINE_DIR).join(CONFIG_FILE).is_file() {
            from.join(BASELINE_DIR)
        } else {
            from.to_path_buf()
        };
        let run = RunDir::open(&dir).map_err(|e| {
            TrainError::Invalid(format!(
                "pipeline.baseline_from: {e} (give an earlier pipeline run directory or a `train --encoder impala` run)"
            ))
        })?;
        if run.latest_checkpoint()?.is_none() {
            return Err(TrainError::Invalid(format!(
                "pipeline.baseline_from: {} has no complete checkpoint",
                dir.display()
            )));
        }
        let theirs = load_run_config(&dir)?;
        if theirs.env != self.config.env {
            return Err(TrainError::Invalid(format!(
                "pipeline.baseline_from: {} was trained on '{}', this pipeline runs '{}'",
                dir.display(),
                theirs.env,
                self.config.env
            )));
        }
        let budget = self.config.pipeline.retrain_timesteps;
        if theirs.seed != self.config.seed
            || theirs.ppo.total_timesteps != budget
            || !matches!(theirs.encoder, EncoderConfig::Impala(_))
        {
            self.reporter.message(&format!(
                "[baseline] note: {} is a {} run with seed {} for {} steps; this pipeline retrains with seed {} for {budget} steps",
                dir.display(),
                theirs.encoder.name(),
                theirs.seed,
                theirs.ppo.total_timesteps,
                self.config.seed
            ));
        }
        Ok(dir)
    }

    fn eval(&mut self) -> Result<bool, TrainError> {
        let dir = self.dir(EVAL_DIR);
        fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut models = vec![("rl_darts", self.dir(RETRAIN_DIR))];
        match self.baseline() {
            Baseline::Train(d) => models.push(("impala", d)),
            Baseline::Reuse(from) => models.push(("impala", self.reused_baseline(&from)?)),
            Baseline::Skip => {}
        }
        let config = self.config;
        let procgen = &config.procgen;
        let e = &config.pipeline.eval;
        let train_levels = Levels {
            num_levels: procgen.num_levels,
            start_level: procgen.start_level,
        };
        let test_levels = Levels {
            num_levels: e.test_num_levels,
            start_level: e
                .test_start_level
                .unwrap_or(procgen.start_level.saturating_add(procgen.num_levels)),
        };
        let mut sink = self.reporter.sink("eval", &dir);
        let mut rows = Vec::new();
        for (name, model_dir) in models {
            let info = model_record(&model_dir)?;
            let mut results = Vec::new();
            for (set, levels) in [("train", train_levels), ("test", test_levels)] {
                let path = dir.join(format!("{name}_{set}.json"));
                if path.is_file() {
                    results.push(read_json::<LevelResult>(&path)?);
                    continue;
                }
                self.reporter
                    .message(&format!("[eval] {name} on {} ...", levels.describe()));
                let result: LevelResult = evaluate(
                    &model_dir,
                    &EvalOptions {
                        env: None,
                        num_levels: levels.num_levels,
                        start_level: levels.start_level,
                        episodes: e.episodes,
                        num_envs: e.num_envs,
                        greedy: e.greedy,
                        seed: e.seed,
                        video: None,
                        device: self.config.device.clone(),
                    },
                )?
                .into();
                write_json(&path, &result)?;
                self.reporter.message(&format!(
                    "[eval] {name} on {set} levels: return {}{}",
                    pm(Some(result.mean_return), Some(result.std_return), 2),
                    result
                        .mean_normalized_return
                        .map(|m| format!(
                            ", normalised {}",
                            pm(Some(m), result.std_normalized_return, 3)
                        ))
                        .unwrap_or_default()
                ));
                let mut points = vec![(format!("eval/{name}/{set}_return"), result.mean_return)];
                if let Some(n) = result.mean_normalized_return {
                    points.push((format!("eval/{name}/{set}_normalized_return"), n));
                }
                for (tag, v) in &points {
                    sink.scalar(tag, *v, info.global_step as i64);
                }
                sink.flush();
                results.push(result);
                if self.stopped() {
                    return Ok(false);
                }
            }
            let test = results.pop().expect("two level sets");
            let train = results.pop().expect("two level sets");
            rows.push(ComparisonRow {
                name: name.to_string(),
                encoder: info.encoder.clone(),
                run_dir: model_dir.clone(),
                params: info.params,
                global_step: info.global_step,
                steps_per_sec: info.steps_per_sec,
                train_levels: train,
                test_levels: test,
            });
        }
        let search = read_json::<PhaseRecord>(&self.dir(SEARCH_DIR).join(PHASE_FILE))?;
        let genotype = Genotype::load(self.dir(SEARCH_DIR).join(GENOTYPE_FILE))
            .map(|g| g.to_darts_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let search_overhead = rows
            .iter()
            .find(|r| r.name == "impala")
            .filter(|_| search.steps_per_sec > 0.0)
            .map(|b| b.steps_per_sec / search.steps_per_sec);
        let comparison = Comparison {
            env: self.config.env.clone(),
            seed: self.config.seed,
            distribution_mode: procgen.distribution_mode,
            search_timesteps: self.config.pipeline.search_timesteps,
            retrain_timesteps: self.config.pipeline.retrain_timesteps,
            episodes: rows.first().map_or(e.episodes, |r| r.train_levels.episodes),
            greedy: e.greedy,
            train_levels,
            test_levels,
            rows,
            search: Some(SearchInfo {
                params: search.params,
                global_step: search.global_step,
                steps_per_sec: search.steps_per_sec,
                genotype,
                random_candidates: random_from_scratch(self.config).map(|p| p.num_candidates),
            }),
            search_overhead,
        };
        let markdown = comparison.to_markdown();
        sink.text("pipeline/comparison", &markdown, 0);
        sink.flush();
        write_bytes(&self.root.join(COMPARISON_MD), markdown.as_bytes())?;
        // Last: its presence marks the pipeline complete.
        write_json(&self.root.join(COMPARISON_JSON), &comparison)?;
        Ok(true)
    }
}

/// Adds this process's share of `summary` to the phase's timing.json.
fn add_timing(dir: &Path, summary: &TrainSummary) -> Result<Timing, TrainError> {
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
fn model_record(dir: &Path) -> Result<PhaseRecord, TrainError> {
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

fn load_run_config(dir: &Path) -> Result<TrainConfig, TrainError> {
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

/// Index of the highest-scoring candidate; the earliest on ties, and a candidate without a
/// score only when none has one.
fn best_candidate(candidates: &[RandomCandidate]) -> usize {
    let score = |c: &RandomCandidate| c.mean_return_last100.unwrap_or(f64::NEG_INFINITY);
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if score(c) > score(&candidates[best]) {
            best = i;
        }
    }
    best
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
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
fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("pipeline records serialise");
    bytes.push(b'\n');
    write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_random_candidate_is_the_highest_score_and_the_earliest_on_ties() {
        let c = |index, r: Option<f64>| RandomCandidate {
            index,
            genotype: String::new(),
            global_step: 0,
            train_secs: 0.0,
            mean_return_last100: r,
        };
        assert_eq!(best_candidate(&[c(0, None), c(1, Some(-1.0))]), 1);
        assert_eq!(
            best_candidate(&[c(0, Some(2.0)), c(1, Some(5.0)), c(2, Some(5.0))]),
            1
        );
        assert_eq!(best_candidate(&[c(0, None), c(1, None)]), 0);
    }

    #[test]
    fn phases_parse_and_order() {
        assert_eq!("retrain".parse::<Phase>().unwrap(), Phase::Retrain);
        assert!("derive"
            .parse::<Phase>()
            .unwrap_err()
            .contains("search, retrain, eval"));
        assert!(Phase::Search < Phase::Retrain && Phase::Retrain < Phase::Eval);
    }

    #[test]
    fn pipeline_config_rejects_unknown_keys_and_checks_budgets() {
        let config = pipeline_defaults("coinrun");
        let lenient = crate::config::check_rejects_unknown_keys(&config.pipeline).unwrap();
        assert!(lenient.is_empty(), "{lenient:?}");
        validate(&config).unwrap();
        let mut small = config.clone();
        small.pipeline.search_timesteps = 10;
        assert!(validate(&small)
            .unwrap_err()
            .to_string()
            .contains("pipeline.search_timesteps"));
        let mut cartpole = TrainConfig::classic_control("cartpole");
        cartpole.encoder = config.encoder.clone();
        assert!(validate(&cartpole)
            .unwrap_err()
            .to_string()
            .contains("Procgen"));
        let mut both = config.clone();
        both.pipeline.skip_baseline = true;
        both.pipeline.baseline_from = Some("runs/x".into());
        assert!(validate(&both)
            .unwrap_err()
            .to_string()
            .contains("exclude each other"));
        assert!(validate(&TrainConfig::procgen("coinrun"))
            .unwrap_err()
            .to_string()
            .contains("--encoder impala"));
    }

    #[test]
    fn markdown_table_has_a_row_per_model() {
        let level = |m: f64| LevelResult {
            levels: Levels {
                num_levels: 200,
                start_level: 0,
            },
            episodes: 10,
            mean_return: m,
            std_return: 1.0,
            mean_normalized_return: Some((m - 5.0) / 5.0),
            std_normalized_return: Some(0.2),
        };
        let row = |name: &str| ComparisonRow {
            name: name.into(),
            encoder: name.into(),
            run_dir: PathBuf::from(name),
            params: 1_234_567,
            global_step: 25_000_000,
            steps_per_sec: 480.4,
            train_levels: level(9.0),
            test_levels: level(7.5),
        };
        let c = Comparison {
            env: "coinrun".into(),
            seed: 1,
            distribution_mode: DistributionMode::Easy,
            search_timesteps: 25_000_000,
            retrain_timesteps: 25_000_000,
            episodes: 10,
            greedy: false,
            train_levels: Levels {
                num_levels: 200,
                start_level: 0,
            },
            test_levels: Levels {
                num_levels: 0,
                start_level: 200,
            },
            rows: vec![row("rl_darts"), row("impala")],
            search: Some(SearchInfo {
                params: 42,
                global_step: 25_000_000,
                steps_per_sec: 160.0,
                genotype: "G".into(),
                random_candidates: None,
            }),
            search_overhead: Some(3.0),
        };
        let md = c.to_markdown();
        assert!(md.contains("| RL-DARTS cell, retrained | 1,234,567 | 25,000,000 | 480 | 9.00 ± 1.00 | 0.800 ± 0.200 | 7.50 ± 1.00 | 0.500 ± 0.200 |"), "{md}");
        assert!(md.contains("| IMPALA-CNN baseline |"), "{md}");
        assert!(
            md.contains("levels 0..199") && md.contains("num_levels = 0"),
            "{md}"
        );
        assert!(md.contains("3.00x the baseline's time per step"), "{md}");
        assert!(md.contains("Search: supernet with 42 params"), "{md}");
        // The random-search baseline names itself.
        let mut random = c.clone();
        random.search.as_mut().unwrap().random_candidates = Some(8);
        let md = random.to_markdown();
        assert!(
            md.contains("| random-search cell, retrained | 1,234,567 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "Search: random search, 8 cells trained from scratch (the best has 42 params)"
            ),
            "{md}"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
