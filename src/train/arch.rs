//! The architecture side of an RL search (RL-DARTS, Miao, Song et al. 2021): the supernet's
//! alphas in their own store, the search strategy that owns their optimizer (any strategy of
//! [`crate::search`], chosen by `[search.strategy]`), the op-weights slot the supernet encoder
//! reads on every forward, and PPO as an [`Objective`] for bilevel strategies.
//!
//! # How PPO drives a strategy
//!
//! Every encoder forward asks the slot for op weights, and the slot asks the strategy:
//! `op_weights(Phase::Weights)` for training-mode forwards (the PPO update's minibatches: GDAS,
//! SNAS and random search draw a fresh sample for each one), `op_weights(Phase::Eval)` for
//! inference-mode forwards (rollouts and evaluation: the strategy's deterministic
//! architecture), and the weights a strategy passes to [`Objective::train_loss`] /
//! [`Objective::search_loss`] inside its own arch step.
//!
//! Per PPO iteration the loop (see [`crate::train::rl`]) calls
//! 1. [`ArchSearch::begin_iteration`] (the strategy's `begin_epoch`: one PPO iteration is
//!    one epoch of the temperature schedules);
//! 2. the PPO update, whose joint-optimizer hook ([`ArchSearch::joint_optimizer`]) calls the
//!    strategy's `after_weight_step` after every minibatch's weight step (single-level
//!    strategies, `joint` and `snas`, step the alphas there on the same backward pass);
//! 3. [`ArchSearch::arch_phase`]: for each weight step `t` of the update, if
//!    `wants_arch_step(t + 1)`, one `arch_step` with PPO losses on a fresh minibatch of the
//!    training rollout and one of the search rollout.
//!
//! Departure from the DARTS loop, which interleaves one alpha step before every weight step:
//! the PPO update runs inside [`crate::agents::PpoTrainer`], which lends the policy to nothing
//! while it updates, so alpha steps come in a block after the update's weight steps, as many
//! as the strategy asks for at those iterations (so iDARTS still takes one per `T` weight
//! steps). The alpha step that would precede the very first weight step is skipped (there is
//! no data yet).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::TrainError;
use crate::agents::{ppo_loss, ActorCritic, Batch, JointOptimizer, PpoConfig};
use crate::logging::MetricsSink;
use crate::nas::{
    AlphaInit, ArchParams, CellSpace, CellType, CellWeights, Genotype, OpCostTable, OpWeightsSlot,
    RlDartsConfig,
};
use crate::search::{
    ArchStepStats, JointParams, Objective, Phase, SearchError, SearchStrategy, StrategyConfig,
    VirtualStep, WeightStepReport,
};

/// `[encoder] kind = "rl_darts"`: the searched image encoder. How its alphas learn is
/// `[search]` ([`RlSearchConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsSearchConfig {
    /// The supernet: layout, channels, nodes, op set (RL-DARTS: "standard", [16, 32, 32],
    /// 4 nodes, {conv_3x3, relu, tanh, skip, zero}).
    pub supernet: RlDartsConfig,
}

/// Where the search (validation) batch of a bilevel strategy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchBatch {
    /// `search_envs` more environments on the *training* levels, rolled out by the same policy
    /// at the same iteration as the training envs (just before them); their transitions never
    /// enter the weight update. The search loss then measures the same task on data the
    /// weights were not fitted to: DARTS's train/val split, cut along environments.
    RolloutSplit,
    /// `search_envs` environments on `heldout_num_levels` Procgen levels that follow the
    /// training levels (`start_level + num_levels` onwards, so disjoint from them), same
    /// policy. The search loss then rewards architectures that generalise to unseen levels,
    /// the Procgen benchmark's own question. Procgen with `num_levels > 0` only.
    HeldoutLevels,
}

