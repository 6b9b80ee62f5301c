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

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{load_json, save_json};
use super::optim::ordered_variables;
use super::perturb::{grad, norm};
use super::sampling;
use super::unas_factorised::{FactorisedAlphas, FactorisedSample};
use super::{
    alphas, Adam, AdamConfig, ArchSample, ArchStepStats, Objective, Phase, SearchError,
    SearchStrategy,
};
use crate::nas::{
    ArchParams, CellWeights, DeriveRule, Genotype, LatencyOptions, LatencyTable, OpWeights,
};

/// Which cell the search parameterises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasCell {
    /// The DARTS cell: one categorical over the op set (with `none`) per edge, the
    /// supernet's alphas.
    #[default]
    Darts,
    /// UNAS's factorised cell: per node two input selectors and two op selectors (the op set
    /// without `none`), exactly two incoming edges per node
    /// ([`super::unas_factorised`]).
    Factorised,
}

/// Which gradient estimator the alpha step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasEstimator {
    /// `(f(z) - f(zeta)) grad log p(z) + grad f(zeta)` (biased, low variance).
    RelaxedBaseline,
    /// REBAR with the conditional Gumbel sample: unbiased.
    Rebar,
    /// Plain REINFORCE `f(z) grad log p(z)`, no baseline: the reference the other two are
    /// compared with (unbiased, high variance). Not meant for real searches.
    Reinforce,
}

/// Where the latency of an architecture comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencySource {
    /// No latency penalty.
    Off,
    /// The sum of per-op times measured on the search device ([`crate::nas::latency`]).
    Table,
}

/// `[search.strategy.params.latency]`: UNAS's penalty `c_t relu(latency(z) - target)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnasLatencyParams {
    /// `off` (default) | `table`.
    pub source: LatencySource,
    /// Latency below which there is no penalty, milliseconds per forward of `batch` inputs on
    /// the search device (the table's units).
    pub target_ms: f64,
    /// Final penalty coefficient `c`, per millisecond. UNAS: 0.1.
    pub weight: f64,
    /// Alpha steps over which `c_t` ramps linearly from 0 to `weight`; 0 = no ramp. UNAS: 30k.
    pub ramp_steps: u64,
    /// Untimed warm-up forwards per op before timing.
    pub warmup: usize,
    /// Timed forwards per op; the median is kept.
    pub repeats: usize,
    /// Batch size of the timed forwards.
    pub batch: i64,
    /// Folder caching measured tables per device and shape (JSON); unset = measure each run.
    pub cache_dir: Option<PathBuf>,
}

impl Default for UnasLatencyParams {
    fn default() -> Self {
        Self {
            source: LatencySource::Off,
            target_ms: 0.0,
            weight: 0.1,
            ramp_steps: 30_000,
            warmup: 3,
            repeats: 10,
            batch: 64,
            cache_dir: None,
        }
    }
}

impl UnasLatencyParams {
    /// `c_t` after `steps` alpha steps.
    pub fn coefficient(&self, steps: u64) -> f64 {
        if self.ramp_steps == 0 {
            self.weight
        } else {
            self.weight * (steps as f64 / self.ramp_steps as f64).min(1.0)
        }
    }
}

