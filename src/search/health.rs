//! Search health (RobustDARTS, Zela et al. 2020): the dominant eigenvalue of the Hessian of
//! the search loss with respect to the architecture parameters. RobustDARTS found that DARTS's
//! failures (cells collapsing to parameter-free ops) come with this eigenvalue growing during
//! the search, and proposed stopping early when it does.
//!
//! The loss is `L(softmax(alpha / T))` on a batch the caller chooses, with the weights fixed:
//! for bilevel strategies their search (validation) batch, as RobustDARTS computes it; for
//! single-level strategies (joint DARTS in RL) their training batch, the loss their alphas
//! follow; for sampling strategies (GDAS, SNAS, UNAS, random search) the deterministic
//! relaxation of the same alphas, i.e. the curvature of the expected architecture rather than
//! of one sample. The eigenvalue comes from power iteration on exact Hessian-vector products
//! (double backward through the loss), never from a dense Hessian.

use crate::agents::compute;
use tch::Tensor;

use super::idarts::power_iteration;
use super::{alphas, softmax_weights, Objective, SearchError};
use crate::nas::ArchParams;

/// Which loss the curvature is taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthLoss {
    /// The objective's training batch (single-level strategies).
    Train,
    /// The objective's search batch (bilevel strategies).
    Search,
}

/// The dominant (largest-magnitude, signed) eigenvalue of `d^2 L / d alpha^2` at the current
/// alphas, by `iterations` power-iteration steps from a fixed start (all ones), with the loss
/// `which` of `objective` at op weights `softmax(alpha / temperature)`. In fp32, as every
/// second-order product ([`compute::full_precision`]).
pub fn alpha_hessian_eigenvalue(
    objective: &mut dyn Objective,
    arch: &ArchParams,
    temperature: f64,
    which: HealthLoss,
    iterations: usize,
) -> Result<f64, SearchError> {
    compute::full_precision(|| {
        alpha_hessian_eigenvalue_fp32(objective, arch, temperature, which, iterations)
    })
}

fn alpha_hessian_eigenvalue_fp32(
    objective: &mut dyn Objective,
    arch: &ArchParams,
    temperature: f64,
    which: HealthLoss,
    iterations: usize,
) -> Result<f64, SearchError> {
    let params = alphas(arch);
    let weights = softmax_weights(arch, temperature);
    let loss = match which {
        HealthLoss::Train => objective.train_loss(&weights)?,
        HealthLoss::Search => objective.search_loss(&weights)?,
    };
    // First derivatives with their graph, so that each product below is one more backward.
    let g = Tensor::f_run_backward(&[&loss], &params, true, true)?;
    // An alpha tensor the network does not use (no reduction cell at this depth) has no
    // gradient and no curvature: the eigenvalue is taken over the others.
    let (params, g): (Vec<Tensor>, Vec<Tensor>) = params
        .into_iter()
        .zip(g)
        .filter(|(_, g)| g.defined())
        .unzip();
    if params.is_empty() {
        return Err(SearchError::Invalid(
            "the search loss does not depend on any architecture parameter".into(),
        ));
    }
    let hvp = |v: &[Tensor]| -> Result<Vec<Tensor>, SearchError> {
        let gv = dot_graph(&g, v);
        let h = Tensor::f_run_backward(&[&gv], &params, true, false)?;
        Ok(h)
    };
    let start: Vec<Tensor> = params.iter().map(Tensor::ones_like).collect();
    power_iteration(&start, iterations, hvp)
}

/// `sum_i <g_i, v_i>` keeping the graph of `g` (v is a constant direction).
fn dot_graph(g: &[Tensor], v: &[Tensor]) -> Tensor {
    g.iter()
        .zip(v)
        .map(|(a, b)| (a * b.detach()).sum(a.kind()))
        .reduce(|x, y| x + y)
        .expect("at least one alpha tensor")
}
