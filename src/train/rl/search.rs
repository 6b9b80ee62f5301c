//! The architecture side of an RL search (RL-DARTS, Miao, Song et al. 2021): the supernet's
//! alphas in their own store and the search strategy that owns their optimizer (any strategy of
//! [`crate::search`], chosen by `[search.strategy]`).
//!
//! # How PPO drives a strategy
//!
//! Op weights are data: the search computes them and the loop passes them to the encoder.
//! Per PPO iteration the loop ([`super::driver`])
//! 1. calls [`ArchSearch::begin_iteration`] (the strategy's `begin_epoch`: one PPO iteration is
//!    one epoch of the temperature schedules);
//! 2. draws the iteration's architecture, [`ArchSearch::draw`] (the strategy's
//!    `sample_architecture`, from its own seeded generator: Gumbel noise for SNAS, a hard
//!    sample for GDAS and UNAS, a candidate for random search with weight sharing, nothing for
//!    the deterministic relaxations);
//! 3. collects the search rollout of a bilevel strategy and the training rollout with that
//!    architecture, and runs the PPO update through [`ArchSearch::iteration_arch`], which
//!    recomputes the op weights from the current alphas and the same sample for every
//!    minibatch (`sampled_op_weights`), and hands every weight step's real loss and gradient
//!    norm to the strategy's `after_weight_step` (single-level strategies, `joint` and `snas`,
//!    step the alphas there on the same backward pass; DARTS-PRIME schedules from the norm);
//! 4. takes the alpha steps a bilevel strategy asks for ([`ArchSearch::arch_phase`]).
//!
//! So the network whose probability ratio PPO clips is the network that acted: before the
//! first gradient step of an update the ratio is exactly 1, for every strategy.
//!
//! Departure from the DARTS loop, which interleaves one alpha step before every weight step:
//! the alpha steps of one PPO update come in a block after its weight steps, as many as the
//! strategy asks for at those iterations (so iDARTS still takes one per `T` weight steps), and
//! never between a rollout and the update that learns from it. The alphas' gradients are not
//! clipped by the PPO update's global-norm clip (that covers the weights only); each strategy's
//! own optimizer settings apply.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::config::RlSearchConfig;
use crate::agents::{AgentError, IterationArch, WeightStep};
use crate::logging::MetricsSink;
use crate::nas::{ArchParams, CellSpace, CellType, CellWeights, Genotype, OpCostTable};
use crate::search::{
    alphas, ArchSample, ArchStepStats, Phase, SearchError, SearchStrategy, StrategyConfig,
    WeightStepReport,
};
use crate::train::TrainError;

const ALPHAS_FILE: &str = "alphas.safetensors";
const SEARCH_STATE_FILE: &str = "search_state.json";

#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    strategy: String,
    weight_steps: u64,
}

/// Running sums of alpha-step statistics, averaged for logging.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StatsSum {
    loss: f64,
    grad_norm: f64,
    count: u32,
}

impl StatsSum {
    pub(super) fn add(&mut self, s: &ArchStepStats) {
        self.loss += s.loss;
        self.grad_norm += s.grad_norm;
        self.count += 1;
    }

    /// Mean loss and gradient norm, and how many steps, if any.
    pub(super) fn mean(&self) -> Option<(ArchStepStats, u32)> {
        (self.count > 0).then(|| {
            let n = f64::from(self.count);
            (
                ArchStepStats {
                    loss: self.loss / n,
                    grad_norm: self.grad_norm / n,
                },
                self.count,
            )
        })
    }
}