/// `[search.strategy.params]` of `kind = "unas"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnasParams {
    /// Weight of the generalisation gap `|L_val - L_train|` in `f`. UNAS: 0.5.
    pub gap_weight: f64,
    /// Temperature of the relaxed samples. UNAS: 0.4.
    pub tau: f64,
    /// `rebar` (unbiased) | `relaxed_baseline` | `reinforce`.
    pub estimator: UnasEstimator,
    /// Epochs that train the weights only before alpha steps start. UNAS: 15 of 100 on
    /// CIFAR-10 (set in configs/cifar10-unas.toml); the default 0 leaves the schedule to the
    /// preset, since an epoch means different amounts of work in the vision and RL loops.
    pub warmup_epochs: usize,
    /// Decay of the running mean/variance of the alpha gradient logged as
    /// `estimator_variance` (an EWMA over steps; monitoring only).
    pub variance_decay: f64,
    /// How the genotype is read off `softmax(alpha)`: `darts` (top-2 edges per node, `none`
    /// excluded) for the DARTS cell.
    pub derive: DeriveRule,
    /// Adam over the alphas. UNAS: lr 1e-3; the rest as DARTS.
    pub optimizer: AdamConfig,
    /// The measured-latency penalty (off by default).
    pub latency: UnasLatencyParams,
    /// `darts` (default) | `factorised`. The factorised cell selects among the op set's ops
    /// other than `none`, whatever the supernet's op set; its genotype is read off the
    /// selectors' argmax (`derive` is not used).
    pub cell: UnasCell,
    /// Which sample of the current distribution the loop's weight step trains on. UNAS:
    /// `relaxed` (the official `train` steps the weights on a detached copy of the same
    /// Gumbel-softmax sample `zeta` the arch step used, every op computed); `hard` trains the
    /// one-hot `z` (only the sampled op of each edge computed, cheaper, the network the
    /// REINFORCE term scores).
    pub weights_sample: UnasWeightsSample,
    /// Factorised cell only: weight of the duplicate-edge penalty added to `f`, per node
    /// `sum_{j,o} w0[j,o] w1[j,o]` with `w_s = z_in_s z_op_s^T` the (input, op) choice of
    /// slot `s` (1 when both slots pick the same input *and* op, for the hard sample). UNAS:
    /// 0.2 (the official `--alpha_loss`, on by default, `--alpha_loss_lambda 0.2`).
    pub duplicate_penalty: f64,
    /// `false` (UNAS's default, `same_alpha_minibatch=False`): each alpha step draws one
    /// architecture per example of the batch, scores example `b` of the training and of the
    /// search batch under architecture `b`, and weights that example's `f` by its own
    /// `log p(z_b)`; the estimate is the mean over the batch (lower variance, same
    /// expectation). Needs per-example losses from the loop ([`Objective::per_example_losses`]:
    /// the supervised search has them) and the DARTS cell. `true`: one architecture for the
    /// whole batch, `f` of the batch means (the RL search always runs this way: see
    /// `train::rl::search`).
    pub same_alpha_minibatch: bool,
}

/// Which sample the weight step trains on (see [`UnasParams::weights_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnasWeightsSample {
    /// The relaxed `zeta`, detached (official).
    #[default]
    Relaxed,
    /// The hard one-hot `z`.
    Hard,
}

impl Default for UnasParams {
    fn default() -> Self {
        Self {
            gap_weight: 0.5,
            tau: 0.4,
            estimator: UnasEstimator::Rebar,
            warmup_epochs: 0,
            variance_decay: 0.9,
            derive: DeriveRule::Darts,
            optimizer: AdamConfig {
                lr: 1e-3,
                ..AdamConfig::default()
            },
            latency: UnasLatencyParams::default(),
            cell: UnasCell::Darts,
            weights_sample: UnasWeightsSample::Relaxed,
            duplicate_penalty: 0.2,
            same_alpha_minibatch: false,
        }
    }
}

/// One sample of one cell type's architecture, or one per example ([`sample_cell_per_example`]:
/// every tensor then has a leading batch dimension `[B, num_edges, num_ops]`).
#[derive(Debug)]
pub struct UnasSample {
    /// The hard architecture: sampled op per edge, `argmax(log p + G)` (per example: row-major
    /// over `[B, num_edges]`).
    pub index: Vec<usize>,
    /// `onehot(index)`, `[num_edges, num_ops]`, no graph.
    pub hard: Tensor,
    /// `zeta = softmax((log p + G) / tau)` with graph to the alphas.
    pub relaxed: Tensor,
    /// `zeta~ = softmax(b~ / tau)`, `b~ ~ p(b | z)` (REBAR only), with graph to the alphas.
    pub conditional: Option<Tensor>,
}

/// Values of `f` at the three samples of one estimate (the conditional one only for REBAR).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UnasTerms {
    pub f_hard: f64,
    pub f_relaxed: f64,
    pub f_conditional: Option<f64>,
}