/// `[search]`: how a supernet encoder's architecture is searched during PPO. Read only when
/// the encoder is a supernet (`rl_darts`, `mlp_darts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlSearchConfig {
    /// The strategy (`[search.strategy] kind = ...`, parameters in `[search.strategy.params]`):
    /// `joint` (default: RL-DARTS's joint first-order search, alphas trained by the PPO loss
    /// on the same backward pass), `darts` (bilevel, first or second order), `idarts`, `gdas`,
    /// `snas`, `random`.
    pub strategy: StrategyConfig,
    /// Bilevel strategies only (darts, idarts, gdas, random): `rollout_split` (default) or
    /// `heldout_levels`, see [`SearchBatch`].
    pub search_batch: SearchBatch,
    /// Environments of the search rollout (`ppo.num_steps` steps each per iteration; the
    /// rollout is split into `ppo.num_minibatches` minibatches, the size of both minibatches
    /// of an alpha step). Bilevel strategies only. Unset (the default): a quarter of
    /// `ppo.num_envs`, at least 1 (16 for the Procgen paper's 64 training envs; DARTS's 50/50
    /// split would double the env steps of the search).
    pub search_envs: Option<usize>,
    /// `heldout_levels` only: how many levels the search envs play, from the first level
    /// after the training levels. Default 200 (as many as the training levels).
    pub heldout_num_levels: i32,
    /// Initial alphas, `mean + std * N(0, 1)`. DARTS / RL-DARTS: N(0, 1e-3^2).
    pub alpha_init: AlphaInit,
    /// Log alpha softmaxes, entropies, heatmaps, strategy scalars and the derived genotype
    /// every this many PPO iterations.
    pub log_every: u64,
}

impl RlSearchConfig {
    /// Envs of the search rollout for `num_envs` training envs.
    pub fn search_envs(&self, num_envs: usize) -> usize {
        self.search_envs.unwrap_or((num_envs / 4).max(1))
    }
}

impl Default for RlSearchConfig {
    fn default() -> Self {
        Self {
            strategy: StrategyConfig::Joint(JointParams::default()),
            search_batch: SearchBatch::RolloutSplit,
            search_envs: None,
            heldout_num_levels: 200,
            alpha_init: AlphaInit::default(),
            log_every: 1,
        }
    }
}

/// The strategy and the alphas, shared by the loop, the slot and the PPO hook.
struct Core {
    arch: ArchParams,
    strategy: Box<dyn SearchStrategy>,
    /// Weight steps taken so far (the strategies' `iteration`), checkpointed.
    weight_steps: u64,
    /// The weights' current learning rate, for [`WeightStepReport`].
    lr: f64,
    /// Single-level alpha steps since the last [`ArchSearch::take_hook_stats`].
    hook_stats: StatsSum,
    /// A failure inside the slot or the PPO hook (which cannot return errors), raised by the
    /// loop right after the iteration.
    error: Option<SearchError>,
}

#[derive(Debug, Default, Clone, Copy)]
struct StatsSum {
    loss: f64,
    grad_norm: f64,
    count: u32,
}

impl StatsSum {
    fn add(&mut self, s: &ArchStepStats) {
        self.loss += s.loss;
        self.grad_norm += s.grad_norm;
        self.count += 1;
    }

    fn mean(&self) -> Option<(ArchStepStats, u32)> {
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

/// Weights that the slot returns instead of asking the strategy, while an [`Objective`]
/// evaluates the weights a strategy handed it.
type Forced = Arc<Mutex<Option<CellWeights>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const ALPHAS_FILE: &str = "alphas.safetensors";
const SEARCH_STATE_FILE: &str = "search_state.json";

#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    strategy: String,
    weight_steps: u64,
}

/// The architecture side of a search: alphas, strategy, slot.
pub struct ArchSearch {
    pub config: RlSearchConfig,
    /// What the supernet reads its op weights from.
    pub slot: OpWeightsSlot,
    core: Arc<Mutex<Core>>,
    forced: Forced,
    costs: Mutex<Option<OpCostTable>>,
}

impl std::fmt::Debug for ArchSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchSearch")
            .field("strategy", &self.config.strategy.name())
            .finish()
    }
}