/// The alphas and the strategy of one RL search.
pub struct ArchSearch {
    pub config: RlSearchConfig,
    pub(super) arch: ArchParams,
    pub(super) strategy: Box<dyn SearchStrategy>,
    /// Weight steps taken so far (the strategies' `iteration`), checkpointed.
    weight_steps: u64,
    /// The weights' learning rate of the coming update, for the strategy's arch steps.
    pub(super) lr: f64,
    /// Single-level alpha steps taken inside PPO updates since the last
    /// [`ArchSearch::take_hook_stats`].
    hook_stats: StatsSum,
    /// The weight steps of the updates since the last [`ArchSearch::take_weight_steps`]:
    /// (global index, what the update reported).
    weight_step_log: Vec<(u64, WeightStep)>,
    /// Kept to hand them over again after [`ArchSearch::load`].
    costs: Option<OpCostTable>,
    /// Search-health measurements (checkpointed) and the early stop, if it fired.
    pub(super) health: crate::train::health::HealthMonitor,
    /// A health measurement is due but waits for an iteration with the strategy's batch.
    pub(super) health_pending: bool,
}

impl std::fmt::Debug for ArchSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchSearch")
            .field("strategy", &self.strategy.name())
            .field("weight_steps", &self.weight_steps)
            .finish()
    }
}

/// The strategy config as the RL search runs it. Departure from UNAS's official default
/// (`same_alpha_minibatch=False`, one architecture per example, which the supervised search
/// follows): in RL, UNAS draws one architecture per rollout, and its alpha step scores one
/// architecture per minibatch. Per-env architectures would need per-sample op weights stored
/// with every transition and replayed, row by row, for each shuffled PPO minibatch, and per-
/// example losses from PPO's objective, whose terms (the clipped ratio, the value loss, the
/// normalised advantages) are minibatch statistics, not a sum of independent per-transition
/// losses of one network; so UNAS runs with `same_alpha_minibatch = true` here, whatever the
/// config says.
fn rl_strategy_config(config: &StrategyConfig) -> StrategyConfig {
    config.with_unas_per_minibatch()
}

impl ArchSearch {
    /// Alphas for `space` (with a reduce matrix when `with_reduce`, and PC-DARTS's betas when
    /// `edge_normalisation`) and the strategy of `config`, seeded with `seed`.
    pub fn new(
        config: &RlSearchConfig,
        space: CellSpace,
        with_reduce: bool,
        edge_normalisation: bool,
        device: Device,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let mut config = config.clone();
        config.health = config.health.resolved(super::config::RL_HEALTH_EVERY);
        config.health.validate().map_err(TrainError::Invalid)?;
        if config.log_every == 0 {
            return Err(TrainError::Invalid(
                "search.log_every must be at least 1".into(),
            ));
        }
        let mut arch = ArchParams::new(device, space, with_reduce, config.alpha_init)
            .map_err(|e| TrainError::about("search.alpha_init", e))?;
        if edge_normalisation {
            arch = arch.with_edge_normalisation();
        }
        let strategy = rl_strategy_config(&config.strategy)
            .build(&arch, seed)
            .map_err(|e| TrainError::about("search.strategy", e))?;
        Ok(Self {
            config,
            arch,
            strategy,
            weight_steps: 0,
            lr: f64::NAN,
            hook_stats: StatsSum::default(),
            weight_step_log: Vec::new(),
            costs: None,
            health: Default::default(),
            health_pending: false,
        })
    }

    /// The strategy's name (one of [`crate::search::STRATEGY_NAMES`]).
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// Runs `f` on the alphas and the strategy (tests, tools).
    pub fn with<R>(&mut self, f: impl FnOnce(&ArchParams, &mut dyn SearchStrategy) -> R) -> R {
        f(&self.arch, self.strategy.as_mut())
    }

    /// The alphas and their space.
    pub fn arch(&self) -> &ArchParams {
        &self.arch
    }

    /// The architecture parameters themselves (not copies), alphas normal first, then any
    /// PC-DARTS betas: what a data-parallel run broadcasts from rank 0.
    pub fn alpha_tensors(&self) -> Vec<Tensor> {
        self.arch.parameters()
    }

    /// Copies of the alphas, normal first.
    pub fn alphas(&self) -> Vec<Tensor> {
        alphas(&self.arch).iter().map(Tensor::copy).collect()
    }

