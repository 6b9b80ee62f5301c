//! The transformer supernet as a [`crate::search::Objective`], so that the existing search
//! strategies run on it unchanged, and the list of strategies each mode can serve.
//!
//! # The surrogate loss (reversible and checkpointed modes)
//!
//! The strategies differentiate the tensor an objective returns (`backward`, or
//! `run_backward` w.r.t. the weights or the alphas). A reversible (or checkpointed) network
//! has no graph to hand over, so [`SeqObjective`] returns
//!
//! `S - S.detach() + L`, with `S = sum_p <p, g_p> + <W_enc, g_W_enc> + <W_dec, g_W_dec>`,
//!
//! where `L` is the loss value (no graph), `g_p` the reconstructed gradient of every weight,
//! `W` the op weights the strategy passed in (with whatever graph it gave them: softmax,
//! Gumbel-softmax, straight-through) and `g_W` their reconstructed gradient; every `g` is a
//! constant. Its value is `L` exactly (`S - S` is exactly 0 in floating point), and its first
//! derivative w.r.t. `p` is `g_p` and w.r.t. the alphas `g_W . dW/dalpha`, i.e. exactly the
//! true gradients. Its second derivatives are those of a linear function, 0, which is wrong,
//! so every strategy that differentiates twice through the network (double backward) is
//! refused in those two modes by [`check_strategy`]; DARTS second order with a finite
//! difference only needs first derivatives at perturbed weights and works.

use tch::Tensor;

use super::net::{Mode, SeqBatch, SeqNet};
use super::TransformerError;
use crate::nas::CellWeights;
use crate::search::{
    DartsOrder, HessianMode, LatencySource, Objective, SearchError, Sgd, StrategyConfig, UnasCell,
    VirtualStep,
};

/// Refuses strategies the network cannot serve in `mode`, saying why and what to use instead.
pub fn check_strategy(strategy: &StrategyConfig, mode: Mode) -> Result<(), TransformerError> {
    let second_derivatives = match strategy {
        StrategyConfig::Darts(p) => {
            p.order == DartsOrder::Second && p.hessian == HessianMode::Exact
        }
        // The Neumann series always takes Hessian-vector products by double backward.
        StrategyConfig::Idarts(_) => true,
        StrategyConfig::Unas(p) => {
            if p.latency.source != LatencySource::Off {
                return Err(TransformerError::Unsupported(
                    "unas: the latency table is measured on the convolutional supernets only; \
                     set search.strategy.params.latency.source = \"off\""
                        .into(),
                ));
            }
            if p.cell == UnasCell::Factorised {
                return Err(TransformerError::Unsupported(
                    "unas: the factorised cell selects inputs of a DARTS cell; a transformer \
                     split has one input, use search.strategy.params.cell = \"darts\""
                        .into(),
                ));
            }
            false
        }
        _ => false,
    };
    let frees_graph = match mode {
        Mode::Plain => None,
        Mode::Reversible => Some("reversible supernet frees its graph and reconstructs"),
        Mode::Checkpointed => Some("checkpointed supernet frees its graph and recomputes"),
    };
    if let (true, Some(what)) = (second_derivatives, frees_graph) {
        return Err(TransformerError::Unsupported(format!(
            "{}: this strategy differentiates the loss twice (Hessian-vector products by double \
             backward), but the {what} first derivatives only. Use network.mode = \"plain\", \
             or DARTS second order with search.strategy.params.hessian = \"finite_difference\"",
            strategy.name()
        )));
    }
    Ok(())
}

/// The search loop's network, weight optimizer and current batches as an [`Objective`].
pub struct SeqObjective<'a> {
    pub net: &'a SeqNet,
    pub sgd: &'a Sgd,
    pub train: &'a SeqBatch,
    pub search: &'a SeqBatch,
}