impl ArchSearch {
    /// Alphas for `space` (with a reduce matrix when `with_reduce`) and the strategy of
    /// `config`, seeded with `seed`.
    pub fn new(
        config: &RlSearchConfig,
        space: CellSpace,
        with_reduce: bool,
        device: Device,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if config.log_every == 0 {
            return Err(TrainError::Invalid(
                "search.log_every must be at least 1".into(),
            ));
        }
        let arch = ArchParams::new(device, space, with_reduce, config.alpha_init)
            .map_err(|e| TrainError::Invalid(format!("search.alpha_init: {e}")))?;
        let strategy = config
            .strategy
            .build(&arch, seed)
            .map_err(|e| TrainError::Invalid(format!("search.strategy: {e}")))?;
        let core = Arc::new(Mutex::new(Core {
            arch,
            strategy,
            weight_steps: 0,
            lr: f64::NAN,
            hook_stats: StatsSum::default(),
            error: None,
        }));
        let forced: Forced = Arc::new(Mutex::new(None));
        let slot = {
            let (core, forced) = (core.clone(), forced.clone());
            OpWeightsSlot::new(move |train| {
                if let Some(w) = lock(&forced).as_ref() {
                    return w.shallow_clone();
                }
                let mut guard = lock(&core);
                let Core {
                    arch,
                    strategy,
                    error,
                    ..
                } = &mut *guard;
                let phase = if train { Phase::Weights } else { Phase::Eval };
                match strategy.op_weights(arch, phase) {
                    Ok(w) => w,
                    Err(e) => {
                        // The slot cannot fail: run this forward on the plain softmax and let
                        // the loop raise the error right after the iteration.
                        error.get_or_insert(e);
                        tch::no_grad(|| arch.softmax_weights(1.0))
                    }
                }
            })
        };
        Ok(Self {
            config: config.clone(),
            slot,
            core,
            forced,
            costs: Mutex::new(None),
        })
    }

