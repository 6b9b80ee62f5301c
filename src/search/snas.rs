//! SNAS (Xie, Zheng, Liu & Lin, ICLR 2019, "SNAS: Stochastic Neural Architecture Search";
//! ../shared/REFERENCE.md section 6): single-level search over a factorised categorical
//! distribution of architectures. Per edge the alphas are log-alphas (unnormalised logits);
//! each forward of a weight step uses the Gumbel-softmax (Concrete) sample
//! `Z = softmax((log_alpha + G) / lambda)`, `G = -log(-log U)`, so the one backward of the
//! training loss reaches both the weights and the alphas (the paper's search gradient). The
//! temperature `lambda` anneals linearly from `temperature_start` to `temperature_end` over
//! the search (official: 1 -> 0.03).
//!
//! Resource constraint `E[L(Z)] + eta E[C(Z)]`: `C` sums over edges the cost of the op chosen
//! there, with per-op costs from the supernet's own ops for the actual input shape
//! ([`OpCostTable`]: parameters, FLOPs, memory access cost); its gradient is the score function
//! (the paper's policy gradient) with the locally decomposed reward: each edge's log-probability
//! gradient is weighted by that edge's own cost only (unbiased, since edges are sampled
//! independently). The child network is the argmax on every edge, `none` included
//! ([`DeriveRule::ArgmaxAll`]).
//!
//! Departures from the official code (SNAS-Series `model_search.py` / `train_search.py`), each
//! for a reason:
//! - **The resource term's estimator is unbiased but is not the official one.** Here the
//!   score function is taken for the categorical child `H = one_hot(argmax(log_alpha + G))`
//!   (same noise as `Z`; by the Gumbel-max trick `H ~ Categorical(softmax(log_alpha))`), with
//!   `grad log p(H) = onehot(H) - softmax(log_alpha)` and cost `C(H)`, the cost of the network
//!   the search derives: an unbiased estimate of `grad E_H[C(H)]`, checked against enumeration
//!   (tests/search_snas.rs). The official `policy_gradient` method (SNAS-Series
//!   `model_search.py`) instead scores the relaxed sample: per edge it takes the cost of the
//!   mixture, `ln(sum_o c_o Z_o)` per metric (clamped to 1 below 1) averaged over params, FLOPs
//!   and MAC, detaches it, and multiplies it by the Concrete log-density of `Z`
//!   (`self.logp(log_alpha, weights)`); normal-cell terms are divided by 6 and reduce-cell terms
//!   by 2 (times `--ratio`). That is a score-function gradient of `E_Z[ln(sum_o c_o Z_o)]`, a
//!   different objective, which approaches ours only as `lambda -> 0` (then `Z` is one-hot and
//!   the log of the mixture is the log of the chosen op's cost).
//! - [`OpCostTable`] sums each op's cost over all cells of a type, so the "log penalty" (mean of
//!   the logs of params, FLOPs and MAC) is taken of the per-type sum; the official code takes
//!   the log per cell and averages over cells (a difference only where cells of one type see
//!   different resolutions). A `ln` of a cost below 1 (`none`, parameter-free ops) counts 0, as
//!   the official `clean_* < 1 -> 1` does.
//! - The temperature reaches `temperature_end` exactly at the last epoch and starts at
//!   `temperature_start` (the official scheduler is stepped before the first epoch, so its
//!   first epoch already runs one decrement below the start).
//! - The Gumbel noise is drawn through `rand_distr` ([`super::sampling`]) from the strategy's
//!   own seeded ChaCha RNG (checkpointed) instead of libtorch's global generator, so a resumed
//!   search draws the same samples.
//! - Alphas step with Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3) as in
//!   REFERENCE.md section 6 and the official distributed path; the official single-GPU path
//!   uses plain SGD. The alpha gradient's norm is clipped at 10 as in the official code.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::checkpoint::{load_strategy, save_strategy};
use super::op_weights::argmax_weights;
use super::optim::ordered_variables;
use super::perturb::{grad, norm};
use super::sampling;
use super::{
    alphas, Adam, ArchAdamConfig, ArchSample, ArchStepStats, Objective, Phase, ReportField,
    SearchError, SearchStrategy, WeightStepReport,
};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype, OpCost, OpCostTable};

use super::resource::CellCosts;
pub use super::resource::{
    expected_cost, op_cost, sampled_cost, score_function_cost_gradient, CostMetric,
};