/// `n` uniforms on the open interval (0, 1), as f64, from `rng` ([`sampling::open_uniforms`]).
/// The samplers above draw Gumbels and exponentials directly; this stays for callers that
/// store raw uniforms with a rollout (issue 22's RL loop).
#[allow(dead_code)]
fn open_uniforms(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    sampling::open_uniforms(rng, n)
}

/// Draws `z`, `zeta` (and `zeta~` when `conditional`) for the logits `alpha`
/// (`[num_edges, num_ops]`) at temperature `tau` from `rng`.
///
/// The conditional sample (Tucker et al. 2017, appendix): with `lp = log_softmax(alpha)` and
/// fresh unit exponentials `e` (`e = -log v` for a uniform `v`), the maximum of the perturbed
/// log-probabilities is Gumbel(0), so `b~_k = -log e_k` for the sampled op `k`, and every other
/// op is a Gumbel truncated below it, `b~_i = -log(e_i / p_i + e_k)`. The Gumbel noise and the
/// exponentials are drawn through `rand_distr` from `rng` ([`sampling`]).
pub fn sample_cell(
    rng: &mut ChaCha8Rng,
    alpha: &Tensor,
    tau: f64,
    conditional: bool,
) -> Result<UnasSample, SearchError> {
    sample_cells(rng, alpha, tau, conditional, None)
}

/// [`sample_cell`] for each of `examples` examples, independently (UNAS's
/// `same_alpha_minibatch = false`, the official `alpha.expand(-1, batch_size, -1)` before the
/// Gumbel-softmax): `hard`, `relaxed` and `conditional` are `[examples, num_edges, num_ops]`.
pub fn sample_cell_per_example(
    rng: &mut ChaCha8Rng,
    alpha: &Tensor,
    tau: f64,
    conditional: bool,
    examples: i64,
) -> Result<UnasSample, SearchError> {
    if examples < 1 {
        return Err(SearchError::Invalid(format!(
            "unas: per-example samples need at least one example, got {examples}"
        )));
    }
    sample_cells(rng, alpha, tau, conditional, Some(examples))
}

fn sample_cells(
    rng: &mut ChaCha8Rng,
    alpha: &Tensor,
    tau: f64,
    conditional: bool,
    examples: Option<i64>,
) -> Result<UnasSample, SearchError> {
    if alpha.dim() != 2 {
        return Err(SearchError::Invalid(format!(
            "unas: alphas must be [num_edges, num_ops], got {:?}",
            alpha.size()
        )));
    }
    let log_p = alpha.log_softmax(-1, alpha.kind()); // [E, O]
                                                     // The shape of the noise: [E, O], or [B, E, O] per example (log_p broadcasts over B).
    let like = match examples {
        Some(b) => alpha.unsqueeze(0).expand([b, -1, -1], false),
        None => alpha.shallow_clone(),
    };
    let gumbel = sampling::gumbel_tensor_like(rng, &like)?; // like
    let b = &log_p + gumbel; // like
    let argmax = b.detach().argmax(-1, true); // [E, 1] or [B, E, 1]
    let index = Vec::<i64>::try_from(&argmax.flatten(0, -1).to_device(Device::Cpu))?;
    let hard = b.zeros_like().detach().scatter_value(-1, &argmax, 1.0); // like
    let relaxed = (&b / tau).softmax(-1, alpha.kind());
    let conditional = if conditional {
        let e = sampling::exp1_tensor_like(rng, &like)?; // like, positive
        let top = e.gather(-1, &argmax, false); // [.., E, 1]: e_k
        let others = -(&e * (-&log_p).exp() + &top).log(); // like
        let at_top = -top.log(); // [.., E, 1]
        let b_tilde = others.where_self(&hard.eq(0.0), &at_top.expand_as(&others));
        Some((b_tilde / tau).softmax(-1, alpha.kind()))
    } else {
        None
    };
    Ok(UnasSample {
        index: index.into_iter().map(|i| i as usize).collect(),
        hard,
        relaxed,
        conditional,
    })
}

