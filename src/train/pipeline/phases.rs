//! The phases: search (a supernet `train` run, then its genotype), retrain and baseline.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::logging::MetricsSink;
use crate::nas::{CellType, Genotype, NasError};
use crate::train::rl::{train, EncoderConfig, Progress, RlDartsFixedConfig, TrainConfig, TrainRun};
use crate::train::run_dir::{RunDir, CONFIG_FILE};
use crate::train::TrainError;

use super::files::{add_timing, count_params, load_run_config, write_bytes, write_json};
use super::random::from_scratch_random_params;
use super::PipelineConfig;
use super::{
    PipelinePhase, PipelineReporter, BASELINE_DIR, COMPARISON_JSON, GENOTYPE_FILE, PHASE_FILE,
    PIPELINE_FILE, RETRAIN_DIR, SEARCH_DIR,
};

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

/// Where the baseline row comes from.
pub(super) enum Baseline {
    Train(PathBuf),
    Reuse(PathBuf),
    Skip,
}

pub(super) struct Ctx<'a> {
    /// What every phase's PPO run starts from.
    pub(super) config: &'a TrainConfig,
    pub(super) pipeline: &'a PipelineConfig,
    pub(super) root: PathBuf,
    pub(super) reporter: &'a mut dyn PipelineReporter,
    pub(super) stop: &'a AtomicBool,
}

/// Prefixes a phase's progress messages with its label.
pub(super) struct Labeled {
    pub(super) label: &'static str,
    pub(super) inner: Box<dyn Progress>,
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
pub(super) struct Timing {
    pub(super) steps: u64,
    pub(super) secs: f64,
}

impl<'a> Ctx<'a> {
    pub(super) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(super) fn baseline(&self) -> Baseline {
        let p = &self.pipeline;
        match (&p.baseline_from, p.skip_baseline) {
            (Some(from), _) => Baseline::Reuse(from.clone()),
            (None, true) => Baseline::Skip,
            (None, false) => Baseline::Train(self.dir(BASELINE_DIR)),
        }
    }

    pub(super) fn complete(&self, phase: PipelinePhase) -> bool {
        match phase {
            PipelinePhase::Search => self.dir(SEARCH_DIR).join(PHASE_FILE).is_file(),
            PipelinePhase::Retrain => {
                self.dir(RETRAIN_DIR).join(PHASE_FILE).is_file()
                    && match self.baseline() {
                        Baseline::Train(dir) => dir.join(PHASE_FILE).is_file(),
                        Baseline::Reuse(_) | Baseline::Skip => true,
                    }
            }
            PipelinePhase::Eval => self.root.join(COMPARISON_JSON).is_file(),
        }
    }

    pub(super) fn write_status(&self) -> Result<(), TrainError> {
        let status: BTreeMap<&str, &str> = PipelinePhase::ALL
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

    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Trains one phase's PPO run in `dir` (resuming from its newest checkpoint if any).
    /// `None` when stopped before the end.
    pub(super) fn train_phase(
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

    pub(super) fn search(&mut self) -> Result<bool, TrainError> {
        if let Some(random) = from_scratch_random_params(self.config) {
            return self.random_search(random.clone());
        }
        let dir = self.dir(SEARCH_DIR);
        let mut config = self.config.clone();
        config.ppo.total_timesteps = self.pipeline.search_timesteps;
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

    /// genotype.json (rewritten, same content), genotype.txt (DARTS text form) and per cell
    /// type a Graphviz .dot file with .png and .svg renderings (when graphviz is installed).
    pub(super) fn write_genotype_files(
        &mut self,
        g: &Genotype,
        dir: &Path,
    ) -> Result<(), TrainError> {
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

    pub(super) fn retrain(&mut self) -> Result<bool, TrainError> {
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
            config.ppo.total_timesteps = self.pipeline.retrain_timesteps;
            let Some(record) = self.train_phase("retrain", &dir, &config)? else {
                return Ok(false);
            };
            write_json(&dir.join(PHASE_FILE), &record)?;
        }
        match self.baseline() {
            Baseline::Train(dir) => {
                if !dir.join(PHASE_FILE).is_file() {
                    let mut config = self.config.clone();
                    config.encoder = EncoderConfig::Impala(self.pipeline.baseline_encoder.clone());
                    config.ppo.total_timesteps = self.pipeline.retrain_timesteps;
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
    pub(super) fn reused_baseline(&mut self, from: &Path) -> Result<PathBuf, TrainError> {
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
        let budget = self.pipeline.retrain_timesteps;
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
}