    /// Hands the supernet's per-op costs (for the actual input shape) to the strategy; kept
    /// and handed over again after [`ArchSearch::load`], as the strategy contract asks.
    pub fn set_op_costs(&mut self, costs: OpCostTable) -> Result<(), TrainError> {
        self.strategy.set_op_costs(&costs)?;
        self.costs = Some(costs);
        Ok(())
    }

    /// Measures the latency table the strategy asks for (if any) on `net` at `input_chw`, on
    /// `device`, and hands it over. The strategy keeps it across [`ArchSearch::load`].
    pub fn set_latency_from(
        &mut self,
        net: &dyn crate::nas::Supernet,
        input_chw: [i64; 3],
        device: Device,
    ) -> Result<(), TrainError> {
        let Some(options) = self.strategy.latency_request() else {
            return Ok(());
        };
        let (table, _) = crate::nas::latency::load_or_measure(net, input_chw, device, &options)
            .map_err(|e| TrainError::about("latency table", e))?;
        self.strategy
            .set_latency_table(table)
            .map_err(TrainError::from)
    }

    /// Start of PPO iteration `iteration` (0-based) of `num_iterations`: the strategy's epoch;
    /// `lr` is the weights' learning rate of the coming update.
    pub fn begin_iteration(&mut self, iteration: u64, num_iterations: u64, lr: f64) {
        self.strategy
            .begin_epoch(iteration as usize, num_iterations.max(1) as usize);
        self.lr = lr;
    }

    /// Weight steps taken so far.
    pub fn weight_steps(&self) -> u64 {
        self.weight_steps
    }

    /// Whether any of the alpha steps after weight steps `first..first + n` is wanted.
    pub fn wants_arch_steps(&self, first: u64, n: u64) -> bool {
        (first + 1..=first + n).any(|t| self.strategy.wants_arch_step(t))
    }

    /// The architecture of the coming rollout and update (see the module docs).
    pub fn draw(&mut self) -> Result<ArchSample, TrainError> {
        self.strategy
            .sample_architecture(&self.arch)
            .map_err(TrainError::from)
    }

    /// The op weights `sample` acts with under the current alphas, without gradients.
    pub fn acting_weights(&mut self, sample: &ArchSample) -> Result<CellWeights, TrainError> {
        tch::no_grad(|| self.strategy.sampled_op_weights(&self.arch, sample, false))
            .map_err(TrainError::from)
    }

    /// What the PPO trainer runs one iteration with: `sample` acting, then learning.
    pub fn iteration_arch<'a>(&'a mut self, sample: &'a ArchSample) -> SampledArch<'a> {
        SampledArch {
            search: self,
            sample,
        }
    }

    /// The strategy's deterministic architecture (its `Phase::Eval` weights: the argmax child
    /// for SNAS, GDAS and UNAS, the incumbent for random search), for evaluating a supernet
    /// checkpoint.
    pub fn eval_weights(&mut self) -> Result<CellWeights, TrainError> {
        tch::no_grad(|| self.strategy.op_weights(&self.arch, Phase::Eval)).map_err(TrainError::from)
    }

    /// Mean loss and gradient norm of the single-level alpha steps taken inside the PPO
    /// updates since the last call, with their count.
    pub fn take_hook_stats(&mut self) -> Option<(ArchStepStats, u32)> {
        std::mem::take(&mut self.hook_stats).mean()
    }

    /// The weight steps reported since the last call: (global index, report).
    pub fn take_weight_steps(&mut self) -> Vec<(u64, WeightStep)> {
        std::mem::take(&mut self.weight_step_log)
    }

