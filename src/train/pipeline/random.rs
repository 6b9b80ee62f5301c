//! Random search from scratch, the baseline a supernet search has to beat.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, Genotype, RlDartsConfig};
use crate::search::{RandomParams, RandomSearch, StrategyConfig};
use crate::train::rl::{EncoderConfig, RlDartsFixedConfig, TrainConfig};
use crate::train::TrainError;

use super::files::{read_json, write_json};
use super::phases::{Ctx, PhaseRecord};
use super::PipelineConfig;
use super::{CANDIDATES_FILE, GENOTYPE_FILE, PHASE_FILE, SEARCH_DIR};

/// The random-search parameters when the search phase trains candidates from scratch
/// (`[search.strategy] kind = "random"` without weight sharing).
pub(super) fn from_scratch_random_params(config: &TrainConfig) -> Option<&RandomParams> {
    match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => Some(p),
        _ => None,
    }
}

/// Env steps of each random-search candidate: the search budget split evenly, rounded down to
/// whole PPO iterations, so the whole random search costs no more env steps than a supernet
/// search.
pub(super) fn candidate_timesteps(
    config: &TrainConfig,
    pipeline: &PipelineConfig,
    random: &RandomParams,
) -> u64 {
    let batch = config.ppo.batch_size() as u64;
    let each = pipeline.search_timesteps / random.num_candidates.max(1) as u64;
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

/// Index of the highest-scoring candidate; the earliest on ties, and a candidate without a
/// score only when none has one.
pub(super) fn best_candidate(candidates: &[RandomCandidate]) -> usize {
    let score = |c: &RandomCandidate| c.mean_return_last100.unwrap_or(f64::NEG_INFINITY);
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if score(c) > score(&candidates[best]) {
            best = i;
        }
    }
    best
}

impl Ctx<'_> {
    /// Random search from scratch, the baseline that DARTS has to beat (DARTS's Table 1; Li &
    /// Talwalkar 2019): `num_candidates` cells drawn uniformly from the search space (the same
    /// draw for a given seed, so a resumed search trains the same candidates), each retrained
    /// from scratch with PPO for an equal share of `pipeline.search_timesteps` in its own
    /// `train` run (search/candidate_NN/, resumable like every phase), scored by the mean
    /// return of its last 100 training episodes. No env step beyond the search's budget is
    /// spent on scoring, so the comparison with a supernet search is at equal env steps. The
    /// best candidate becomes the search's genotype.
    pub(super) fn random_search(&mut self, params: RandomParams) -> Result<bool, TrainError> {
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
        .map_err(|e| TrainError::about("random search", e))?;
        let mut sampler = RandomSearch::new(&probe, params.clone(), self.config.seed)
            .map_err(|e| TrainError::about("random search", e))?;
        let genotypes: Vec<Genotype> = (0..params.num_candidates)
            .map(|_| sampler.sample_genotype())
            .collect();
        let steps = candidate_timesteps(self.config, self.pipeline, &params);
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
                let Some(record) = self.train_candidate(
                    (index, genotypes.len()),
                    genotype,
                    &cdir,
                    &supernet,
                    steps,
                )?
                else {
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

    /// Trains candidate `index` of `count` from scratch in `cdir` (its genotype saved there);
    /// `None` when stopped before the end.
    fn train_candidate(
        &mut self,
        (index, count): (usize, usize),
        genotype: &Genotype,
        cdir: &Path,
        supernet: &RlDartsConfig,
        steps: u64,
    ) -> Result<Option<PhaseRecord>, TrainError> {
        fs::create_dir_all(cdir).map_err(|source| TrainError::Io {
            path: cdir.to_path_buf(),
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
            count,
            genotype.to_darts_string()
        ));
        let mut config = self.config.clone();
        config.encoder = EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
            genotype: path,
            supernet: supernet.clone(),
        });
        config.ppo.total_timesteps = steps;
        self.train_phase("search", cdir, &config)
    }
}
