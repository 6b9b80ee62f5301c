//! UNAS (Vahdat, Mallya, Liu & Kautz, CVPR 2020, "UNAS: Differentiable Architecture Search
//! Meets Reinforcement Learning"; ../shared/REFERENCE.md section 7): the alphas are logits of a
//! factorised categorical distribution over architectures, and they minimise the expected
//! objective `E_{z ~ p(z)}[f(z)]` with `f = L_train + lambda |L_val - L_train|` (the
//! generalisation-gap objective, lambda 0.5), whose gradient mixes REINFORCE and the
//! reparameterisation trick.
//!
//! Per edge the Gumbel noise `G` gives the relaxed sample `zeta = softmax((log p + G) / tau)`
//! (tau 0.4) and, with the same noise, the hard architecture `z = onehot(argmax(log p + G))`.
//! Two estimators (`estimator` switch):
//! - `relaxed_baseline`: `(f(z) - f(zeta)) grad log p(z) + grad f(zeta)`, REINFORCE with the
//!   relaxed loss as baseline plus the reparameterised relaxed term. Low variance, but biased:
//!   `zeta` depends on the same noise as `z`, so `E[f(zeta) grad log p(z)] != grad E[f(zeta)]`
//!   in general (the bias vanishes as tau -> 0).
//! - `rebar` (default): REBAR (Tucker et al. 2017) with eta = 1,
//!   `(f(z) - f(zeta~)) grad log p(z) + grad f(zeta) - grad f(zeta~)`, where `zeta~ =
//!   softmax(b~ / tau)` and `b~ ~ p(b | z)` is the conditional Gumbel sample given the hard
//!   architecture, reparameterised with its own uniforms (the derivative of `f(zeta~)` holds
//!   `z` fixed). Unbiased for `grad E[f(z)]` (tests/search_unas.rs checks it against an
//!   enumerated expectation). Costs one more relaxed evaluation of `f` per step.
//!
//! Mapping onto the trait: bilevel like DARTS. `arch_step` draws the samples, evaluates `f` on
//! the objective's current training and search batches for each of `z` (hard, no graph),
//! `zeta` (and `zeta~`), and steps Adam (lr 1e-3) on the alphas with the estimate. By default
//! (`same_alpha_minibatch = false`, the official default) it draws one architecture per
//! example: `B` Gumbel samples per cell type, `[B, E, O]` op weights
//! ([`OpWeights::per_example`]: every op computed, each example weighted by its own row),
//! per-example losses from [`Objective::per_example_losses`] (example `b` of the training and
//! of the search batch under architecture `b`, as the official `training_obj` evaluates both
//! batches with one sample), `f_b` per example weighted by its own `log p(z_b)`, and the batch
//! mean of the per-example estimates. With `same_alpha_minibatch = true` one architecture
//! serves the whole batch (the hard `z` then computes only the sampled op of each edge) and
//! `f` is that of the batch-mean losses. The weight step trains the weights on a fresh relaxed sample
//! `zeta` of the current distribution, detached (`weights_sample = "relaxed"`, the official
//! default, every op computed), or on a hard one (`"hard"`, only the sampled op of each edge
//! computed). The first `warmup_epochs` epochs train the weights only. `f` is built from
//! [`Objective::train_loss`] and [`Objective::search_loss`] only, so any loop that implements
//! [`Objective`] (supervised or RL) drives it.
//!
//! Latency penalty (`[latency] source = "table"`, off by default): `f(w) += c_t relu(lat(w) -
//! target)` with `lat(w) = sum w * T` over the measured per-op table `T`
//! ([`crate::nas::latency`], handed over by the loop through
//! [`SearchStrategy::set_latency_table`]). For the hard `z` that is the table latency of the
//! architecture (entering through the REINFORCE term); for `zeta` and `zeta~` it is the
//! expected latency under the relaxed sample, differentiable, so the same `f` is evaluated at
//! all three samples and REBAR stays unbiased. `c_t` ramps linearly from 0 to `weight` over
//! `ramp_steps` alpha steps (the counter is checkpointed).
//!
//! Cell (`cell` switch): `darts` (default) searches the standard DARTS cell (one categorical
//! over the op set, with `none`, per edge; the supernet's alphas) and derives its genotype with
//! `derive`; `factorised` searches UNAS's factorised cell (per node two input selectors and two
//! op selectors over the op set without `none`, so exactly two incoming edges per node), whose
//! selector logits live in the strategy's own VarStore (checkpointed with the strategy; the
//! supernet's alphas stay unused) and whose genotype is each selector's argmax, in DARTS format
//! ([`super::unas_factorised`]). Both go through the same estimators: a factorised sample is
//! mapped to DARTS op weights, and `log p(z)` sums the selectors' log-probabilities
//! ([`estimate_gradient_from`]).
//!
//! The factorised cell's `f` also carries UNAS's duplicate-edge penalty
//! (`duplicate_penalty`, 0.2 as the official `--alpha_loss_lambda`): per node the product of
//! the two slots' (input, op) choices, so that both slots picking the same op on the same input
//! costs 0.2 (hard) and the relaxed samples are pushed apart.
//!
//! Departures from the official code (NVlabs/unas, `unas.py`, `darts/alphas.py`,
//! `darts/train_search.py`), each for a reason:
//! - **The weight step draws its own per-example sample.** The official `train` steps the
//!   weights on a detached copy of the arch step's per-example sample (same noise); here the
//!   weight step ([`SearchStrategy::op_weights_for_batch`]) draws fresh per-example samples of
//!   the current distribution, so that the weight step does not depend on whether the loop
//!   ran an alpha step first (warm-up epochs, strategies ordered either way). Same
//!   distribution, independent noise.
//! - **Where per-example samples are not available, one architecture per minibatch.** The
//!   factorised cell (its sampler builds sparse hard weights per choice) and loops whose
//!   objective has no per-example losses (the RL search: see `train::rl::search`, the sequence
//!   search) need `same_alpha_minibatch = true`; the strategy refuses the factorised cell
//!   without it and the objective refuses per-example losses by name, never a silent fallback.
//!   The estimator is unbiased either way; per-example samples lower its variance by averaging
//!   `B` architectures per step (tests/search_unas.rs).
//! - **Unequal train and search batches pair their first `B` examples** (the epoch's last,
//!   partial train batch): the official loaders give equal batches.
//! - **`rebar` here is REBAR.** The official `--meta_loss rebar` computes
//!   `(f(z) - f(zeta)) grad log p(z) + grad f(zeta)` with the relaxed sample from the same
//!   noise, i.e. this module's `relaxed_baseline` (biased, see above); this module's `rebar`
//!   (the default) adds the conditional sample `zeta~ | z` of Tucker et al. that makes it
//!   unbiased, at one more relaxed evaluation per step.
//! - The Gumbel noise and the conditional sample's exponentials are drawn through `rand_distr`
//!   from the strategy's own seeded ChaCha RNG (checkpointed), so a resumed search draws the
//!   same samples; the official code uses torch's global generator.
//! - The alpha Adam's betas and weight decay default to DARTS's values (REFERENCE.md gives only
//!   the lr, 1e-3).

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_strategy, save_strategy};
use super::op_weights::argmax_weights;
use super::optim::ordered_variables;
use super::perturb::norm;
pub use super::unas_estimator::{
    estimate_gradient, estimate_gradient_from, sample_cell, sample_cell_per_example, UnasSample,
    UnasTerms,
};
use super::unas_estimator::{mean_value, track_variance};
use super::unas_factorised::{estimate_factorised_gradient, FactorisedAlphas, FactorisedSample};
pub use super::unas_params::{
    LatencySource, UnasCell, UnasEstimator, UnasLatencyParams, UnasParams, UnasWeightsSample,
};
use super::{
    alphas, Adam, ArchSample, ArchStepStats, Objective, Phase, SearchError, SearchStrategy,
};
use crate::nas::{ArchParams, CellWeights, Genotype, LatencyOptions, LatencyTable, OpWeights};

