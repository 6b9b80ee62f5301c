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

use super::perturb::power_iteration;
use super::{alphas, softmax_weights, Objective, SearchError};
use crate::nas::{ArchParams, CellWeights, Gene};

/// Which loss the curvature is taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthLoss {
    /// The objective's training batch (single-level strategies).
    Train,
    /// The objective's search batch (bilevel strategies).
    Search,
}

/// What search health takes the curvature of, for one strategy
/// ([`crate::search::SearchStrategy::health_relaxation`]): the loss, the parameters the
/// Hessian is taken with respect to, and the op weights as a function of them (with graph).
pub struct HealthRelaxation {
    pub loss: HealthLoss,
    /// The strategy's architecture parameters (the alphas, or UNAS's factorised selector
    /// logits), in a fixed order.
    pub params: Vec<Tensor>,
    /// Op weights computed from `params` with their graph.
    pub weights: CellWeights,
    /// One line for logs and the report: which loss at which op weights.
    pub description: String,
}

impl HealthRelaxation {
    /// `softmax(alpha / temperature)` of `arch`'s alphas under loss `which`.
    pub fn softmax(arch: &ArchParams, temperature: f64, which: HealthLoss) -> Self {
        let split = match which {
            HealthLoss::Train => "training",
            HealthLoss::Search => "search (validation)",
        };
        Self {
            loss: which,
            params: alphas(arch),
            weights: softmax_weights(arch, temperature),
            description: format!("{split} loss at op weights softmax(alpha / {temperature})"),
        }
    }
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
    relaxation_hessian_eigenvalue(
        objective,
        HealthRelaxation::softmax(arch, temperature, which),
        iterations,
    )
}

/// The dominant eigenvalue of the Hessian of `relaxation`'s loss with respect to its
/// parameters, by `iterations` power-iteration steps on exact Hessian-vector products.
pub fn relaxation_hessian_eigenvalue(
    objective: &mut dyn Objective,
    relaxation: HealthRelaxation,
    iterations: usize,
) -> Result<f64, SearchError> {
    let HealthRelaxation {
        loss: which,
        params,
        weights,
        ..
    } = relaxation;
    compute::full_precision(|| {
        hessian_eigenvalue_fp32(objective, which, params, weights, iterations)
    })
}

fn hessian_eigenvalue_fp32(
    objective: &mut dyn Objective,
    which: HealthLoss,
    params: Vec<Tensor>,
    weights: CellWeights,
    iterations: usize,
) -> Result<f64, SearchError> {
    let loss = match which {
        HealthLoss::Train => objective.train_loss(&weights)?,
        HealthLoss::Search => objective.search_loss(&weights)?,
    };
    // First derivatives with their graph, so that each product below is one more backward.
    let g = Tensor::f_run_backward(&[&loss], &params, true, true)?;
    // A parameter tensor the network does not use (no reduction cell at this depth) has no
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

/// The share of parameter-free ops ([`crate::nas::OpKind::is_parameter_free`]: none, pooling,
/// skip/identity, the RL-DARTS activations) among the genes of one derived cell; `None` for a
/// cell without genes.
pub fn parameter_free_share(genes: &[Vec<Gene>]) -> Option<f64> {
    let all: Vec<&Gene> = genes.iter().flatten().collect();
    (!all.is_empty()).then(|| {
        all.iter().filter(|(op, _)| op.is_parameter_free()).count() as f64 / all.len() as f64
    })
}

/// `sum_i <g_i, v_i>` keeping the graph of `g` (v is a constant direction).
fn dot_graph(g: &[Tensor], v: &[Tensor]) -> Tensor {
    g.iter()
        .zip(v)
        .map(|(a, b)| (a * b.detach()).sum(a.kind()))
        .reduce(|x, y| x + y)
        .expect("at least one alpha tensor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{AlphaInit, CellSpace, OpKind};
    use crate::search::{StrategyConfig, STRATEGY_NAMES};

    /// Single-level strategies take the curvature of the training loss their alphas follow,
    /// every other strategy that of the search loss; all of them of the alphas (one tensor per
    /// cell type) at a valid relaxation.
    #[test]
    fn every_strategy_names_the_loss_it_steps_on() {
        let arch = ArchParams::new(
            tch::Device::Cpu,
            CellSpace::darts(),
            true,
            AlphaInit::default(),
        )
        .unwrap();
        for name in STRATEGY_NAMES {
            let strategy = StrategyConfig::from_name(name)
                .unwrap()
                .build(&arch, 0)
                .unwrap();
            let r = strategy.health_relaxation(&arch).unwrap();
            let expected = match *name {
                "joint" | "snas" => HealthLoss::Train,
                _ => HealthLoss::Search,
            };
            assert_eq!(r.loss, expected, "{name}");
            assert_eq!(r.params.len(), 2, "{name}");
            let sums = r
                .weights
                .normal
                .weights()
                .sum_dim_intlist(-1, false, tch::Kind::Double);
            assert!(
                sums.allclose(&sums.ones_like(), 1e-6, 1e-6, false),
                "{name}"
            );
        }
    }

    #[test]
    fn parameter_free_share_counts_genes_by_the_op_registry() {
        let genes = vec![
            vec![(OpKind::SkipConnect, 0), (OpKind::SepConv3x3, 1)],
            vec![(OpKind::DilConv3x3, 0), (OpKind::DilConv5x5, 2)],
        ];
        assert_eq!(parameter_free_share(&genes), Some(0.25));
        let rl = vec![
            vec![(OpKind::Relu, 0)],
            vec![(OpKind::Tanh, 0), (OpKind::Conv3x3, 1)],
        ];
        assert!((parameter_free_share(&rl).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(parameter_free_share(&[]), None);
    }
}