/// The alpha gradient of one estimate. `alphas` are the logits of each cell type, `samples`
/// one [`UnasSample`] per alpha, and `f` evaluates the objective for one op-weight matrix per
/// cell type (called with the hard one-hot weights under `no_grad`, then with `zeta`, then with
/// `zeta~` for REBAR; it must return a scalar with graph to the weights it was given).
///
/// Per-example samples ([`sample_cell_per_example`]) give `[B, E, O]` op weights
/// ([`OpWeights::per_example`], the hard ones dense: every op runs) and `log p(z_b)` per
/// example; `f` then returns `[B]`, `f_b` under architecture `b`, and the estimate is the mean
/// over `b` of the per-example estimators (the official `torch.mean(log_q_d * reward) +
/// torch.mean(loss_cont)`).
pub fn estimate_gradient(
    alphas: &[Tensor],
    samples: &[UnasSample],
    estimator: UnasEstimator,
    f: impl FnMut(Vec<OpWeights>) -> Result<Tensor, SearchError>,
) -> Result<(Vec<Tensor>, UnasTerms), SearchError> {
    if alphas.len() != samples.len() {
        return Err(SearchError::Invalid(format!(
            "unas: {} alpha matrices and {} samples",
            alphas.len(),
            samples.len()
        )));
    }
    let per_example = samples.iter().any(|s| s.hard.dim() == 3);
    let hard: Vec<OpWeights> = samples
        .iter()
        .map(|s| match per_example {
            true => OpWeights::per_example(s.hard.shallow_clone()),
            false => OpWeights::one_hot(s.hard.shallow_clone(), &s.index),
        })
        .collect::<Result<_, _>>()?;
    // log p(z) = sum over cells and edges of log_softmax(alpha)[e, z_e]; per example `[B]`.
    let shape: &[i64] = match (per_example, samples.first()) {
        (true, Some(s)) => &s.hard.size()[..1],
        _ => &[],
    };
    let mut log_p_z = Tensor::zeros(shape, (alphas[0].kind(), alphas[0].device()));
    for (a, s) in alphas.iter().zip(samples) {
        let lp = a.log_softmax(-1, a.kind()) * &s.hard;
        log_p_z += match per_example {
            true => lp.sum_dim_intlist([-2i64, -1].as_slice(), false, a.kind()),
            false => lp.sum(a.kind()),
        };
    }
    let relaxed = samples.iter().map(|s| s.relaxed.shallow_clone()).collect();
    let conditional = samples
        .iter()
        .map(|s| s.conditional.as_ref().map(Tensor::shallow_clone))
        .collect();
    estimate_gradient_from(alphas, log_p_z, hard, relaxed, conditional, estimator, f)
}

