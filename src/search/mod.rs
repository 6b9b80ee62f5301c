//! Search strategies: how architecture parameters become op weights, how they are updated and
//! how a discrete genotype is read off them (DARTS, Liu et al. ICLR 2019, and the methods
//! below). NASLib's idea: the relaxation is the plugin point and the supernet stays
//! strategy-agnostic; the official DARTS code's flaw avoided: the strategy never reaches into
//! the model or the weight optimizer, it sees them only through an [`Objective`].
//!
//! # The contract
//!
//! A search loop (supervised: [`crate::train::supervised`]; RL: the PPO search loop) owns the
//! weights, their optimizer and the data. Per iteration it
//!
//! 1. asks [`SearchStrategy::wants_arch_step`]; if yes, loads a search (validation) batch and
//!    calls [`SearchStrategy::arch_step`] with itself as the [`Objective`];
//! 2. builds op weights with [`SearchStrategy::op_weights`]`(arch, Phase::Weights)`, computes
//!    the training loss, backpropagates, clips and steps the *weights* (never the alphas);
//! 3. calls [`SearchStrategy::after_weight_step`] with the loss and gradient norm.
//!
//! and at each epoch start calls [`SearchStrategy::begin_epoch`]. Once, after building the
//! strategy (and after loading a checkpoint), it hands over the supernet's per-op costs for the
//! actual input shape, [`SearchStrategy::set_op_costs`]`(&net.op_costs([C, H, W]))`; strategies
//! with a resource term (SNAS) need them, the others ignore them. The strategy owns the alpha
//! optimizer (over the [`ArchParams`] store only) and any sampler state, and checkpoints both.
//!
//! # How each method maps onto the trait
//!
//! - **DARTS first order** ([`darts`]): `op_weights` = `softmax(alpha / T)`, detached in the
//!   weight phase; `arch_step` = `grad_alpha L_val(w, alpha)`, Adam step.
//! - **DARTS second order** ([`darts`]): `arch_step` makes the virtual step
//!   `w' = w - xi (mu buf + grad_w L_train + wd w)` from [`Objective::virtual_step`] (xi = the
//!   current weight lr), writes it through a [`perturb::WeightGuard`], takes
//!   `grad_alpha L_val(w')` and `v = grad_w' L_val(w')`, restores `w` bit-exactly, and
//!   subtracts `xi * grad2_{alpha,w} L_train * v` (central difference with
//!   `eps = 0.01 / ||v||`, or exact by double backward).
//! - **iDARTS** ([`idarts`]): `wants_arch_step` is true every `T` iterations (the loop's
//!   weight steps are the `T` inner steps); `arch_step` computes `v = grad_w L_val`, the
//!   Neumann sum `gamma sum_k (I - gamma H)^k v` with [`perturb::exact_hvp`] on `L_train`, and
//!   the mixed term by double backward (default) or [`perturb::fd_mixed_hvp`] as DARTS does.
//!   K = 0 is DARTS at `w_T` with `xi = gamma`; power iteration optionally estimates the top
//!   Hessian eigenvalue and warns when `gamma` is too large for the series.
//! - **SNAS** ([`snas`]): single level: `wants_arch_step` is always false; `op_weights(Weights)`
//!   zeroes the alpha gradients and returns a Gumbel-softmax sample with its graph, so the
//!   loop's one backward reaches alpha; `after_weight_step` adds the resource penalty's
//!   score-function gradient `eta * C(H) * grad log p(H)` (per edge, costs from
//!   `set_op_costs`) and steps Adam; `begin_epoch` anneals lambda linearly; `Eval` weights and
//!   `derive` are the argmax child ([`DeriveRule::ArgmaxAll`]).
//! - **Joint first order** ([`joint`], RL-DARTS's default): single level like SNAS but
//!   deterministic: `op_weights(Weights)` is `softmax(alpha / T)` with its graph, so the loop's
//!   one backward of the training loss reaches the alphas; `after_weight_step` steps their Adam.
//! - **UNAS** ([`unas`]): `arch_step` samples a hard `z` and the relaxed `zeta` with the same noise,
//!   evaluates `f = L_train + 0.5 |L_val - L_train|` on both through the objective, and forms
//!   `(f(z) - f(zeta)) grad log p(z) + grad f(zeta)`, or REBAR's unbiased form with a
//!   conditional sample `zeta~ | z` (the default); `op_weights(Weights)` is a fresh relaxed
//!   sample, detached (the official default; `weights_sample = "hard"` gives a hard one).
//!   The factorised cell adds UNAS's duplicate-edge penalty to `f`.
//!   Optionally `f += c_t relu(latency - target)` with latencies from a table the loop
//!   measures on request ([`SearchStrategy::latency_request`]).
//! - **DARTS-PRIME** ([`darts_prime`]): `after_weight_step` updates the EWMA of
//!   `||grad_w L_train||^2` (in the [`WeightStepReport`]) and the threshold, and decides the
//!   next iteration; `wants_arch_step` reads that decision (the dynamic schedule); `arch_step`
//!   adds `(t/T)(rho/2) ||softmax(alpha) - P||` with `P` the one-hot mask of the current
//!   `derive` (or the ADMM term).
//! - **GDAS**: `op_weights` returns straight-through hard one-hot weights `h - sg(p) + p` as
//!   [`crate::nas::OpWeights::one_hot`], so the supernet evaluates only the sampled op per
//!   edge; `begin_epoch` anneals tau linearly 10 -> 0.1; `derive` keeps the top-2 (op, input)
//!   pairs per node ([`DeriveRule::Gdas`]).
//!
//! Every random draw of the stochastic strategies goes through [`sampling`] (`rand_distr`,
//! from the strategy's own seeded ChaCha8 generator, checkpointed), and every non-finite value
//! a strategy reads from a [`WeightStepReport`] is an error
//! ([`WeightStepReport::check_finite`]).
//! - **Random search** ([`random`]): see the module; the honest baseline.
//!
//! # Configuration
//!
//! One serde enum, [`StrategyConfig`], adjacently tagged (`[search.strategy] kind = "darts"`
//! with `[search.strategy.params]`), unknown keys rejected everywhere, generated with the name
//! list, the parser and the constructors from one table ([`registry`]). Adding a strategy = a
//! file, a row in that table and a preset in `configs/`.