/// `[search.strategy.params]` of `kind = "snas"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnasParams {
    /// Gumbel-softmax temperature lambda at the first epoch. SNAS: 1.
    pub temperature_start: f64,
    /// Temperature at the last epoch (linear in between). SNAS: 0.03.
    pub temperature_end: f64,
    /// Weight of the resource constraint `eta E[C(Z)]`; 0 searches without it. REFERENCE.md
    /// section 6: 1e-2 with the log penalty on the 8-cell supernet.
    pub eta: f64,
    /// Which costs the constraint counts. SNAS: `all`.
    pub cost_metric: CostMetric,
    /// `true`: an op's cost is `ln` of the metric (the official "log penalty", mean of the logs
    /// under `all`). `false`: the metric itself in millions (M params, MFLOPs, M accesses).
    pub log_cost: bool,
    /// Subtract each edge's expected cost from its sampled cost in the score function (a
    /// variance-reducing baseline that leaves the estimate unbiased; the official
    /// `minus_baseline` subtracts the op average instead). SNAS: off.
    pub baseline: bool,
    /// Max global norm of the alpha gradient before the Adam step; 0 disables. Official: 10.
    pub alpha_grad_clip: f64,
    /// How the genotype is read off the alphas. SNAS: `argmax_all` (argmax on every edge,
    /// `none` included, no top-2 pruning).
    pub derive: DeriveRule,
    /// Adam over the alphas. SNAS: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.
    pub optimizer: ArchAdamConfig,
}

impl Default for SnasParams {
    fn default() -> Self {
        Self {
            temperature_start: 1.0,
            temperature_end: 0.03,
            eta: 1e-2,
            cost_metric: CostMetric::All,
            log_cost: true,
            baseline: false,
            alpha_grad_clip: 10.0,
            derive: DeriveRule::ArgmaxAll,
            optimizer: ArchAdamConfig::default(),
        }
    }
}

impl SnasParams {
    /// The scalar cost of one op under these settings (the official per-edge resource term).
    pub fn op_cost(&self, cost: &OpCost) -> f64 {
        op_cost(self.cost_metric, self.log_cost, cost)
    }
}

/// One sample of one cell type's architecture.
#[derive(Debug)]
pub struct SnasSample {
    /// Relaxed `Z = softmax((log_alpha + G) / lambda)`, `[num_edges, num_ops]`, with its graph
    /// to the alphas; every row sums to 1.
    pub relaxed: Tensor,
    /// The categorical child on each edge, `argmax(log_alpha + G)` (same noise).
    pub index: Vec<usize>,
}

/// The categorical children of the last weight-phase sample, waiting for the alpha step.
#[derive(Debug, Clone)]
struct Pending {
    normal: Vec<usize>,
    reduce: Option<Vec<usize>>,
}

/// Sampler and schedule state, checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    rng: ChaCha8Rng,
    temperature: f64,
    arch_steps: u64,
    /// `E_{H ~ softmax(alpha)}[C(H)]` after the last alpha step (exact); `None` before the
    /// first step or without costs (JSON has no NaN).
    expected_cost: Option<f64>,
    /// Sum and count of `eta * C(H)` over this epoch's alpha steps.
    penalty_sum: f64,
    penalty_count: u64,
}

const STATE_FILE: &str = "snas.json";

/// The SNAS strategy.
#[derive(Debug)]
pub struct Snas {
    params: SnasParams,
    adam: Adam,
    state: State,
    /// `[num_edges, num_ops]` and whether there is a reduce cell, to check the cost table.
    shape: (usize, usize, bool),
    device: Device,
    costs: Option<CellCosts>,
    pending: Option<Pending>,
}