/// Sampler and monitoring state, checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    rng: ChaCha8Rng,
    epoch: usize,
    arch_steps: u64,
    /// EWMA of the flattened alpha gradient (empty before the first step).
    grad_mean: Vec<f64>,
    /// EWMA of `||g - grad_mean||^2`: the estimator's variance (trace), for monitoring.
    grad_variance: f64,
    last_train_loss: Option<f64>,
    last_search_loss: Option<f64>,
    last_terms: Option<(f64, f64, Option<f64>)>,
    /// Table latency of the last hard sample and expected latency under `softmax(alpha)`
    /// before the step, ms (latency penalty on only).
    #[serde(default)]
    last_latency: Option<(f64, f64)>,
}

const STATE_FILE: &str = "unas.json";

/// The UNAS strategy.
#[derive(Debug)]
pub struct Unas {
    params: UnasParams,
    adam: Adam,
    state: State,
    /// Measured (or read from the cache) by the loop at start; not checkpointed, `load` keeps it.
    latency: Option<LatencyTable>,
    /// The factorised cell's selector logits (`cell = "factorised"`), stepped instead of the
    /// supernet's alphas.
    factorised: Option<FactorisedAlphas>,
}

impl Unas {
    pub fn new(arch: &ArchParams, params: UnasParams, seed: u64) -> Result<Self, SearchError> {
        params.validate()?;
        let factorised = match params.cell {
            UnasCell::Darts => None,
            UnasCell::Factorised => Some(FactorisedAlphas::new(
                arch.space(),
                arch.alpha_reduce().is_some(),
                arch.alpha_normal().device(),
            )?),
        };
        let adam = match &factorised {
            Some(f) => Adam::new(ordered_variables(f.var_store())?, params.optimizer),
            None => Adam::new(ordered_variables(arch.var_store())?, params.optimizer),
        };
        Ok(Self {
            params,
            adam,
            state: State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                epoch: 0,
                arch_steps: 0,
                grad_mean: Vec::new(),
                grad_variance: 0.0,
                last_train_loss: None,
                last_search_loss: None,
                last_terms: None,
                last_latency: None,
            },
            latency: None,
            factorised,
        })
    }

    pub fn params(&self) -> &UnasParams {
        &self.params
    }

    /// The running estimate of the alpha gradient's variance (trace), 0 before two steps.
    pub fn estimator_variance(&self) -> f64 {
        self.state.grad_variance
    }

    /// One sample per cell type, or with `examples = Some(B)` `B` of them per cell type.
    fn samples(
        &mut self,
        arch: &ArchParams,
        examples: Option<i64>,
    ) -> Result<Vec<UnasSample>, SearchError> {
        let conditional = self.params.estimator == UnasEstimator::Rebar;
        let (rng, tau) = (&mut self.state.rng, self.params.tau);
        alphas(arch)
            .iter()
            .map(|a| match examples {
                Some(b) => sample_cell_per_example(rng, a, tau, conditional, b),
                None => sample_cell(rng, a, tau, conditional),
            })
            .collect()
    }

    /// The factorised selector logits (`cell = "factorised"`).
    pub fn factorised(&self) -> Option<&FactorisedAlphas> {
        self.factorised.as_ref()
    }

    fn factorised_samples(
        &mut self,
        conditional: bool,
    ) -> Result<Vec<FactorisedSample>, SearchError> {
        let Some(f) = &self.factorised else {
            return Ok(Vec::new());
        };
        (0..f.num_cells())
            .map(|c| f.sample(&mut self.state.rng, c, self.params.tau, conditional))
            .collect()
    }

    fn cell_weights(mut cells: Vec<OpWeights>) -> Result<CellWeights, SearchError> {
        let reduce = if cells.len() > 1 { cells.pop() } else { None };
        let normal = cells
            .pop()
            .ok_or_else(|| SearchError::Invalid("unas: no alphas".into()))?;
        Ok(CellWeights { normal, reduce })
    }

    /// The weight step's op weights: a fresh sample of the current distribution, no graph to
    /// the logits. With `weights_sample = "relaxed"` (the official default) the relaxed `zeta`
    /// (dense, every op computed), with `"hard"` the one-hot `z` (only the sampled op of each
    /// edge computed). (The name predates the relaxed default.)
    fn hard_weights(&mut self, arch: &ArchParams) -> Result<CellWeights, SearchError> {
        let relaxed = self.params.weights_sample == UnasWeightsSample::Relaxed;
        if self.factorised.is_some() {
            let s = tch::no_grad(|| self.factorised_samples(false))?;
            return Self::cell_weights(
                s.into_iter()
                    .map(|s| match relaxed {
                        true => OpWeights::dense(s.relaxed.detach()),
                        false => s.hard,
                    })
                    .collect(),
            );
        }
        let tau = self.params.tau;
        let mut cells = tch::no_grad(|| -> Result<Vec<OpWeights>, SearchError> {
            alphas(arch)
                .iter()
                .map(|a| {
                    let s = sample_cell(&mut self.state.rng, a, tau, false)?;
                    Ok(match relaxed {
                        true => OpWeights::dense(s.relaxed.detach()),
                        false => OpWeights::one_hot(s.hard, &s.index)?,
                    })
                })
                .collect()
        })?
        .into_iter();
        let normal = cells
            .next()
            .ok_or_else(|| SearchError::Invalid("unas: no alphas".into()))?;
        Ok(CellWeights {
            normal,
            reduce: cells.next(),
        })
    }

    /// Folds one estimate into the running mean and variance of the estimator.
    fn record_gradient(&mut self, g: &[Tensor]) -> Result<(), SearchError> {
        let s = &mut self.state;
        let decay = self.params.variance_decay;
        track_variance(&mut s.grad_mean, &mut s.grad_variance, decay, g)
    }
}