pub mod checkpoint;
pub mod darts;
pub mod darts_prime;
pub mod early_stop;
pub mod gdas;
pub mod health;
pub mod idarts;
pub mod joint;
pub mod op_weights;
pub mod optim;
pub mod perturb;
pub mod random;
pub mod registry;
pub mod resource;
pub mod sampling;
pub mod snas;
pub mod unas;
pub mod unas_estimator;
pub mod unas_factorised;
pub mod unas_params;

use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::nas::{
    ArchParams, CellWeights, Genotype, LatencyOptions, LatencyTable, NasError, OpCostTable,
};

pub use darts::{Darts, DartsOrder, DartsParams, HessianMode};
pub use darts_prime::{DartsPrime, DartsPrimeParams, PrimeRegularizer, PrimeSchedule};
pub use gdas::{Gdas, GdasParams};
pub use idarts::{IDarts, IDartsParams};
pub use joint::{Joint, JointParams};
pub use op_weights::{
    alpha_probabilities, alphas, argmax_weights, bilevel_softmax_weights, derive_from_softmax,
    detached, softmax_op_weights, softmax_weights,
};
pub use optim::{ordered_variables, Adam, ArchAdamConfig, Sgd, SgdConfig};
pub use random::{RandomParams, RandomSearch};
pub use registry::{StrategyConfig, StrategyEntry, STRATEGIES, STRATEGY_NAMES};
pub use snas::{CostMetric, Snas, SnasParams};
pub use unas::{
    LatencySource, Unas, UnasCell, UnasEstimator, UnasLatencyParams, UnasParams, UnasWeightsSample,
};
pub use unas_factorised::{FactorisedAlphas, FactorisedSample};

