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

mod comparison;
mod config;
mod eval;
mod files;
mod phases;
mod random;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::rl::Progress;
use super::TrainError;
use crate::logging::MetricsSink;

pub use comparison::{Comparison, ComparisonRow, LevelResult, Levels, SearchInfo};
pub use config::{
    pipeline_defaults, validate, PipelineConfig, PipelineEvalConfig, PipelineRunConfig,
};
pub use files::{count_params, is_pipeline_run, new_pipeline_dir};
pub use phases::PhaseRecord;
pub use random::RandomCandidate;

use files::read_json;
use phases::Ctx;

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

/// The phases `--phase` can name. Retraining covers the discrete cell and the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelinePhase {
    /// PPO with the supernet, then the derived genotype.
    Search,
    /// The discrete cell from scratch, and the IMPALA-CNN baseline.
    Retrain,
    /// Both on training and held-out levels; the comparison table.
    Eval,
}

impl PipelinePhase {
    pub const ALL: [PipelinePhase; 3] = [
        PipelinePhase::Search,
        PipelinePhase::Retrain,
        PipelinePhase::Eval,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PipelinePhase::Search => "search",
            PipelinePhase::Retrain => "retrain",
            PipelinePhase::Eval => "eval",
        }
    }
}

impl std::fmt::Display for PipelinePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PipelinePhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PipelinePhase::ALL
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
    pub config: &'a PipelineRunConfig,
    /// The pipeline run directory; existing phases in it are continued, not redone.
    pub root: &'a Path,
    /// Only this phase (`--phase`); its predecessors must be complete. None = all remaining.
    pub only: Option<PipelinePhase>,
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
    PhaseDone(PipelinePhase),
    /// Stopped (Ctrl-C) in this phase, after a checkpoint; `--resume` continues it.
    Interrupted(PipelinePhase),
}

/// Runs the remaining phases of the pipeline in `run.root` (or only `run.only`), then writes
/// `report.html` (also when a phase was stopped or failed).
pub fn run_pipeline(run: PipelineRun<'_>) -> Result<PipelineOutcome, TrainError> {
    validate(run.config)?;
    fs::create_dir_all(run.root).map_err(|source| TrainError::Io {
        path: run.root.to_path_buf(),
        source,
    })?;
    crate::report::record_command(run.root);
    let root = run.root.to_path_buf();
    let outcome = run_phases(run);
    crate::report::write_report_or_warn(&root);
    outcome
}

fn run_phases(run: PipelineRun<'_>) -> Result<PipelineOutcome, TrainError> {
    crate::config::save_resolved_config(run.config, run.root)?;
    let mut ctx = Ctx {
        config: &run.config.train,
        pipeline: &run.config.pipeline,
        root: run.root.to_path_buf(),
        reporter: run.reporter,
        stop: run.stop,
    };
    ctx.write_status()?;
    let phases: Vec<PipelinePhase> = match run.only {
        Some(phase) => {
            if let Some(missing) = PipelinePhase::ALL
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
        None => PipelinePhase::ALL.to_vec(),
    };
    for phase in phases.iter().copied() {
        if ctx.complete(phase) {
            ctx.reporter.message(&format!("[{phase}] already complete"));
            continue;
        }
        let finished = match phase {
            PipelinePhase::Search => ctx.search()?,
            PipelinePhase::Retrain => ctx.retrain()?,
            PipelinePhase::Eval => ctx.eval()?,
        };
        ctx.write_status()?;
        if !finished {
            return Ok(PipelineOutcome::Interrupted(phase));
        }
    }
    if ctx.complete(PipelinePhase::Eval) {
        Ok(PipelineOutcome::Complete(Box::new(read_json(
            &ctx.root.join(COMPARISON_JSON),
        )?)))
    } else {
        Ok(PipelineOutcome::PhaseDone(
            *phases.last().expect("at least one phase"),
        ))
    }
}