    /// The strategy's name (one of [`crate::search::STRATEGY_NAMES`]).
    pub fn strategy_name(&self) -> &'static str {
        lock(&self.core).strategy.name()
    }

    /// Runs `f` on the alphas and the strategy (tests, tools). Do not run an encoder forward
    /// inside `f` unless op weights are forced (the slot would wait for this lock).
    pub fn with<R>(&self, f: impl FnOnce(&ArchParams, &mut dyn SearchStrategy) -> R) -> R {
        let mut guard = lock(&self.core);
        let Core { arch, strategy, .. } = &mut *guard;
        f(arch, strategy.as_mut())
    }

    /// Copies of the alphas, normal first.
    pub fn alphas(&self) -> Vec<Tensor> {
        self.with(|arch, _| {
            crate::search::alphas(arch)
                .iter()
                .map(Tensor::copy)
                .collect()
        })
    }

    /// Shallow handles of the alphas (same storage), normal first.
    pub fn alpha_handles(&self) -> Vec<Tensor> {
        self.with(|arch, _| crate::search::alphas(arch))
    }

    /// Hands the supernet's per-op costs (for the actual input shape) to the strategy; kept
    /// and handed over again after [`ArchSearch::load`], as the strategy contract asks.
    pub fn set_op_costs(&self, costs: OpCostTable) -> Result<(), TrainError> {
        self.with(|_, s| s.set_op_costs(&costs))
            .map_err(search_err)?;
        *lock(&self.costs) = Some(costs);
        Ok(())
    }

    /// Measures the latency table the strategy asks for (if any) on `net` at `input_chw`, on
    /// `device`, and hands it over. The strategy keeps it across [`ArchSearch::load`].
    pub fn set_latency_from(
        &self,
        net: &dyn crate::nas::Supernet,
        input_chw: [i64; 3],
        device: tch::Device,
    ) -> Result<(), TrainError> {
        let Some(options) = self.with(|_, s| s.latency_request()) else {
            return Ok(());
        };
        let (table, _) = crate::nas::latency::load_or_measure(net, input_chw, device, &options)
            .map_err(|e| TrainError::Invalid(format!("latency table: {e}")))?;
        self.with(|_, s| s.set_latency_table(table))
            .map_err(search_err)
    }

    /// Start of PPO iteration `iteration` (0-based) of `num_iterations`: the strategy's epoch.
    pub fn begin_iteration(&self, iteration: u64, num_iterations: u64) {
        self.with(|_, s| s.begin_epoch(iteration as usize, num_iterations.max(1) as usize));
    }

    /// The weights' learning rate of the coming update (reported to the strategy).
    pub fn set_weight_lr(&self, lr: f64) {
        lock(&self.core).lr = lr;
    }

    /// Weight steps taken so far.
    pub fn weight_steps(&self) -> u64 {
        lock(&self.core).weight_steps
    }

    /// Whether any of the alpha steps after weight steps `first..first + n` is wanted.
    pub fn wants_arch_steps(&self, first: u64, n: u64) -> bool {
        self.with(|_, s| (first + 1..=first + n).any(|t| s.wants_arch_step(t)))
    }

    /// The hook the PPO update steps on every minibatch: calls `after_weight_step`.
    pub fn joint_optimizer(&self) -> Box<dyn JointOptimizer> {
        Box::new(StrategyHook {
            core: self.core.clone(),
        })
    }

    /// An error raised inside a forward or the PPO hook since the last call.
    pub fn take_error(&self) -> Result<(), TrainError> {
        match lock(&self.core).error.take() {
            Some(e) => Err(search_err(e)),
            None => Ok(()),
        }
    }

    /// Mean loss and gradient norm of the single-level alpha steps taken inside the PPO
    /// update since the last call, with their count.
    pub fn take_hook_stats(&self) -> Option<(ArchStepStats, u32)> {
        std::mem::take(&mut lock(&self.core).hook_stats).mean()
    }

    /// Until the returned guard drops, every encoder forward uses `weights` (what an
    /// [`Objective`] evaluates).
    fn force(&self, weights: &CellWeights) -> ForcedGuard<'_> {
        *lock(&self.forced) = Some(weights.shallow_clone());
        ForcedGuard(&self.forced)
    }

    /// The alpha steps the strategy wants after the weight steps `first..first + n` of one PPO
    /// update (see the module doc), each on a fresh minibatch of `minibatch` samples from the
    /// training rollout `train` and one from the search rollout `search`. Returns the mean
    /// step statistics and the number of steps.
    #[allow(clippy::too_many_arguments)]
    pub fn arch_phase(
        &self,
        policy: &ActorCritic,
        ppo: &PpoConfig,
        optimizer_params: Vec<Tensor>,
        buffers: Vec<Tensor>,
        train: &Batch,
        search: &Batch,
        minibatch: usize,
        rng: &mut ChaCha8Rng,
        (first, n): (u64, u64),
    ) -> Result<Option<(ArchStepStats, u32)>, TrainError> {
        let mut sum = StatsSum::default();
        let lr = lock(&self.core).lr;
        for t in first + 1..=first + n {
            let wanted = self.with(|_, s| s.wants_arch_step(t));
            if !wanted {
                continue;
            }
            let mut objective = PpoObjective {
                search: self,
                policy,
                config: ppo,
                train: draw(train, minibatch, rng),
                search_batch: draw(search, minibatch, rng),
                parameters: optimizer_params.iter().map(Tensor::shallow_clone).collect(),
                buffers: buffers.iter().map(Tensor::shallow_clone).collect(),
                lr,
            };
            let stats = {
                let mut guard = lock(&self.core);
                let Core { arch, strategy, .. } = &mut *guard;
                strategy.arch_step(arch, &mut objective)
            }
            .map_err(search_err)?;
            if !stats.loss.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "{}: the alpha step's search loss is {} at weight step {t}",
                    self.config.strategy.name(),
                    stats.loss
                )));
            }
            sum.add(&stats);
        }
        Ok(sum.mean())
    }

    /// Writes the alphas, the strategy's state and the step counter into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let guard = lock(&self.core);
        guard
            .arch
            .save(dir.join(ALPHAS_FILE))
            .map_err(|e| TrainError::Checkpoint {
                path: dir.join(ALPHAS_FILE),
                reason: e.to_string(),
            })?;
        guard.strategy.save(dir).map_err(search_err)?;
        let state = SavedState {
            strategy: guard.strategy.name().to_string(),
            weight_steps: guard.weight_steps,
        };
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
        let costs = lock(&self.costs).clone();
        let mut guard = lock(&self.core);
        if state.strategy != guard.strategy.name() {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "written by a '{}' search, the config asks for '{}'",
                    state.strategy,
                    guard.strategy.name()
                ),
            });
        }
        let alphas = dir.join(ALPHAS_FILE);
        guard
            .arch
            .load(&alphas)
            .map_err(|e| TrainError::Checkpoint {
                path: alphas,
                reason: e.to_string(),
            })?;
        guard.strategy.load(dir).map_err(search_err)?;
        if let Some(c) = &costs {
            guard.strategy.set_op_costs(c).map_err(search_err)?;
        }
        guard.weight_steps = state.weight_steps;
        Ok(())
    }

    /// The alphas only.
    pub fn load_alphas(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(ALPHAS_FILE);
        lock(&self.core)
            .arch
            .load(&path)
            .map_err(|e| TrainError::Checkpoint {
                path,
                reason: e.to_string(),
            })
    }

    /// The discrete architecture the strategy currently derives.
    pub fn genotype(&self) -> Result<Genotype, TrainError> {
        self.with(|arch, s| s.derive(arch)).map_err(search_err)
    }

    /// The strategy's expected op weights per cell type (`softmax(alpha)` for most),
    /// `[num_edges][num_ops]`.
    fn probabilities(&self) -> Vec<(CellType, &'static str, Vec<Vec<f64>>)> {
        self.with(|arch, s| {
            let cells = [(CellType::Normal, "normal"), (CellType::Reduce, "reduce")];
            match s.expected_op_weights(arch) {
                Ok(rows) => cells
                    .into_iter()
                    .zip(rows)
                    .map(|((cell, name), rows)| (cell, name, rows))
                    .collect(),
                Err(_) => Vec::new(),
            }
        })
    }

    /// Alpha softmax per edge and op, the entropy of each cell type's mixture, a heatmap per
    /// cell type, the strategy's scalars and the currently derived genotype.
    pub fn log(&self, sink: &mut dyn MetricsSink, step: i64) {
        let (ops, edges) = self.with(|arch, _| (arch.space().op_set.ops(), arch.space().edges()));
        for (_, name, rows) in self.probabilities() {
            let mut entropy = 0.0;
            for (edge, row) in edges.iter().zip(&rows) {
                for (op, &p) in ops.iter().zip(row) {
                    let tag = format!(
                        "arch/{name}/edge{}_{}to{}/{}",
                        edge.index,
                        edge.from,
                        edge.node,
                        op.name()
                    );
                    sink.scalar(&tag, p, step);
                }
                entropy += op_entropy(row);
            }
            sink.scalar(
                &format!("arch/{name}_entropy"),
                entropy / rows.len().max(1) as f64,
                step,
            );
            let (rgb, h, w) = crate::media::probability_heatmap(&rows, 12);
            sink.image(&format!("arch/{name}_heatmap"), &rgb, h, w, step);
        }
        for (name, value) in self.with(|_, s| s.scalars()) {
            sink.scalar(&format!("strategy/{name}"), value, step);
        }
        if let Ok(g) = self.genotype() {
            sink.text("arch/genotype", &format!("`{}`", g.to_darts_string()), step);
        }
    }

    /// Writes genotype.json, genotype.txt (DARTS text form) and, when graphviz is installed,
    /// one PNG diagram per cell type into `dir`.
    pub fn write_genotype(&self, dir: &Path) -> Result<Genotype, TrainError> {
        let g = self.genotype()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: crate::nas::NasError| TrainError::Checkpoint {
                path,
                reason: e.to_string(),
            }
        };
        g.save_json(dir.join("genotype.json"))
            .map_err(io(&dir.join("genotype.json")))?;
        std::fs::write(dir.join("genotype.txt"), g.to_darts_string() + "\n").map_err(|source| {
            TrainError::Io {
                path: dir.join("genotype.txt"),
                source,
            }
        })?;
        for (cell, name, _) in self.probabilities() {
            let out = dir.join(format!("genotype_{name}.png"));
            if let Err(e) = crate::nas::genotype::render_dot(&g.to_dot(cell, 1), &out) {
                eprintln!("warning: no cell diagram ({e})");
            }
        }
        Ok(g)
    }
}