/// Errors of the search layer, one variant per boundary.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Nas(#[from] NasError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// A configuration or call that cannot work (wrong shapes, a loss that is not a scalar).
    #[error("{0}")]
    Invalid(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Raised by an [`Objective`] (the loop's own failures travel through here as text).
    #[error("objective: {0}")]
    Objective(String),
}

/// The alpha optimizer's errors in the search's own variants (same messages as before the
/// optimizer moved to the agents).
impl From<crate::agents::OptimError> for SearchError {
    fn from(e: crate::agents::OptimError) -> Self {
        use crate::agents::OptimError;
        match e {
            OptimError::Checkpoint { path, reason } => SearchError::Checkpoint { path, reason },
            OptimError::Tch(e) => SearchError::Tch(e),
            OptimError::Gradients(m) => SearchError::Invalid(m),
        }
    }
}

impl SearchError {
    pub(crate) fn checkpoint(path: &Path, reason: String) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason,
        }
    }
}

/// Which forward op weights are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The loop's weight step on a training batch.
    Weights,
    /// Inside [`SearchStrategy::arch_step`] (strategies call this themselves).
    Arch,
    /// Evaluation: deterministic weights (no sampling noise).
    Eval,
}

/// The architecture one RL rollout acts with, drawn by [`SearchStrategy::sample_architecture`]
/// from the strategy's own seeded generator when the rollout starts, and kept with the rollout:
/// the PPO update recomputes op weights from the *current* alphas and this sample
/// ([`SearchStrategy::sampled_op_weights`]), so the network whose probability ratio PPO clips
/// is the network that acted, and gradients still reach the alphas through the relaxation.
///
/// One sample per rollout (all envs act with it), for every strategy: SNAS and GDAS draw one
/// architecture per forward of a minibatch in their papers, whose RL analogue is one per
/// rollout batch; per-env samples would need per-sample op weights, and GDAS would have to run
/// every op that any env drew instead of one op per edge. UNAS's official per-example draw is
/// the departure this makes (see [`unas`]).
#[derive(Debug, Default)]
pub enum ArchSample {
    /// Nothing was drawn: the op weights are a function of the alphas (DARTS, joint, iDARTS,
    /// DARTS-PRIME).
    #[default]
    Deterministic,
    /// Gumbel noise per alpha tensor (normal, then reduce; `[num_edges, num_ops]` each,
    /// detached) and the temperature in force when it was drawn; the relaxed sample
    /// `softmax((alpha + noise) / temperature)` is recomputed from the current alphas (SNAS).
    Gumbel {
        noise: Vec<Tensor>,
        temperature: f64,
    },
    /// Op weights fixed for the whole iteration, detached: the alphas do not learn from the
    /// weight loss, so there is nothing to recompute (GDAS's hard sample, which keeps its
    /// one-op-per-edge sparsity; UNAS's weight-phase sample, relaxed by default; random
    /// search's candidate).
    Fixed(CellWeights),
}

/// What the DARTS second-order virtual step needs to know about the weight optimizer
/// (`architect.py` reads these from the PyTorch optimizer; here the loop hands them over).
#[derive(Debug)]
pub struct VirtualStep {
    /// Current weight learning rate (DARTS's xi).
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Momentum buffers in [`Objective::parameters`] order; `None` before a parameter's first
    /// step (treated as zero, as the official `except: moment = zeros` does).
    pub momentum_buffers: Vec<Option<Tensor>>,
}

/// What a strategy may evaluate: losses on the current batches for given op weights, and the
/// weights themselves (for virtual steps and Hessian-vector products). The vision loop and the
/// RL loop each implement it; the batches are the loop's business (it sets them before calling
/// the strategy).
pub trait Objective {
    /// Mean loss on the current *training* batch, with autograd graph to the weights and to
    /// `weights`' tensors. Training-mode forward (BatchNorm batch statistics).
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError>;

    /// Mean loss on the current *search* (validation) batch, training-mode forward as in DARTS.
    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError>;