    /// Writes the alphas, the strategy's state and the step counter into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.arch
            .save(dir.join(ALPHAS_FILE))
            .map_err(|e| TrainError::Checkpoint {
                path: dir.join(ALPHAS_FILE),
                reason: e.to_string(),
            })?;
        self.strategy.save(dir)?;
        let state = SavedState {
            strategy: self.strategy.name().to_string(),
            weight_steps: self.weight_steps,
        };
        self.health.save(dir)?;
        let path = dir.join(SEARCH_STATE_FILE);
        let json = serde_json::to_vec_pretty(&state).expect("search state serialises");
        std::fs::write(&path, json).map_err(|source| TrainError::Io { path, source })
    }

    /// Restores what [`ArchSearch::save`] wrote, then hands the op costs over again.
    pub fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(SEARCH_STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        let state: SavedState =
            serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if state.strategy != self.strategy.name() {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "written by a '{}' search, the config asks for '{}'",
                    state.strategy,
                    self.strategy.name()
                ),
            });
        }
        self.load_alphas(dir)?;
        self.strategy.load(dir)?;
        if let Some(c) = &self.costs {
            self.strategy.set_op_costs(c)?;
        }
        self.weight_steps = state.weight_steps;
        self.health = crate::train::health::HealthMonitor::load(dir)?;
        Ok(())
    }

    /// The alphas only.
    pub fn load_alphas(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(ALPHAS_FILE);
        self.arch.load(&path).map_err(|e| TrainError::Checkpoint {
            path,
            reason: e.to_string(),
        })
    }

    /// The discrete architecture the strategy currently derives.
    pub fn genotype(&self) -> Result<Genotype, TrainError> {
        self.strategy.derive(&self.arch).map_err(TrainError::from)
    }

    /// The strategy's expected op weights per cell type (`softmax(alpha)` for most),
    /// `[num_edges][num_ops]`.
    fn probabilities(&self) -> Vec<(CellType, &'static str, Vec<Vec<f64>>)> {
        let cells = [(CellType::Normal, "normal"), (CellType::Reduce, "reduce")];
        match self.strategy.expected_op_weights(&self.arch) {
            Ok(rows) => cells
                .into_iter()
                .zip(rows)
                .map(|((cell, name), rows)| (cell, name, rows))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Alpha softmax per edge and op, the entropy of each cell type's mixture, a heatmap per
    /// cell type, the strategy's scalars and the currently derived genotype.
    pub fn log(&self, sink: &mut dyn MetricsSink, step: i64) {
        let cells: Vec<(&str, Vec<Vec<f64>>)> = self
            .probabilities()
            .into_iter()
            .map(|(_, name, rows)| (name, rows))
            .collect();
        crate::logging::arch::log_architecture(sink, self.arch.space(), &cells, step);
        if let Ok(tables) = self.strategy.selector_tables() {
            crate::logging::arch::log_selectors(sink, &tables, step);
        }
        for (name, value) in self.strategy.scalars() {
            sink.scalar(&format!("strategy/{name}"), value, step);
        }
        if let Ok(g) = self.genotype() {
            sink.text("arch/genotype", &format!("`{}`", g.to_darts_string()), step);
        }
    }

    /// Draws the alpha trajectories so far (from the run's TensorBoard scalars) into
    /// `run_root`; a failure is a warning, never the end of a run.
    pub fn write_trajectories(&self, run_root: &Path) {
        let names: Vec<&str> = self
            .probabilities()
            .into_iter()
            .map(|(_, n, _)| n)
            .collect();
        let tb = run_root.join(crate::train::run_dir::TENSORBOARD_DIR);
        if let Err(e) =
            crate::logging::arch::write_trajectories(&tb, self.arch.space(), &names, run_root)
        {
            eprintln!("warning: no alpha trajectories ({e})");
        }
    }

    /// Writes genotype.json, genotype.txt (DARTS text form) and, when graphviz is installed,
    /// one PNG diagram per cell type into `dir`.
    /// After a RobustDARTS early stop, the architecture derived at the stopping point.
    pub fn write_genotype(&self, dir: &Path) -> Result<Genotype, TrainError> {
        let g = match &self.health.stopped {
            Some(stop) => stop.genotype.clone(),
            None => self.genotype()?,
        };
        let json = dir.join("genotype.json");
        g.save_json(&json).map_err(|e| TrainError::Checkpoint {
            path: json.clone(),
            reason: e.to_string(),
        })?;
        let text = dir.join("genotype.txt");
        std::fs::write(&text, g.to_darts_string() + "\n")
            .map_err(|source| TrainError::Io { path: text, source })?;
        for (cell, name, _) in self.probabilities() {
            let out = dir.join(format!("genotype_{name}.png"));
            if let Err(e) = crate::nas::genotype::render_dot(&g.to_dot(cell, 1), &out) {
                eprintln!("warning: no cell diagram ({e})");
            }
        }
        Ok(g)
    }
}

/// One iteration's architecture: the sample drawn for it, replayed under the current alphas
/// (see the module docs). Implements the trainer's [`IterationArch`].
pub struct SampledArch<'a> {
    search: &'a mut ArchSearch,
    sample: &'a ArchSample,
}

