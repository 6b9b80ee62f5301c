//! UNAS's gradient estimators (Vahdat et al. CVPR 2020): the hard, relaxed and REBAR
//! conditional samples of a categorical cell (Tucker et al. 2017), and the REINFORCE,
//! relaxed-baseline and REBAR estimates of the alpha gradient built from them. Shared by the
//! DARTS cell ([`super::unas`]) and the factorised cell ([`super::unas_factorised`]).

use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::perturb::grad;
use super::sampling;
use super::unas_params::UnasEstimator;
use super::SearchError;
use crate::nas::OpWeights;

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
pub(crate) fn mean_value(t: &Tensor) -> Result<f64, SearchError> {
    Ok(match t.dim() {
        0 => t.f_double_value(&[])?,
        _ => t.f_mean(Kind::Double)?.f_double_value(&[])?,
    })
}

/// The estimator's variance monitor: folds the flattened gradient `g` into the EWMA `mean`
/// (seeded with the first gradient, or again when the size changes) and `variance`, the EWMA
/// of `||g - mean||^2` (the trace of the estimator's covariance), with weight `decay` on the
/// past.
pub(crate) fn track_variance(
    mean: &mut Vec<f64>,
    variance: &mut f64,
    decay: f64,
    g: &[Tensor],
) -> Result<(), SearchError> {
    let mut flat = Vec::new();
    for t in g {
        flat.extend(Vec::<f64>::try_from(
            &t.detach()
                .to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )?);
    }
    let d = decay;
    if mean.len() != flat.len() {
        *mean = flat;
        *variance = 0.0;
        return Ok(());
    }
    let dev: f64 = flat
        .iter()
        .zip(mean.iter())
        .map(|(x, m)| (x - m).powi(2))
        .sum();
    *variance = d * *variance + (1.0 - d) * dev;
    for (m, x) in mean.iter_mut().zip(&flat) {
        *m = d * *m + (1.0 - d) * x;
    }
    Ok(())
}
