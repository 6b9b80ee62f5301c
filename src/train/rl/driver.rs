//! What one PPO iteration is, for a fixed network and for a searched supernet: the part of a
//! run that depends on the encoder's architecture. The loop around it ([`super::run`]) logs,
//! reports progress and checkpoints the same way for both.

use std::path::Path;
use std::time::Instant;

use tch::{nn, Device, Tensor};

use super::config::TrainConfig;
use super::objective::ArchPhase;
use super::search::ArchSearch;
use super::search_envs::SearchLoop;
use crate::agents::{FixedArch, Heartbeat, IterationStats, PpoTrainer};
use crate::envs::{EpisodeStats, VecEnv};
use crate::logging::MetricsSink;
use crate::nas::CellWeights;
use crate::train::TrainError;

/// The part of a PPO run that depends on whether the encoder is searched.
pub(super) trait Driver {
    /// The encoder's architecture argument (`()` or op weights).
    type Arch;

    /// One rollout and PPO update, with whatever the architecture needs around them; also
    /// returns the seconds spent outside the rollout and update (search rollouts, alpha steps).
    /// `progress` hears of every env step and minibatch and may stop the iteration.
    fn iteration(
        &mut self,
        trainer: &mut PpoTrainer<Self::Arch>,
        env: &mut dyn VecEnv,
        config: &TrainConfig,
        sink: &mut dyn MetricsSink,
        progress: &mut dyn Heartbeat,
    ) -> Result<(IterationStats, f64), TrainError>;

    /// An architecture that costs at least as much memory in the update as any the run will
    /// learn with, for the memory probe ([`super::memory::plan_update`]); drawing it must not
    /// touch the run's random streams.
    fn probe_arch(&mut self) -> Result<Self::Arch, TrainError>;

    /// Samples per minibatch of any extra gradient work (a bilevel strategy's alpha steps),
    /// capped to what the memory plan allows.
    fn set_micro_batch(&mut self, _micro_batch: Option<usize>) {}

    /// Architecture logs after an iteration (a search logs every `search.log_every`).
    fn log(&mut self, _sink: &mut dyn MetricsSink, _iterations_done: u64, _step: i64) {}

    /// Writes the architecture's state into a checkpoint folder.
    fn save(&self, _dir: &Path) -> Result<(), TrainError> {
        Ok(())
    }

    /// Restores what [`Driver::save`] wrote.
    fn load(&mut self, _dir: &Path, _config: &TrainConfig) -> Result<(), TrainError> {
        Ok(())
    }

    /// After each checkpoint: a search redraws its alpha trajectories in `run_root`.
    fn after_checkpoint(&self, _run_root: &Path) {}