/// [`estimate_gradient`] for any parameterisation: `params` are the tensors differentiated,
/// `log_p_z` is `log p(z)` of the hard sample with graph to them, `hard` the hard op weights
/// per cell type, `relaxed` (`zeta`) and `conditional` (`zeta~`, REBAR only) the relaxed op
/// weights with graph to `params`. With per-example weights (`[B, E, O]` tensors), `log_p_z`
/// and `f`'s values are `[B]` and the estimate is the batch mean of the per-example ones.
pub fn estimate_gradient_from(
    params: &[Tensor],
    log_p_z: Tensor,
    hard: Vec<OpWeights>,
    relaxed: Vec<Tensor>,
    conditional: Vec<Option<Tensor>>,
    estimator: UnasEstimator,
    mut f: impl FnMut(Vec<OpWeights>) -> Result<Tensor, SearchError>,
) -> Result<(Vec<Tensor>, UnasTerms), SearchError> {
    let per_example = log_p_z.dim() == 1;
    let dense = |w: Tensor| match per_example {
        true => OpWeights::per_example(w),
        false => Ok(OpWeights::dense(w)),
    };
    let f_hard_t = tch::no_grad(|| f(hard))?;
    let f_hard = mean_value(&f_hard_t)?;
    let mut terms = UnasTerms {
        f_hard,
        ..Default::default()
    };
    // `log p(z) (f(z) - baseline)`, the REINFORCE term, the reward without graph: one number
    // for one architecture per batch, `[B]` per example.
    let reinforce = |log_p_z: Tensor, baseline: Option<&Tensor>| -> Result<Tensor, SearchError> {
        Ok(match (per_example, baseline) {
            (true, Some(b)) => log_p_z * (&f_hard_t - b.detach()),
            (true, None) => log_p_z * &f_hard_t,
            (false, Some(b)) => log_p_z * (f_hard - b.f_double_value(&[])?),
            (false, None) => log_p_z * f_hard,
        })
    };
    let surrogate = match estimator {
        UnasEstimator::Reinforce => {
            terms.f_relaxed = f_hard;
            reinforce(log_p_z, None)?
        }
        UnasEstimator::RelaxedBaseline => {
            let f_rel = f(relaxed.into_iter().map(dense).collect::<Result<_, _>>()?)?;
            terms.f_relaxed = mean_value(&f_rel)?;
            &f_rel + reinforce(log_p_z, Some(&f_rel))?
        }
        UnasEstimator::Rebar => {
            let f_rel = f(relaxed.into_iter().map(dense).collect::<Result<_, _>>()?)?;
            let cond = conditional
                .into_iter()
                .map(|c| {
                    let c = c.ok_or_else(|| {
                        SearchError::Invalid("unas: rebar needs conditional samples".into())
                    })?;
                    Ok(dense(c)?)
                })
                .collect::<Result<_, SearchError>>()?;
            let f_cond = f(cond)?;
            terms.f_relaxed = mean_value(&f_rel)?;
            terms.f_conditional = Some(mean_value(&f_cond)?);
            &f_rel - &f_cond + reinforce(log_p_z, Some(&f_cond))?
        }
    };
    let surrogate = match per_example {
        true => surrogate.mean(surrogate.kind()),
        false => surrogate,
    };
    let g = grad(&surrogate, params, false)?;
    Ok((g, terms))
}

/// The value of a scalar, or the mean of a per-example vector.
fn mean_value(t: &Tensor) -> Result<f64, SearchError> {
    Ok(match t.dim() {
        0 => t.f_double_value(&[])?,
        _ => t.f_mean(Kind::Double)?.f_double_value(&[])?,
    })
}

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
const ADAM_FILE: &str = "arch_adam.safetensors";

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
        let p = &params;
        if !(p.tau > 0.0 && p.tau.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: tau must be finite and > 0, got {}",
                p.tau
            )));
        }
        if !(p.gap_weight >= 0.0 && p.gap_weight.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: gap_weight must be finite and >= 0, got {}",
                p.gap_weight
            )));
        }
        if !(0.0..1.0).contains(&p.variance_decay) {
            return Err(SearchError::Invalid(format!(
                "unas: variance_decay must be in [0, 1), got {}",
                p.variance_decay
            )));
        }
        if !(p.duplicate_penalty >= 0.0 && p.duplicate_penalty.is_finite()) {
            return Err(SearchError::Invalid(format!(
                "unas: duplicate_penalty must be finite and >= 0 (0 = off), got {}",
                p.duplicate_penalty
            )));
        }
        let l = &p.latency;
        if l.source == LatencySource::Table
            && !(l.target_ms >= 0.0
                && l.target_ms.is_finite()
                && l.weight >= 0.0
                && l.weight.is_finite()
                && l.batch > 0
                && l.repeats > 0)
        {
            return Err(SearchError::Invalid(format!(
                "unas: latency needs target_ms >= 0, weight >= 0, batch > 0, repeats > 0, got {l:?}"
            )));
        }
        if p.cell == UnasCell::Factorised && !p.same_alpha_minibatch {
            // The factorised sampler builds one (input, op) choice per node and its sparse hard
            // weights; drawing it per example would need that machinery batched too.
            return Err(SearchError::Invalid(
                "unas: the factorised cell draws one architecture per minibatch; set \
                 search.strategy.params.same_alpha_minibatch = true (per-example samples are \
                 implemented for the DARTS cell)"
                    .into(),
            ));
        }
        let factorised = match p.cell {
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

    /// The argmax op per edge, one-hot, every other op skipped.
    fn argmax_weights(arch: &ArchParams) -> Result<CellWeights, SearchError> {
        let one = |a: &Tensor| -> Result<OpWeights, SearchError> {
            let idx = a.argmax(-1, false);
            let index = Vec::<i64>::try_from(&idx.to_device(Device::Cpu))?;
            let w = a
                .zeros_like()
                .detach()
                .scatter_value(-1, &idx.unsqueeze(-1), 1.0);
            let index: Vec<usize> = index.into_iter().map(|i| i as usize).collect();
            Ok(OpWeights::one_hot(w, &index)?)
        };
        Ok(CellWeights {
            normal: one(arch.alpha_normal())?,
            reduce: arch.alpha_reduce().map(one).transpose()?,
        })
    }

    fn record_gradient(&mut self, g: &[Tensor]) -> Result<(), SearchError> {
        let mut flat = Vec::new();
        for t in g {
            flat.extend(Vec::<f64>::try_from(
                &t.detach()
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu)
                    .flatten(0, -1),
            )?);
        }
        let d = self.params.variance_decay;
        if self.state.grad_mean.len() != flat.len() {
            self.state.grad_mean = flat;
            self.state.grad_variance = 0.0;
            return Ok(());
        }
        let dev: f64 = flat
            .iter()
            .zip(&self.state.grad_mean)
            .map(|(x, m)| (x - m).powi(2))
            .sum();
        self.state.grad_variance = d * self.state.grad_variance + (1.0 - d) * dev;
        for (m, x) in self.state.grad_mean.iter_mut().zip(&flat) {
            *m = d * *m + (1.0 - d) * x;
        }
        Ok(())
    }
}