    /// Trainable network weights (shallow clones), in a fixed order.
    fn parameters(&self) -> Vec<Tensor>;

    /// State that forward passes mutate (BatchNorm running statistics), snapshotted with the
    /// weights so that virtual steps leave no trace.
    fn buffers(&self) -> Vec<Tensor>;

    /// The weight optimizer's current settings and momentum buffers.
    fn virtual_step(&self) -> VirtualStep;

    /// How many examples [`Objective::per_example_losses`] evaluates (`B`): the op weights
    /// given to it must be `[B, num_edges, num_ops]`. Loops without per-example losses refuse.
    fn paired_examples(&self) -> Result<i64, SearchError> {
        Err(no_per_example_losses())
    }

    /// Per-example losses for strategies that draw one architecture per example (UNAS's
    /// official `same_alpha_minibatch = false`): with per-example op weights
    /// ([`OpWeights::per_example`](crate::nas::OpWeights::per_example)), returns `(train, search)`,
    /// each `[B]` with graph, where entry `b` is the loss of example `b` of the training batch
    /// and of example `b` of the search batch, both under the op weights of row `b` (the
    /// official code evaluates both batches with the one per-example sample).
    /// Training-mode forward, as [`Objective::train_loss`]. Loops without per-example losses
    /// (the RL loop: its loss is PPO's, over a minibatch of transitions) refuse.
    fn per_example_losses(
        &mut self,
        _weights: &CellWeights,
    ) -> Result<(Tensor, Tensor), SearchError> {
        Err(no_per_example_losses())
    }

    /// [`Objective::search_loss`] for a caller that differentiates it with respect to the op
    /// weights' graph (the alphas) only, never the network weights (first-order alpha steps).
    /// An objective may then skip the weights' gradients: the reversible transformer's
    /// reconstruction leaves them out of its backward. The value is the search loss; only
    /// alpha gradients may be taken from it. Default: [`Objective::search_loss`].
    fn search_loss_for_alphas(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        self.search_loss(weights)
    }

    /// In a data-parallel run, replaces each tensor by its mean over the processes, in place.
    /// Strategies call it on every gradient of this objective's losses they compute (alpha
    /// gradients, the virtual step's weight gradient, Hessian-vector products): each process's
    /// loss is the mean over its equal share of the batch, so the mean of the processes'
    /// gradients is the gradient of the whole batch's loss, and every process then steps the
    /// alphas as one process on the whole batch would. Every process must call it the same
    /// number of times with the same shapes. One process (the default): nothing to do.
    fn average_over_processes(&self, _tensors: &[Tensor]) -> Result<(), SearchError> {
        Ok(())
    }

    /// [`Objective::average_over_processes`] for a loss value (what a strategy reports or
    /// compares).
    fn average_value_over_processes(&self, value: f64) -> Result<f64, SearchError> {
        Ok(value)
    }
}

fn no_per_example_losses() -> SearchError {
    SearchError::Invalid(
        "this search loop's objective has no per-example losses, so it cannot draw one \
         architecture per example; set search.strategy.params.same_alpha_minibatch = true"
            .into(),
    )
}

/// What the loop's weight step did, for strategies that react to it (single-level methods,
/// DARTS-PRIME's schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightStepReport {
    pub iteration: u64,
    pub loss: f64,
    /// `sum_p ||grad_w L_train||^2`, before clipping.
    pub grad_norm_sq: f64,
    pub lr: f64,
}