fn arch_err(name: &str, e: SearchError) -> AgentError {
    AgentError::Arch(format!("{name}: {e}"))
}

impl IterationArch<CellWeights> for SampledArch<'_> {
    fn acting(&mut self) -> Result<CellWeights, AgentError> {
        let name = self.search.strategy.name();
        self.search
            .acting_weights(self.sample)
            .map_err(|e| AgentError::Arch(format!("{name}: {e}")))
    }

    /// Clears the alphas' gradients: a single-level step after this minibatch's weight step
    /// must see this minibatch's gradient only (bilevel strategies leave them untouched here).
    fn begin_minibatch(&mut self) -> Result<(), AgentError> {
        for mut a in alphas(&self.search.arch) {
            a.zero_grad();
        }
        Ok(())
    }

    fn learning(&mut self) -> Result<CellWeights, AgentError> {
        let s = &mut *self.search;
        s.strategy
            .sampled_op_weights(&s.arch, self.sample, true)
            .map_err(|e| arch_err(s.strategy.name(), e))
    }

    fn after_weight_step(&mut self, step: &WeightStep) -> Result<(), AgentError> {
        let s = &mut *self.search;
        let report = WeightStepReport {
            iteration: s.weight_steps,
            loss: step.loss,
            grad_norm_sq: step.grad_norm * step.grad_norm,
            lr: step.lr,
        };
        s.weight_step_log.push((s.weight_steps, *step));
        s.weight_steps += 1;
        match s.strategy.after_weight_step(&s.arch, &report) {
            Ok(Some(stats)) => {
                if !(stats.loss.is_finite() && stats.grad_norm.is_finite()) {
                    return Err(AgentError::Arch(format!(
                        "{}: the alpha step after weight step {} reports loss {} and gradient norm {}",
                        s.strategy.name(),
                        report.iteration,
                        stats.loss,
                        stats.grad_norm
                    )));
                }
                s.hook_stats.add(&stats);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(arch_err(s.strategy.name(), e)),
        }
    }

    /// The alphas: a single-level strategy steps them from this backward pass, so a
    /// data-parallel update averages their gradients over the processes with the weights'.
    fn gradients(&self) -> Vec<Tensor> {
        alphas(&self.search.arch)
    }
}

/// Whether no trainable variable of `weights` shares storage with an alpha (the two stores
/// stay apart).
pub fn stores_are_disjoint(weights: &tch::nn::VarStore, alphas: &[Tensor]) -> bool {
    weights
        .trainable_variables()
        .iter()
        .all(|w| alphas.iter().all(|a| w.data_ptr() != a.data_ptr()))
}

#[cfg(test)]
mod tests {
    use super::{rl_strategy_config, StrategyConfig};

    /// RL runs UNAS with one architecture per batch whatever the config says (see
    /// `rl_strategy_config`); other strategies pass through unchanged.
    #[test]
    fn rl_runs_unas_with_one_architecture_per_batch() {
        let unas = StrategyConfig::from_name("unas").unwrap();
        let StrategyConfig::Unas(p) = rl_strategy_config(&unas) else {
            panic!("not unas")
        };
        assert!(p.same_alpha_minibatch);
        let snas = StrategyConfig::from_name("snas").unwrap();
        assert_eq!(rl_strategy_config(&snas), snas);
    }
}