impl Snas {
    pub fn new(arch: &ArchParams, params: SnasParams, seed: u64) -> Result<Self, SearchError> {
        let p = &params;
        if !(p.temperature_end > 0.0
            && p.temperature_start >= p.temperature_end
            && p.temperature_start.is_finite())
        {
            return Err(SearchError::Invalid(format!(
                "snas: need 0 < temperature_end <= temperature_start, got start {} end {}",
                p.temperature_start, p.temperature_end
            )));
        }
        if !(p.eta >= 0.0 && p.eta.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "snas: eta must be finite and >= 0, got {}",
                p.eta
            )));
        }
        if p.alpha_grad_clip.is_nan() || p.alpha_grad_clip < 0.0 {
            return Err(SearchError::Invalid(format!(
                "snas: alpha_grad_clip must be >= 0 (0 = off), got {}",
                p.alpha_grad_clip
            )));
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        let space = arch.space();
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(seed),
            temperature: params.temperature_start,
            arch_steps: 0,
            expected_cost: None,
            penalty_sum: 0.0,
            penalty_count: 0,
        };
        Ok(Self {
            params,
            adam,
            state,
            shape: (
                space.num_edges(),
                space.num_ops(),
                arch.alpha_reduce().is_some(),
            ),
            device: arch.alpha_normal().device(),
            costs: None,
            pending: None,
        })
    }

    pub fn params(&self) -> &SnasParams {
        &self.params
    }

    /// Current Gumbel-softmax temperature lambda.
    pub fn temperature(&self) -> f64 {
        self.state.temperature
    }

    /// Per-op cost matrices `[num_edges, num_ops]` (normal, reduce), once set.
    pub fn cost_matrices(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        self.costs.as_ref().map(|c| (&c.normal, c.reduce.as_ref()))
    }

    /// Standard Gumbel noise shaped like `alpha`, from the strategy's RNG (drawn in f64
    /// through `rand_distr`, then cast to alpha's kind; [`sampling::gumbel_tensor_like`]).
    fn gumbel_like(&mut self, alpha: &Tensor) -> Result<Tensor, SearchError> {
        sampling::gumbel_tensor_like(&mut self.state.rng, alpha)
    }

    /// Draws one sample of `alpha` (`[num_edges, num_ops]` log-alphas) at the current
    /// temperature: the relaxed `Z` with its graph, and the categorical child from the same
    /// noise.
    pub fn sample(&mut self, alpha: &Tensor) -> Result<SnasSample, SearchError> {
        let gumbel = self.gumbel_like(alpha)?;
        let logits = alpha + gumbel; // [E, O]
        let relaxed = (&logits / self.state.temperature).softmax(-1, alpha.kind());
        let index =
            Vec::<i64>::try_from(&logits.detach().argmax(-1, false).to_device(Device::Cpu))?;
        Ok(SnasSample {
            relaxed,
            index: index.into_iter().map(|i| i as usize).collect(),
        })
    }

    /// Samples both cell types; `Pending` remembers the children for the score function.
    fn sampled_weights(
        &mut self,
        arch: &ArchParams,
    ) -> Result<(CellWeights, Pending), SearchError> {
        let n = self.sample(arch.alpha_normal())?;
        let r = arch.alpha_reduce().map(|a| self.sample(a)).transpose()?;
        let pending = Pending {
            normal: n.index,
            reduce: r.as_ref().map(|r| r.index.clone()),
        };
        Ok((CellWeights::dense(n.relaxed, r.map(|r| r.relaxed)), pending))
    }

    fn costs_or_err(&self) -> Result<&CellCosts, SearchError> {
        self.costs.as_ref().ok_or_else(|| {
            SearchError::Invalid(format!(
                "snas: eta = {} needs per-op costs, but the search loop did not call \
                 SearchStrategy::set_op_costs; set search.strategy.params.eta = 0 to search \
                 without the resource constraint",
                self.params.eta
            ))
        })
    }

    /// `E_{H ~ softmax(alpha)}[C(H)] = sum_e sum_o p_eo c_eo` over both cell types, exact.
    pub fn expected_cost(&self, arch: &ArchParams) -> Result<f64, SearchError> {
        self.costs_or_err()?.expected(arch)
    }

    /// `(C(H), eta * score-function gradient per alpha)` for the children in `pending`; zeros
    /// when `eta = 0`.
    fn cost_term(
        &self,
        arch: &ArchParams,
        pending: &Pending,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        let a = alphas(arch);
        if self.params.eta == 0.0 {
            return Ok((0.0, a.iter().map(Tensor::zeros_like).collect()));
        }
        let costs = self.costs_or_err()?;
        let mut parts = vec![(&a[0], &costs.normal, &pending.normal)];
        if let (Some(alpha), Some(c), Some(idx)) =
            (a.get(1), costs.reduce.as_ref(), pending.reduce.as_ref())
        {
            parts.push((alpha, c, idx));
        }
        let mut total = 0.0;
        let mut grads = Vec::with_capacity(parts.len());
        for (alpha, cost, index) in parts {
            total += sampled_cost(cost, index)?;
            let g = score_function_cost_gradient(alpha, cost, index, self.params.baseline)?;
            grads.push((g * self.params.eta).to_kind(alpha.kind()));
        }
        Ok((total, grads))
    }

    /// Adds the cost term to the loss gradients `g_loss`, clips, steps Adam, records scalars.
    fn step(
        &mut self,
        arch: &ArchParams,
        pending: &Pending,
        g_loss: Vec<Tensor>,
        loss: f64,
    ) -> Result<ArchStepStats, SearchError> {
        let (cost, g_cost) = self.cost_term(arch, pending)?;
        let g: Vec<Tensor> = g_loss.iter().zip(&g_cost).map(|(l, c)| l + c).collect();
        let grad_norm = norm(&g);
        if !grad_norm.is_finite() {
            return Err(SearchError::Invalid(format!(
                "snas: alpha gradient norm is {grad_norm}"
            )));
        }
        let clip = self.params.alpha_grad_clip;
        let g = if clip > 0.0 && grad_norm > clip {
            // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6).
            let scale = clip / (grad_norm + 1e-6);
            g.iter().map(|t| t * scale).collect()
        } else {
            g
        };
        self.adam.step_with(&g)?;
        self.state.arch_steps += 1;
        let penalty = self.params.eta * cost;
        self.state.penalty_sum += penalty;
        self.state.penalty_count += 1;
        let expected = match self.costs {
            Some(_) => Some(self.expected_cost(arch)?),
            None => None,
        };
        self.state.expected_cost = expected;
        Ok(ArchStepStats {
            loss: loss + penalty,
            grad_norm,
        })
    }

    /// The gradient the single-level step applies before clipping and Adam: the alphas'
    /// accumulated `.grad()` (the loop's one backward through `Z`) plus the cost term, for the
    /// sample drawn by the last `op_weights(Phase::Weights)`. Exposed for tests.
    pub fn single_level_gradient(&self, arch: &ArchParams) -> Result<Vec<Tensor>, SearchError> {
        let pending = self.pending.as_ref().ok_or_else(no_sample)?;
        let g_loss = loss_gradients(arch)?;
        let (_, g_cost) = self.cost_term(arch, pending)?;
        Ok(g_loss.iter().zip(&g_cost).map(|(l, c)| l + c).collect())
    }
}