impl SearchStrategy for Unas {
    fn name(&self) -> &'static str {
        "unas"
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
                None => tch::no_grad(|| Self::argmax_weights(arch)),
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
            let mut log_p_z = Tensor::zeros([], (Kind::Float, params[0].device()));
            let (mut hard, mut relaxed, mut conditional) = (Vec::new(), Vec::new(), Vec::new());
            // The duplicate-edge penalty of the hard, relaxed and conditional samples, summed
            // over cell types; added to `f` at the matching evaluation (estimate_gradient_from
            // evaluates hard, then relaxed, then conditional).
            let mut duplicate: [Option<Tensor>; 3] = [None, None, None];
            for s in factorised {
                log_p_z += s.log_p;
                hard.push(s.hard);
                relaxed.push(s.relaxed);
                conditional.push(s.conditional);
                for (total, term) in duplicate.iter_mut().zip(s.duplicate) {
                    *total = match (total.take(), term) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                }
            }
            let weight = self.params.duplicate_penalty;
            let mut call = 0;
            let mut f = f;
            let f = |cells: Vec<OpWeights>| -> Result<Tensor, SearchError> {
                let value = f(cells)?;
                let term = duplicate.get(call).and_then(Option::as_ref);
                call += 1;
                Ok(match term {
                    Some(t) if weight > 0.0 => {
                        let t = t.to_kind(value.kind()) * weight;
                        value + t
                    }
                    _ => value,
                })
            };
            estimate_gradient_from(&params, log_p_z, hard, relaxed, conditional, estimator, f)?
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
        let w = tch::no_grad(|| f.expected_weights());
        let rows = |w: &OpWeights| -> Result<Vec<Vec<f64>>, SearchError> {
            Ok(Vec::<Vec<f64>>::try_from(
                &w.weights().to_kind(Kind::Double).to_device(Device::Cpu),
            )?)
        };
        let mut out = vec![rows(&w.normal)?];
        if let Some(reduce) = &w.reduce {
            out.push(rows(reduce)?);
        }
        Ok(out)
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
        out.push(("arch_lr", self.adam.config.lr));
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
        self.adam.save(&dir.join(ADAM_FILE))?;
        if let Some(f) = &self.factorised {
            f.save(dir)?;
        }
        save_json(dir, STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        self.adam.load(&dir.join(ADAM_FILE))?;
        if let Some(f) = &mut self.factorised {
            f.load(dir)?;
        }
        self.state = load_json(dir, STATE_FILE)?;
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