impl SearchStrategy for Unas {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// Weights: a hard sample of the current distribution, no graph, only the sampled op per
    /// edge computed. Arch: the relaxed `zeta` with its graph (for loops that want it; the
    /// strategy's own `arch_step` samples for itself). Eval: the argmax sub-network.
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        match phase {
            Phase::Weights => self.hard_weights(arch),
            Phase::Arch if self.factorised.is_some() => {
                let mut s = self
                    .factorised_samples(false)?
                    .into_iter()
                    .map(|s| s.relaxed);
                let normal = s
                    .next()
                    .ok_or_else(|| SearchError::Invalid("unas: no alphas".into()))?;
                Ok(CellWeights::dense(normal, s.next()))
            }
            Phase::Arch => {
                let mut s = self.samples(arch, None)?.into_iter().map(|s| s.relaxed);
                let normal = s
                    .next()
                    .ok_or_else(|| SearchError::Invalid("unas: no alphas".into()))?;
                Ok(CellWeights::dense(normal, s.next()))
            }
            Phase::Eval => match &self.factorised {
                Some(f) => tch::no_grad(|| {
                    Self::cell_weights(
                        (0..f.num_cells())
                            .map(|c| f.hard_weights(&f.argmax(c)?))
                            .collect::<Result<_, _>>()?,
                    )
                }),
                None => tch::no_grad(|| argmax_weights(arch)),
            },
        }
    }

    /// With one architecture per example (`same_alpha_minibatch = false`, DARTS cell), the
    /// weight step trains each example under its own fresh sample, no graph: the relaxed
    /// `zeta` rows by default, as the official `train` (its `weights_no_grad`), or one-hot rows
    /// with `weights_sample = "hard"` (dense: every op runs, unlike the per-batch hard sample).
    /// Every other case is [`SearchStrategy::op_weights`].
    fn op_weights_for_batch(
        &mut self,
        arch: &ArchParams,
        phase: Phase,
        examples: i64,
    ) -> Result<CellWeights, SearchError> {
        if phase != Phase::Weights || self.params.same_alpha_minibatch || self.factorised.is_some()
        {
            return self.op_weights(arch, phase);
        }
        let relaxed = self.params.weights_sample == UnasWeightsSample::Relaxed;
        let (rng, tau) = (&mut self.state.rng, self.params.tau);
        let cells = tch::no_grad(|| -> Result<Vec<OpWeights>, SearchError> {
            alphas(arch)
                .iter()
                .map(|a| {
                    let s = sample_cell_per_example(rng, a, tau, false, examples)?;
                    let w = match relaxed {
                        true => s.relaxed.detach(),
                        false => s.hard,
                    };
                    Ok(OpWeights::per_example(w)?)
                })
                .collect()
        })?;
        Self::cell_weights(cells)
    }

    fn begin_epoch(&mut self, epoch: usize, _num_epochs: usize) {
        self.state.epoch = epoch;
    }

    /// Every iteration once the warm-up epochs are over.
    /// The weight-phase sample per cell type (of the factorised selectors when
    /// `cell = "factorised"`): relaxed by default, as the official code trains the weights on
    /// the detached relaxed sample (`weights_sample = "hard"` for a hard one), fixed for the
    /// rollout and the update: UNAS's alphas learn only in `arch_step`, from samples of their
    /// own. Departure: the official code draws one architecture per training example; a
    /// rollout acts with one architecture for all its envs (see [`super::ArchSample`] for why
    /// one per rollout), and the RL search's alpha steps draw one per batch
    /// (`train::rl::search` sets `same_alpha_minibatch`).
    fn sample_architecture(&mut self, arch: &ArchParams) -> Result<ArchSample, SearchError> {
        Ok(ArchSample::Fixed(super::detached(
            &self.hard_weights(arch)?,
        )))
    }

    fn wants_arch_step(&self, _iteration: u64) -> bool {
        self.state.epoch >= self.params.warmup_epochs
    }

    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let rebar = self.params.estimator == UnasEstimator::Rebar;
        // One architecture per example (the official default) or one for the batch.
        let examples = match self.params.same_alpha_minibatch {
            true => None,
            false => Some(objective.paired_examples()?),
        };
        let (params, samples, factorised) = match &self.factorised {
            Some(f) => (f.params(), Vec::new(), self.factorised_samples(rebar)?),
            None => (alphas(arch), self.samples(arch, examples)?, Vec::new()),
        };
        let lambda = self.params.gap_weight;
        let mut losses = None;
        let penalty = match (self.params.latency.source, &self.latency) {
            (LatencySource::Off, _) => None,
            (LatencySource::Table, Some(t)) => Some((
                t,
                self.params.latency.coefficient(self.state.arch_steps),
                self.params.latency.target_ms,
            )),
            (LatencySource::Table, None) => {
                return Err(SearchError::Invalid(
                    "unas: latency source is 'table' but the loop measured no latency table".into(),
                ))
            }
        };
        let mut hard_latency = None;
        let estimator = self.params.estimator;
        let f = |cells: Vec<OpWeights>| {
            let w = Self::cell_weights(cells)?;
            // Per example: `[B]` losses, example b of each batch under architecture b, so
            // that the gap is per example as in the official `training_obj`.
            let (lt, lv) = match examples {
                Some(_) => objective.per_example_losses(&w)?,
                None => (objective.train_loss(&w)?, objective.search_loss(&w)?),
            };
            if losses.is_none() {
                // The hard architecture's losses (evaluated first).
                losses = Some((mean_value(&lt)?, mean_value(&lv)?));
            }
            let f = &lt + (&lv - &lt).abs() * lambda;
            let Some((table, c_t, target)) = penalty else {
                return Ok(f);
            };
            // sum w * T: the table latency for one-hot z, the expected one for zeta (`[B]`
            // per example).
            let ms = table.expected(&w)?.to_kind(f.kind());
            if hard_latency.is_none() {
                hard_latency = Some(mean_value(&ms)?);
            }
            Ok(f + (ms - target).relu() * c_t)
        };
        let (g, terms) = if factorised.is_empty() {
            estimate_gradient(&params, &samples, estimator, f)?
        } else {
            estimate_factorised_gradient(
                &params,
                factorised,
                self.params.duplicate_penalty,
                estimator,
                f,
            )?
        };
        if let (Some(hard), Some((table, _, _))) = (hard_latency, penalty) {
            let probs = tch::no_grad(|| match &self.factorised {
                Some(f) => f.expected_weights(),
                None => super::softmax_weights(arch, 1.0),
            });
            let expected = table.expected(&probs)?.f_double_value(&[])?;
            self.state.last_latency = Some((hard, expected));
        }
        let grad_norm = norm(&g);
        if !grad_norm.is_finite() {
            return Err(SearchError::Invalid(format!(
                "unas: alpha gradient norm is {grad_norm}"
            )));
        }
        self.record_gradient(&g)?;
        self.adam.step_with(&g)?;
        self.state.arch_steps += 1;
        if let Some((lt, lv)) = losses {
            self.state.last_train_loss = Some(lt);
            self.state.last_search_loss = Some(lv);
        }
        self.state.last_terms = Some((terms.f_hard, terms.f_relaxed, terms.f_conditional));
        Ok(ArchStepStats {
            loss: terms.f_hard,
            grad_norm,
        })
    }

    fn latency_request(&self) -> Option<LatencyOptions> {
        let l = &self.params.latency;
        (l.source == LatencySource::Table).then(|| LatencyOptions {
            batch: l.batch,
            warmup: l.warmup,
            repeats: l.repeats,
            cache_dir: l.cache_dir.clone(),
        })
    }

    fn set_latency_table(&mut self, table: LatencyTable) -> Result<(), SearchError> {
        self.latency = Some(table);
        Ok(())
    }

    /// The factorised cell: `E[W]` under the selectors, per edge `(j -> i)` and op the expected
    /// number of node `i`'s two slots that pick input `j` with that op (the alphas are unused).
    fn expected_op_weights(&self, arch: &ArchParams) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
        let Some(f) = &self.factorised else {
            return super::softmax_op_weights(arch);
        };
        f.expected_weight_rows()
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        if let Some(f) = &self.factorised {
            return tch::no_grad(|| f.derive());
        }
        super::derive_from_softmax(arch, self.params.derive)
    }

    /// `estimator_variance` (EWMA trace of the alpha-gradient variance); the hard
    /// architecture's `train_loss`, `search_loss` and `gap`; `f_hard`, `f_relaxed`,
    /// `f_conditional` of the last estimate; `tau`, `arch_lr`, `arch_steps`; with the latency
    /// penalty on, `latency_hard_ms` (last hard sample), `latency_expected_ms` (under
    /// `softmax(alpha)`), `latency_target_ms` and `latency_coef` (`c_t`).
    /// The search (validation) loss at the expected op weights of the distribution the
    /// strategy learns: `softmax(alpha)`, or for the factorised cell `E[W]` of its input and
    /// op selectors, with the Hessian taken over the selector logits. (UNAS's own objective
    /// mixes the training and search losses; the curvature reported is the search loss's, as
    /// RobustDARTS measures it.)
    fn health_relaxation(
        &self,
        arch: &ArchParams,
    ) -> Result<super::health::HealthRelaxation, SearchError> {
        Ok(match &self.factorised {
            None => super::health::HealthRelaxation::softmax(
                arch,
                1.0,
                super::health::HealthLoss::Search,
            ),
            Some(f) => super::health::HealthRelaxation {
                loss: super::health::HealthLoss::Search,
                params: f.params(),
                weights: f.expected_weights(),
                description: "search (validation) loss at the factorised selectors' expected \
                              op weights E[W]"
                    .into(),
            },
        })
    }

    fn selector_tables(&self) -> Result<Vec<super::unas_factorised::SelectorTables>, SearchError> {
        match &self.factorised {
            Some(f) => f.selector_tables(),
            None => Ok(Vec::new()),
        }
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![("estimator_variance", self.state.grad_variance)];
        if let (Some(lt), Some(lv)) = (self.state.last_train_loss, self.state.last_search_loss) {
            out.push(("train_loss", lt));
            out.push(("search_loss", lv));
            out.push(("gap", (lv - lt).abs()));
        }
        if let Some((h, r, c)) = self.state.last_terms {
            out.push(("f_hard", h));
            out.push(("f_relaxed", r));
            if let Some(c) = c {
                out.push(("f_conditional", c));
            }
        }
        out.push(("tau", self.params.tau));
        out.push(("arch_lr", self.adam.lr()));
        out.push(("arch_steps", self.state.arch_steps as f64));
        let l = &self.params.latency;
        if l.source == LatencySource::Table {
            if let Some((hard, expected)) = self.state.last_latency {
                out.push(("latency_hard_ms", hard));
                out.push(("latency_expected_ms", expected));
            }
            out.push(("latency_target_ms", l.target_ms));
            out.push(("latency_coef", l.coefficient(self.state.arch_steps)));
        }
        out
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        if let Some(f) = &self.factorised {
            f.save(dir)?;
        }
        save_strategy(dir, Some(&self.adam), STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        if let Some(f) = &mut self.factorised {
            f.load(dir)?;
        }
        self.state = load_strategy(dir, Some(&mut self.adam), STATE_FILE)?;
        Ok(())
    }

    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Err(SearchError::Invalid(
            "unas cannot run data-parallel exactly: its estimator weights the score-function \
             term by f = L_train + |L_val - L_train| / 2, a nonlinear function of the whole \
             batch's loss values, so the mean of the processes' estimates is not the estimate \
             of one process on the whole batch; run it in one process"
                .into(),
        ))
    }
}