/// The loss on `batch` for `weights`: with graph in plain mode, the surrogate of the module
/// docs in reversible and checkpointed mode.
pub fn loss_for_strategy(
    net: &SeqNet,
    batch: &SeqBatch,
    weights: Option<&CellWeights>,
) -> Result<Tensor, TransformerError> {
    match net.config.mode {
        Mode::Plain => net.plain_loss(batch, weights),
        // Called under `no_grad` (a strategy only scoring, e.g. random search): the value is
        // all that is wanted, and a forward without graph is already memory-flat.
        Mode::Reversible | Mode::Checkpointed if !grad_enabled() => net.plain_loss(batch, weights),
        Mode::Reversible | Mode::Checkpointed => {
            let r = match net.config.mode {
                Mode::Checkpointed => net.checkpointed_grads(batch, weights)?,
                _ => net.reversible_grads(batch, weights)?,
            };
            let kind = r.loss.kind();
            let mut terms: Vec<Tensor> = r.params.iter().map(|(p, g)| (p * g).sum(kind)).collect();
            if let Some(weights) = weights {
                let ws = [Some(&weights.normal), weights.reduce.as_ref()];
                for (w, g) in ws.iter().zip(&r.op_weights) {
                    if let (Some(w), Some(g)) = (w, g) {
                        terms.push((w.weights() * g).sum(kind));
                    }
                }
            }
            let s = match terms.is_empty() {
                true => Tensor::zeros([], (kind, r.loss.device())),
                false => Tensor::stack(&terms, 0).sum(kind),
            };
            Ok(&s - s.detach() + r.loss)
        }
    }
}

/// The loss on `batch` for a caller that differentiates it with respect to the op weights'
/// graph (the alphas) only ([`Objective::search_loss_for_alphas`]): in reversible and
/// checkpointed mode the surrogate `S - S.detach() + L` with `S = <W, g_W>` over the op
/// weights alone, from a backward that skips the layers' weight gradients. Its derivative
/// with respect to the network weights is zero, not theirs: only alpha gradients may be taken.
pub fn loss_for_alphas(
    net: &SeqNet,
    batch: &SeqBatch,
    weights: &CellWeights,
) -> Result<Tensor, TransformerError> {
    if net.config.mode == Mode::Plain || !grad_enabled() {
        return loss_for_strategy(net, batch, Some(weights));
    }
    let r = net.op_weight_grads(batch, weights)?;
    let kind = r.loss.kind();
    let ws = [Some(&weights.normal), weights.reduce.as_ref()];
    let terms: Vec<Tensor> = ws
        .iter()
        .zip(&r.op_weights)
        .filter_map(|(w, g)| Some((w.as_ref()?.weights() * g.as_ref()?).sum(kind)))
        .collect();
    let s = match terms.is_empty() {
        true => Tensor::zeros([], (kind, r.loss.device())),
        false => Tensor::stack(&terms, 0).sum(kind),
    };
    Ok(&s - s.detach() + r.loss)
}

/// Whether autograd records operations here (false inside `tch::no_grad`).
fn grad_enabled() -> bool {
    (Tensor::ones([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true) * 1.0)
        .requires_grad()
}

impl Objective for SeqObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        loss_for_strategy(self.net, self.train, Some(weights))
            .map_err(|e| SearchError::Objective(e.to_string()))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        loss_for_strategy(self.net, self.search, Some(weights))
            .map_err(|e| SearchError::Objective(e.to_string()))
    }

    fn search_loss_for_alphas(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        loss_for_alphas(self.net, self.search, weights)
            .map_err(|e| SearchError::Objective(e.to_string()))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.sgd.parameters()
    }

    /// No BatchNorm: nothing but the weights changes in a forward.
    fn buffers(&self) -> Vec<Tensor> {
        Vec::new()
    }

    fn virtual_step(&self) -> VirtualStep {
        let c = self.sgd.config;
        VirtualStep {
            lr: c.lr,
            momentum: c.momentum,
            weight_decay: c.weight_decay,
            momentum_buffers: self.sgd.momentum_buffers(),
        }
    }
}

/// [`SeqObjective`] with the plain forward in every network mode, for search health: its
/// eigenvalue takes Hessian-vector products by double backward, which the reversible and
/// checkpointed surrogates do not support. The plain forward computes the same function (the
/// modes differ in what the backward keeps), so the curvature is the mode's own; it keeps every
/// activation, which the one small health batch affords.
pub struct PlainLossObjective<'a>(pub SeqObjective<'a>);

impl Objective for PlainLossObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        self.0
            .net
            .plain_loss(self.0.train, Some(weights))
            .map_err(|e| SearchError::Objective(e.to_string()))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        self.0
            .net
            .plain_loss(self.0.search, Some(weights))
            .map_err(|e| SearchError::Objective(e.to_string()))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.0.parameters()
    }

    fn buffers(&self) -> Vec<Tensor> {
        self.0.buffers()
    }

    fn virtual_step(&self) -> VirtualStep {
        self.0.virtual_step()
    }
}
