//! The mixed op `G_k(h) = sum_o w_o * o(h)` of one split (DARTS's continuous relaxation,
//! Liu et al. 2019, over the transformer ops of Zhao et al. 2021), or a single fixed op for a
//! derived architecture.

use tch::{nn, Tensor};

use super::ops::{OpConfig, OpContext, SeqOp};
use super::TransformerError;
use crate::nas::{OpKind, OpWeights};

/// The candidate ops of one split.
#[derive(Debug)]
pub struct MixedSeqOp {
    ops: Vec<SeqOp>,
}

impl MixedSeqOp {
    /// One op per entry of `kinds`, under `p / <op name>`.
    pub fn new(p: &nn::Path, kinds: &[OpKind], config: OpConfig) -> Result<Self, TransformerError> {
        let ops = kinds
            .iter()
            .map(|&k| SeqOp::new(&(p / k.name()), k, config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ops })
    }

    pub fn kinds(&self) -> Vec<OpKind> {
        self.ops.iter().map(SeqOp::kind).collect()
    }

    /// `(op, trainable parameter count)` per candidate.
    pub fn op_sizes(&self) -> Vec<(OpKind, i64)> {
        self.ops
            .iter()
            .map(|o| {
                (
                    o.kind(),
                    o.parameters().iter().map(|t| t.numel() as i64).sum(),
                )
            })
            .collect()
    }

    /// Precision of the weights; `None` when no candidate has any (zero, identity).
    pub fn compute_kind(&self) -> Option<tch::Kind> {
        self.ops
            .iter()
            .find_map(|o| o.parameters().first().map(Tensor::kind))
    }

    /// Trainable tensors of every candidate, in op order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.ops.iter().flat_map(SeqOp::parameters).collect()
    }

    /// `sum_o w[edge, o] * o(h)` over the active ops of `edge` (all when dense); with no
    /// weights, the single op of a derived architecture. The zero op is skipped: its term is 0
    /// in value and in every derivative.
    ///
    /// # Shapes
    /// `h: [B, T, d]`, `weights: [num_edges, num_ops]` -> `[B, T, d]`
    pub fn forward(
        &self,
        h: &Tensor,
        weights: Option<(&OpWeights, usize)>,
        ctx: &OpContext<'_>,
    ) -> Result<Tensor, TransformerError> {
        let Some((w, edge)) = weights else {
            return match self.ops.as_slice() {
                [op] => op.forward(h, ctx),
                ops => Err(TransformerError::Config(format!(
                    "a split with {} candidate ops needs op weights",
                    ops.len()
                ))),
            };
        };
        let row = w.weights().get(edge as i64); // [num_ops]
        if row.size() != [self.ops.len() as i64] {
            return Err(TransformerError::Config(format!(
                "op weights row of shape {:?} for {} candidate ops",
                row.size(),
                self.ops.len()
            )));
        }
        let all: Vec<usize> = (0..self.ops.len()).collect();
        let active = w.active(edge).unwrap_or(&all);
        let mut out: Option<Tensor> = None;
        for &o in active {
            let op = &self.ops[o];
            if op.kind() == OpKind::None {
                continue;
            }
            let term = op.forward(h, ctx)? * row.get(o as i64);
            out = Some(match out {
                Some(acc) => acc + term,
                None => term,
            });
        }
        // Every active op was zero: the split adds nothing, but keep the weights in the graph
        // (a straight-through one-hot of `none` still has a gradient path, as in DARTS cells).
        Ok(out.unwrap_or_else(|| h.zeros_like() * row.sum(row.kind())))
    }
}
