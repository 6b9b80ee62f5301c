//! The eval phase: both models on training and held-out levels, then the table.

use std::fs;
use std::path::Path;

use crate::logging::MetricsSink;
use crate::nas::Genotype;
use crate::train::rl::{evaluate, EvalOptions};
use crate::train::TrainError;

use super::comparison::{pm, Comparison, ComparisonRow, LevelResult, Levels, SearchInfo};
use super::files::{model_record, read_json, write_bytes, write_json};
use super::phases::{Baseline, Ctx, PhaseRecord};
use super::random::from_scratch_random_params;
use super::{
    COMPARISON_JSON, COMPARISON_MD, EVAL_DIR, GENOTYPE_FILE, PHASE_FILE, RETRAIN_DIR, SEARCH_DIR,
};

impl Ctx<'_> {
    pub(super) fn eval(&mut self) -> Result<bool, TrainError> {
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
        let e = &self.pipeline.eval;
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
                let result = self.evaluate_model(name, &model_dir, set, levels)?;
                write_json(&path, &result)?;
                sink.scalar(
                    &format!("eval/{name}/{set}_return"),
                    result.mean_return,
                    info.global_step as i64,
                );
                if let Some(n) = result.mean_normalized_return {
                    sink.scalar(
                        &format!("eval/{name}/{set}_normalized_return"),
                        n,
                        info.global_step as i64,
                    );
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
            search_timesteps: self.pipeline.search_timesteps,
            retrain_timesteps: self.pipeline.retrain_timesteps,
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
                random_candidates: from_scratch_random_params(self.config)
                    .map(|p| p.num_candidates),
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

    /// One model on one level set, with the pipeline's evaluation options; says the result.
    fn evaluate_model(
        &mut self,
        name: &str,
        model_dir: &Path,
        set: &str,
        levels: Levels,
    ) -> Result<LevelResult, TrainError> {
        let e = &self.pipeline.eval;
        self.reporter
            .message(&format!("[eval] {name} on {} ...", levels.describe()));
        let result: LevelResult = evaluate(
            model_dir,
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
        Ok(result)
    }
}