/// Entropy of one edge's op choice: the row normalised to sum 1 (softmax rows already do;
/// UNAS's factorised expected weights sum to the chance that the edge is used).
pub(crate) fn op_entropy(row: &[f64]) -> f64 {
    let total: f64 = row.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    row.iter()
        .map(|&w| w / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum()
}

fn search_err(e: SearchError) -> TrainError {
    TrainError::Invalid(format!("search: {e}"))
}

/// Clears the forced op weights when dropped (also on an error path).
struct ForcedGuard<'a>(&'a Forced);

impl Drop for ForcedGuard<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

/// The PPO update's per-minibatch hook: `after_weight_step` after each weight step.
struct StrategyHook {
    core: Arc<Mutex<Core>>,
}

impl JointOptimizer for StrategyHook {
    /// Called after the minibatch's forward, before its backward: clears gradients that alpha
    /// steps may have left, so a single-level step sees this minibatch's gradient only.
    fn zero_grad(&mut self) {
        let guard = lock(&self.core);
        for mut a in crate::search::alphas(&guard.arch) {
            a.zero_grad();
        }
    }

    /// Called after the weights' step. The PPO update keeps the minibatch's loss and its
    /// gradient norm to itself, so the report carries NaN for both (no strategy here reads
    /// them beyond logging; a DARTS-PRIME schedule would need a hook that passes them).
    fn step(&mut self) {
        let mut guard = lock(&self.core);
        let Core {
            arch,
            strategy,
            weight_steps,
            lr,
            hook_stats,
            error,
        } = &mut *guard;
        let report = WeightStepReport {
            iteration: *weight_steps,
            loss: f64::NAN,
            grad_norm_sq: f64::NAN,
            lr: *lr,
        };
        *weight_steps += 1;
        match strategy.after_weight_step(arch, &report) {
            Ok(Some(s)) => hook_stats.add(&ArchStepStats {
                // The loss is unknown here (see above); keep the mean meaningful.
                loss: if s.loss.is_finite() { s.loss } else { 0.0 },
                grad_norm: s.grad_norm,
            }),
            Ok(None) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
}

/// `amount` samples of `batch` drawn without replacement (all of it when smaller).
fn draw(batch: &Batch, amount: usize, rng: &mut ChaCha8Rng) -> Batch {
    let len = batch.len() as usize;
    let idx: Vec<i64> = sample(rng, len, amount.min(len))
        .into_iter()
        .map(|i| i as i64)
        .collect();
    batch.select(&Tensor::from_slice(&idx).to_device(batch.actions.device()))
}

/// PPO as the objective of a bilevel strategy: the PPO loss (clipped surrogate, value loss,
/// entropy bonus; [`ppo_loss`]) of the current policy on a minibatch of the training rollout
/// (`train_loss`) or of the search rollout (`search_loss`), for given op weights.
pub struct PpoObjective<'a> {
    search: &'a ArchSearch,
    pub policy: &'a ActorCritic,
    pub config: &'a PpoConfig,
    pub train: Batch,
    pub search_batch: Batch,
    /// The weights' optimizer's parameters (every trainable weight, no alpha).
    pub parameters: Vec<Tensor>,
    /// BatchNorm running statistics (snapshotted by virtual steps).
    pub buffers: Vec<Tensor>,
    /// The weights' current learning rate.
    pub lr: f64,
}

impl PpoObjective<'_> {
    fn loss(&self, batch: &Batch, weights: &CellWeights) -> Tensor {
        let _forced = self.search.force(weights);
        let new = self.policy.evaluate(&batch.obs, &batch.actions);
        ppo_loss(&new, batch, self.config).loss
    }
}