impl WeightStepReport {
    /// Checks that the fields a strategy reads are finite. A loop that cannot compute one must
    /// not report a placeholder: a non-finite value is an error that names the field, its value
    /// and where it came from, never a silent fallback (issue 22: DARTS-PRIME's schedule once
    /// fell back to a fixed period when the RL loop reported NaN).
    pub fn check_finite(&self, strategy: &str, fields: &[ReportField]) -> Result<(), SearchError> {
        for field in fields {
            let (name, value, meaning) = match field {
                ReportField::Loss => ("loss", self.loss, "the training loss of the weight step"),
                ReportField::GradNormSq => (
                    "grad_norm_sq",
                    self.grad_norm_sq,
                    "sum_p ||grad_w L_train||^2 of the weight step, before clipping",
                ),
            };
            if !value.is_finite() {
                return Err(SearchError::Invalid(format!(
                    "{strategy}: the search loop's weight step of iteration {} reported \
                     WeightStepReport.{name} = {value} ({meaning}); the strategy needs a finite \
                     value: the loop must pass the real {name} of its weight step (a diverged \
                     weight step also shows up here: lower the weight learning rate)",
                    self.iteration
                )));
            }
        }
        Ok(())
    }
}

/// A field of [`WeightStepReport`] a strategy reads (for [`WeightStepReport::check_finite`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportField {
    Loss,
    GradNormSq,
}

/// What an alpha step did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ArchStepStats {
    /// Loss the step minimised (search loss, or the strategy's surrogate), before the step.
    pub loss: f64,
    /// Norm of the (hyper)gradient applied to the alphas.
    pub grad_norm: f64,
}

/// How architecture parameters become op weights, how they are updated, and how a genotype
/// is derived. Never steps the network weights.
pub trait SearchStrategy: Send + std::fmt::Debug {
    /// One of [`STRATEGY_NAMES`].
    fn name(&self) -> &'static str;

    /// Op weights for one forward in `phase`. Call once per forward that will be
    /// backpropagated (the graph to alpha is consumed by the backward).
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError>;

    /// [`SearchStrategy::op_weights`] for a forward over a batch of `examples` examples:
    /// strategies that draw one architecture per example (UNAS by default) return
    /// `[examples, num_edges, num_ops]` weights
    /// ([`OpWeights::per_example`](crate::nas::OpWeights::per_example)); the others ignore
    /// `examples` (the default).
    fn op_weights_for_batch(
        &mut self,
        arch: &ArchParams,
        phase: Phase,
        _examples: i64,
    ) -> Result<CellWeights, SearchError> {
        self.op_weights(arch, phase)
    }

    /// Draws the architecture one RL rollout acts with (see [`ArchSample`]), from the
    /// strategy's own seeded generator. Default: nothing to draw.
    fn sample_architecture(&mut self, _arch: &ArchParams) -> Result<ArchSample, SearchError> {
        Ok(ArchSample::Deterministic)
    }

    /// Op weights of the architecture `sample` under the current alphas. `learn = false`: for
    /// the rollout's forwards (no graph needed). `learn = true`: for a forward of the PPO
    /// update, with the graph through which a single-level strategy trains the alphas on the
    /// weight loss (detached for bilevel strategies). Unlike `op_weights(Phase::Weights)`, it
    /// never clears the alphas' gradients (the loop does, once per minibatch) and never draws:
    /// repeated calls for one minibatch give the same architecture.
    ///
    /// Default, for deterministic strategies: `op_weights(Phase::Eval)`, which for every
    /// bilevel relaxation equals the detached weight-phase weights.
    fn sampled_op_weights(
        &mut self,
        arch: &ArchParams,
        sample: &ArchSample,
        _learn: bool,
    ) -> Result<CellWeights, SearchError> {
        match sample {
            ArchSample::Deterministic => self.op_weights(arch, Phase::Eval),
            ArchSample::Fixed(weights) => Ok(weights.shallow_clone()),
            ArchSample::Gumbel { .. } => Err(SearchError::Invalid(format!(
                "{}: cannot replay a Gumbel sample (it draws none)",
                self.name()
            ))),
        }
    }

    /// Start of epoch `epoch` of `num_epochs` (temperature schedules).
    fn begin_epoch(&mut self, _epoch: usize, _num_epochs: usize) {}

    /// Whether iteration `iteration` (0-based, global) takes an alpha step on a search batch.
    fn wants_arch_step(&self, iteration: u64) -> bool;