fn no_sample() -> SearchError {
    SearchError::Invalid(
        "snas: after_weight_step without a preceding op_weights(Phase::Weights): the weight \
         step's forward must use the strategy's sample"
            .into(),
    )
}

/// The alphas' `.grad()`s, or an error if the backward never reached them.
fn loss_gradients(arch: &ArchParams) -> Result<Vec<Tensor>, SearchError> {
    alphas(arch)
        .iter()
        .map(|a| {
            let g = a.grad();
            if g.defined() {
                Ok(g.detach().copy())
            } else {
                Err(SearchError::Invalid(
                    "snas: the weight step's backward did not reach the alphas (single-level \
                     search needs the loss built from op_weights(Phase::Weights) with its graph)"
                        .into(),
                ))
            }
        })
        .collect()
}

impl SearchStrategy for Snas {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// Weights: zeroes the alpha gradients and returns the relaxed sample `Z` with its graph to
    /// the alphas (every op computed), so the loop's one backward reaches them; the categorical
    /// children are kept for the resource term of [`SearchStrategy::after_weight_step`]. Arch:
    /// a fresh relaxed sample. Eval: the argmax child network (`none` included), only its ops
    /// computed.
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        match phase {
            Phase::Weights => {
                for mut a in alphas(arch) {
                    a.zero_grad();
                }
                let (weights, pending) = self.sampled_weights(arch)?;
                self.pending = Some(pending);
                Ok(weights)
            }
            Phase::Arch => Ok(self.sampled_weights(arch)?.0),
            Phase::Eval => tch::no_grad(|| argmax_weights(arch)),
        }
    }

    /// Gumbel noise for each cell type's alphas, at the current temperature.
    fn sample_architecture(&mut self, arch: &ArchParams) -> Result<ArchSample, SearchError> {
        let noise = alphas(arch)
            .iter()
            .map(|a| self.gumbel_like(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ArchSample::Gumbel {
            noise,
            temperature: self.state.temperature,
        })
    }

    /// `Z = softmax((alpha + G) / lambda)` from the current alphas and the rollout's noise `G`,
    /// with its graph when learning; the child (argmax of `alpha + G`) is remembered for the
    /// resource penalty's score function in `after_weight_step`.
    fn sampled_op_weights(
        &mut self,
        arch: &ArchParams,
        sample: &ArchSample,
        learn: bool,
    ) -> Result<CellWeights, SearchError> {
        let ArchSample::Gumbel { noise, temperature } = sample else {
            return Err(SearchError::Invalid(format!(
                "snas replays its own Gumbel samples; got {sample:?}"
            )));
        };
        let alphas = alphas(arch);
        if noise.len() != alphas.len() {
            return Err(SearchError::Invalid(format!(
                "snas: {} noise tensors for {} alpha tensors",
                noise.len(),
                alphas.len()
            )));
        }
        let relax = |a: &Tensor, g: &Tensor| -> Result<(Tensor, Vec<usize>), SearchError> {
            let logits = a + g; // [E, O]
            let relaxed = (&logits / *temperature).softmax(-1, a.kind());
            let index =
                Vec::<i64>::try_from(&logits.detach().argmax(-1, false).to_device(Device::Cpu))?;
            Ok((relaxed, index.into_iter().map(|i| i as usize).collect()))
        };
        let mut cells = if learn {
            alphas
                .iter()
                .zip(noise)
                .map(|(a, g)| relax(a, g))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            tch::no_grad(|| {
                alphas
                    .iter()
                    .zip(noise)
                    .map(|(a, g)| relax(a, g))
                    .collect::<Result<Vec<_>, _>>()
            })?
        }
        .into_iter();
        let (normal, normal_index) = cells.next().ok_or_else(no_sample)?;
        let reduce = cells.next();
        if learn {
            self.pending = Some(Pending {
                normal: normal_index,
                reduce: reduce.as_ref().map(|r| r.1.clone()),
            });
        }
        Ok(CellWeights::dense(normal, reduce.map(|r| r.0)))
    }

    /// Linear anneal `temperature_start -> temperature_end`, reached at the last epoch.
    fn begin_epoch(&mut self, epoch: usize, num_epochs: usize) {
        let span = num_epochs.saturating_sub(1).max(1) as f64;
        let frac = (epoch as f64 / span).min(1.0);
        let (start, end) = (self.params.temperature_start, self.params.temperature_end);
        self.state.temperature = start - (start - end) * frac;
        self.state.penalty_sum = 0.0;
        self.state.penalty_count = 0;
    }

    /// Never: SNAS is single level (alphas step in `after_weight_step`).
    fn wants_arch_step(&self, _iteration: u64) -> bool {
        false
    }

    /// The same single-level alpha update without a weight step, on the objective's *training*
    /// batch (loops never call it, since `wants_arch_step` is false; it serves loops or tests
    /// that take alpha steps explicitly). Uses only [`Objective::train_loss`], so it works with
    /// the RL objective as well.
    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let (weights, pending) = self.sampled_weights(arch)?;
        let loss = objective.train_loss(&weights)?;
        let value = loss.f_double_value(&[])?;
        let g_loss = grad(&loss, &alphas(arch), false)?;
        self.step(arch, &pending, g_loss, value)
    }

    /// The single-level alpha step: the loop's backward left `grad_alpha L(Z)` in the alphas;
    /// add `eta *` the score-function cost gradient for the same sample, clip, step Adam.
    fn after_weight_step(
        &mut self,
        arch: &ArchParams,
        report: &WeightStepReport,
    ) -> Result<Option<ArchStepStats>, SearchError> {
        report.check_finite(Self::NAME, &[ReportField::Loss])?;
        let pending = self.pending.take().ok_or_else(no_sample)?;
        let g_loss = loss_gradients(arch)?;
        let stats = self.step(arch, &pending, g_loss, report.loss)?;
        for mut a in alphas(arch) {
            a.zero_grad();
        }
        Ok(Some(stats))
    }

    fn set_op_costs(&mut self, costs: &OpCostTable) -> Result<(), SearchError> {
        let metric = (self.params.cost_metric, self.params.log_cost);
        self.costs = Some(CellCosts::new(costs, metric, self.shape, self.device)?);
        Ok(())
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    /// `temperature`; `expected_cost` (exact `E[C]` at the current alphas, once costs are set
    /// and a step was taken); `penalty` (mean `eta * C(H)` over this epoch's alpha steps).
    /// Single level: the training loss, at the deterministic relaxation `softmax(alpha)` (the curvature of the expected cell, not of one Gumbel sample).
    fn health_relaxation(
        &self,
        arch: &ArchParams,
    ) -> Result<super::health::HealthRelaxation, SearchError> {
        Ok(super::health::HealthRelaxation::softmax(
            arch,
            1.0,
            super::health::HealthLoss::Train,
        ))
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![("temperature", self.state.temperature)];
        if let Some(c) = self.state.expected_cost {
            out.push(("expected_cost", c));
        }
        if self.state.penalty_count > 0 {
            out.push((
                "penalty",
                self.state.penalty_sum / self.state.penalty_count as f64,
            ));
        }
        out.push(("arch_lr", self.adam.lr()));
        out.push(("arch_steps", self.state.arch_steps as f64));
        out
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_strategy(dir, Some(&self.adam), STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        self.state = load_strategy(dir, Some(&mut self.adam), STATE_FILE)?;
        self.pending = None;
        Ok(())
    }

    /// Single level: the alphas' loss gradient comes from the loop's weight-step backward,
    /// which the loop all-reduces with the weights'; the resource term reads only the sample
    /// (drawn from the same seed on every process) and the op costs.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "snas_tests.rs"]
mod tests;