    /// The architecture's parameters that every process of a data-parallel run must hold
    /// equal (broadcast from rank 0 at the start): a search's alphas.
    fn shared_parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }

    /// Makes this process one of a data-parallel run's: its own random streams restart from
    /// `seed` after a resume from rank 0's checkpoint (a search's extra rollout), and what
    /// cannot yet be all-reduced is refused.
    fn join_data_parallel(&mut self, _seed: Option<u64>) -> Result<(), TrainError> {
        Ok(())
    }

    /// Whether the architecture search ended the run early (RobustDARTS's rule).
    fn stopped_early(&self) -> bool {
        false
    }

    /// At the end of a run: a search writes its derived genotype into `run_root`.
    fn finish(
        &self,
        _run_root: &Path,
        _sink: &mut dyn MetricsSink,
        _step: i64,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

/// A fixed network: the trainer's iteration, nothing around it.
pub(super) struct FixedDriver;

impl Driver for FixedDriver {
    type Arch = ();

    fn iteration(
        &mut self,
        trainer: &mut PpoTrainer,
        env: &mut dyn VecEnv,
        _config: &TrainConfig,
        _sink: &mut dyn MetricsSink,
        progress: &mut dyn Heartbeat,
    ) -> Result<(IterationStats, f64), TrainError> {
        Ok((trainer.iteration(env, &mut FixedArch, progress)?, 0.0))
    }

    fn probe_arch(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// A supernet whose architecture the run searches (module docs of [`super::search`]).
pub(super) struct SearchDriver {
    pub(super) search: Box<ArchSearch>,
    envs: SearchLoop,
    device: Device,
    /// Cap on the alpha steps' minibatch from the memory plan.
    micro_batch: Option<usize>,
    /// One process of a data-parallel run.
    data_parallel: bool,
}

impl SearchDriver {
    pub(super) fn new(search: Box<ArchSearch>, config: &TrainConfig, device: Device) -> Self {
        Self {
            search,
            envs: SearchLoop::new(config.seed),
            device,
            micro_batch: None,
            data_parallel: false,
        }
    }
}

impl Driver for SearchDriver {
    type Arch = CellWeights;

    fn iteration(
        &mut self,
        trainer: &mut PpoTrainer<CellWeights>,
        env: &mut dyn VecEnv,
        config: &TrainConfig,
        sink: &mut dyn MetricsSink,
        progress: &mut dyn Heartbeat,
    ) -> Result<(IterationStats, f64), TrainError> {
        let search_start = Instant::now();
        let search = &mut self.search;
        search.begin_iteration(
            trainer.iterations_done(),
            config.ppo.num_iterations(),
            trainer.learning_rate(),
        );
        // The architecture of this iteration: drawn once, acting in both rollouts, replayed by
        // every minibatch of the update.
        let sample = search.draw()?;
        let first_step = search.weight_steps();
        let planned_steps = (config.ppo.update_epochs * config.ppo.num_minibatches) as u64;
        let wants_arch_steps = search.wants_arch_steps(first_step, planned_steps);
        let search_batch = if wants_arch_steps {
            let acting = search.acting_weights(&sample)?;
            let (batch, episodes) =
                self.envs
                    .collect(config, self.device, &trainer.policy, &acting, progress)?;
            log_search_episodes(
                sink,
                &episodes,
                (trainer.global_step() + config.ppo.batch_size() as u64) as i64,
            );
            Some(batch)
        } else {
            None
        };
        let mut search_secs = search_start.elapsed().as_secs_f64();

        let stats = trainer.iteration(env, &mut search.iteration_arch(&sample), progress)?;
        let step = stats.global_step as i64;
        for (index, ws) in search.take_weight_steps() {
            // One point per weight step (DARTS-PRIME's schedule reads this norm).
            sink.scalar("search/weight_grad_norm", ws.grad_norm, index as i64);
        }

        // Alpha steps of bilevel strategies, after the update, on the update's own training
        // batch and the search rollout; then search health, when due.
        let iterations_done = trainer.iterations_done();
        let health_due = search.health_due(iterations_done);
        if search_batch.is_some() || health_due {
            let arch_start = Instant::now();
            let train_batch = trainer
                .take_last_batch()
                .expect("an iteration leaves its training batch");
            let search_rows = search_batch.as_ref().unwrap_or(&train_batch);
            let phase = || ArchPhase {
                policy: &trainer.policy,
                ppo: &config.ppo,
                parameters: trainer.optimizer.parameters(),
                buffers: buffers(&trainer.vs),
                train: &train_batch,
                search: search_rows,
                // Capped by the memory plan: an alpha step's forwards and backwards would
                // otherwise need as much memory as an unsplit PPO minibatch, or more.
                minibatch: (search_rows.len() as usize / config.ppo.num_minibatches)
                    .min(self.micro_batch.unwrap_or(usize::MAX))
                    .max(1),
                weight_steps: (first_step, stats.ppo.minibatches as u64),
                // Data-parallel: the strategy averages every gradient it computes over the
                // processes (each holds its share of both rollouts).
                data_parallel: trainer.data_parallel().filter(|_| self.data_parallel),
            };
            if search_batch.is_some() {
                if let Some((s, count)) = search.arch_phase(phase(), &mut self.envs.rng)? {
                    log_arch_steps(sink, "bilevel", &s, count, step);
                }
            }
            if health_due {
                search.measure_health(
                    phase(),
                    search_batch.is_some(),
                    sink,
                    iterations_done,
                    step,
                )?;
            }
            search_secs += arch_start.elapsed().as_secs_f64();
        }
        if let Some((s, count)) = search.take_hook_stats() {
            log_arch_steps(sink, "single_level", &s, count, step);
        }
        sink.scalar("perf/search_secs", search_secs, step);
        Ok((stats, search_secs))
    }

    /// The dense softmax relaxation with its graph: every op of every edge runs and the
    /// backward reaches the alphas, the most any strategy's update computes.
    fn probe_arch(&mut self) -> Result<CellWeights, TrainError> {
        Ok(self.search.arch().softmax_weights(1.0))
    }

    fn set_micro_batch(&mut self, micro_batch: Option<usize>) {
        self.micro_batch = micro_batch;
    }

    fn log(&mut self, sink: &mut dyn MetricsSink, iterations_done: u64, step: i64) {
        if iterations_done.is_multiple_of(self.search.config.log_every.max(1)) {
            self.search.log(sink, step);
        }
    }

    fn shared_parameters(&self) -> Vec<Tensor> {
        self.search.alpha_tensors()
    }

    fn join_data_parallel(&mut self, seed: Option<u64>) -> Result<(), TrainError> {
        // Before the first iteration, so that a strategy without an exact data-parallel form
        // is an error at the start, not a run whose processes drift apart.
        self.search
            .strategy
            .data_parallel_support()
            .map_err(|e| TrainError::about("distributed.backend", e))?;
        self.data_parallel = true;
        if let Some(seed) = seed {
            // The search envs are rebuilt on the next search rollout, from this process's
            // seeds (rank 0's saved search envs belong to rank 0).
            self.envs = SearchLoop::new(seed);
        }
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.search.save(dir)?;
        self.envs.save(dir)
    }

    fn load(&mut self, dir: &Path, config: &TrainConfig) -> Result<(), TrainError> {
        self.search.load(dir)?;
        self.envs.load(dir, config, self.device)
    }

    fn after_checkpoint(&self, run_root: &Path) {
        self.search.write_trajectories(run_root);
    }

    fn stopped_early(&self) -> bool {
        self.search.stopped_early()
    }

    fn finish(
        &self,
        run_root: &Path,
        sink: &mut dyn MetricsSink,
        step: i64,
    ) -> Result<(), TrainError> {
        self.search.write_early_stop(run_root)?;
        let g = self.search.write_genotype(run_root)?;
        self.search.write_trajectories(run_root);
        sink.text(
            "arch/final_genotype",
            &format!("`{}`", g.to_darts_string()),
            step,
        );
        Ok(())
    }
}

/// Non-trainable variables of the weight store, in name order: what a virtual weight step
/// must restore with the weights.
fn buffers(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

fn log_arch_steps(
    sink: &mut dyn MetricsSink,
    kind: &str,
    s: &crate::search::ArchStepStats,
    count: u32,
    step: i64,
) {
    let tags = [
        format!("search/{kind}_arch_loss"),
        format!("search/{kind}_arch_grad_norm"),
        format!("search/{kind}_arch_steps"),
    ];
    sink.scalars(
        &[
            (tags[0].as_str(), s.loss),
            (tags[1].as_str(), s.grad_norm),
            (tags[2].as_str(), f64::from(count)),
        ],
        step,
    );
}

fn log_search_episodes(sink: &mut dyn MetricsSink, episodes: &[EpisodeStats], step: i64) {
    for ep in episodes {
        sink.scalar("search/episodic_return", ep.episode_return, step);
    }
}