    /// Whether a loop that interleaves steps takes an iteration's alpha step after its weight
    /// step instead of before it (DARTS's `train_search.py` steps the alphas first; GDAS's
    /// `search_func` the weights first). The RL loop always takes them after the update.
    fn arch_step_follows_weight_step(&self) -> bool {
        false
    }

    /// One alpha update on the objective's current batches.
    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError>;

    /// After the loop's weight step; single-level strategies take their alpha step here.
    fn after_weight_step(
        &mut self,
        _arch: &ArchParams,
        _report: &WeightStepReport,
    ) -> Result<Option<ArchStepStats>, SearchError> {
        Ok(None)
    }

    /// Per-op costs of the supernet for the actual input shape, `[num_edges][num_ops]` per cell
    /// type; the loop calls this once after building (and after loading). Strategies without a
    /// resource term ignore it.
    fn set_op_costs(&mut self, _costs: &OpCostTable) -> Result<(), SearchError> {
        Ok(())
    }

    /// How the strategy wants the supernet's op latencies measured, if it uses them (UNAS's
    /// latency penalty); the loop then measures a table on the search device
    /// ([`crate::nas::latency::load_or_measure`]) and hands it to
    /// [`SearchStrategy::set_latency_table`], after building and after loading.
    fn latency_request(&self) -> Option<LatencyOptions> {
        None
    }

    /// Measured per-op latencies, `[num_edges][num_ops]` ms per cell type.
    fn set_latency_table(&mut self, _table: LatencyTable) -> Result<(), SearchError> {
        Ok(())
    }

    /// The discrete architecture the alphas currently describe.
    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError>;

    /// What the loops log as the architecture (per-edge scalars, heatmaps, entropies): per cell
    /// type (normal, then reduce), per edge, the expected weight of each op in the supernet's
    /// forward. Default: `softmax(alpha)`. Strategies whose distribution lives elsewhere (UNAS's
    /// factorised selectors) override it.
    fn expected_op_weights(&self, arch: &ArchParams) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
        softmax_op_weights(arch)
    }

    /// What search health ([`health`]) takes the Hessian of: the loss and batch the strategy
    /// itself steps its alphas on, at the deterministic relaxation of its current
    /// distribution. Default (bilevel strategies and every sampling strategy: GDAS, UNAS,
    /// random search): the search (validation) loss at `softmax(alpha)`, i.e. the curvature of
    /// the expected architecture rather than of one sample. Single-level strategies (joint,
    /// SNAS) use the training loss; strategies with their own temperature or parameters
    /// (DARTS, iDARTS, joint, UNAS's factorised cell) override it.
    fn health_relaxation(
        &self,
        arch: &ArchParams,
    ) -> Result<health::HealthRelaxation, SearchError> {
        Ok(health::HealthRelaxation::softmax(
            arch,
            1.0,
            health::HealthLoss::Search,
        ))
    }

    /// Distributions of the strategy's own parameterisation beyond the op weights, per cell
    /// type (normal first), for labelled heatmaps: UNAS's factorised input and op selectors.
    /// Default: none.
    fn selector_tables(&self) -> Result<Vec<unas_factorised::SelectorTables>, SearchError> {
        Ok(Vec::new())
    }

    /// Strategy scalars worth logging (temperature, schedule threshold ...), tag suffix first.
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// Writes optimizer and sampler state into the checkpoint folder `dir`.
    fn save(&self, dir: &Path) -> Result<(), SearchError>;

    /// Restores what [`SearchStrategy::save`] wrote.
    fn load(&mut self, dir: &Path) -> Result<(), SearchError>;

    /// Whether N processes, each with an equal share of every batch, take exactly the steps
    /// one process takes on the whole batches, given that the objective averages every
    /// gradient the strategy asks it to ([`Objective::average_over_processes`]), and that the
    /// loop all-reduces the gradients of its weight step (a single-level strategy's alphas
    /// included). `Err` says why not; a data-parallel run refuses the strategy with it.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Err(SearchError::Invalid(format!(
            "search strategy '{}' has no data-parallel form: its alpha steps are not averaged \
             over processes",
            self.name()
        )))
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