impl Objective for PpoObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.train, weights))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.search_batch, weights))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.parameters.iter().map(Tensor::shallow_clone).collect()
    }

    fn buffers(&self) -> Vec<Tensor> {
        self.buffers.iter().map(Tensor::shallow_clone).collect()
    }

    /// The weights train with Adam, whose moments the PPO trainer keeps private: the DARTS
    /// virtual step is taken as plain SGD at Adam's learning rate (`w - lr grad`, no momentum,
    /// no weight decay). This understates Adam's step size (Adam moves each weight by about
    /// `lr` whatever its gradient's scale), a known gap of second-order DARTS under Adam.
    fn virtual_step(&self) -> VirtualStep {
        VirtualStep {
            lr: self.lr,
            momentum: 0.0,
            weight_decay: 0.0,
            momentum_buffers: self.parameters.iter().map(|_| None).collect(),
        }
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
    use super::op_entropy;

    #[test]
    fn op_entropy_normalises_the_row_first() {
        let ln2 = std::f64::consts::LN_2;
        assert!((op_entropy(&[0.5, 0.5, 0.0]) - ln2).abs() < 1e-12);
        // Factorised expected weights: an edge used with weight 0.4, split evenly.
        assert!((op_entropy(&[0.2, 0.2]) - ln2).abs() < 1e-12);
        assert_eq!(op_entropy(&[1.0, 0.0]), 0.0);
        assert_eq!(op_entropy(&[0.0, 0.0]), 0.0);
    }
}
