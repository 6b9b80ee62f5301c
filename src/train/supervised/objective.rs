//! What the strategies see of the vision loop: the cross-entropy loss, the [`Objective`] over
//! a supernet and its train / search batches (DARTS's global-norm gradient clipping is the
//! agents' [`crate::agents::clip_grad_norm`]).

use tch::{nn, Kind, Tensor};

use crate::nas::{CellWeights, Supernet};
use crate::search::{Objective, SearchError, Sgd, VirtualStep};

/// Mean cross-entropy in the logits' own precision (tch's `cross_entropy_for_logits` computes
/// in f32, which the f64 gradient checks cannot use).
///
/// # Shapes
/// `logits: [N, K]`, `labels: [N]` -> `[]`
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, logits.kind()).nll_loss(labels)
}

/// How many rows of `logits` put their maximum on the label.
pub(super) fn correct(logits: &Tensor, labels: &Tensor) -> i64 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .sum(Kind::Int64)
        .int64_value(&[])
}

/// The vision loop as an [`Objective`]: a supernet, its weight store, the weight optimizer
/// (for the virtual step) and the current train / search batches.
pub struct VisionObjective<'a> {
    pub net: &'a dyn Supernet,
    pub vs: &'a nn::VarStore,
    pub sgd: &'a Sgd,
    /// `([N, C, H, W], [N])`.
    pub train: (Tensor, Tensor),
    pub search: (Tensor, Tensor),
}

impl VisionObjective<'_> {
    fn loss(&self, batch: &(Tensor, Tensor), weights: &CellWeights) -> Tensor {
        cross_entropy(&self.net.forward_with(&batch.0, weights, true), &batch.1)
    }
}

impl Objective for VisionObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.train, weights))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.search, weights))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.sgd.parameters()
    }

    /// BatchNorm running statistics: every non-trainable variable, in name order.
    fn buffers(&self) -> Vec<Tensor> {
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
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

    /// The smaller of the two batches: they differ only at the epoch's last, partial train
    /// batch, whose pairs are the first `B` examples of each (the official loaders give equal
    /// batches and would fail on unequal ones).
    fn paired_examples(&self) -> Result<i64, SearchError> {
        Ok(self.train.0.size()[0].min(self.search.0.size()[0]))
    }

    fn per_example_losses(
        &mut self,
        weights: &CellWeights,
    ) -> Result<(Tensor, Tensor), SearchError> {
        let b = self.paired_examples()?;
        if weights.normal.examples() != Some(b) {
            return Err(SearchError::Invalid(format!(
                "per-example losses need op weights for {b} examples, got {:?}",
                weights.normal.weights().size()
            )));
        }
        let per_example = |batch: &(Tensor, Tensor)| {
            let (x, y) = (batch.0.narrow(0, 0, b), batch.1.narrow(0, 0, b));
            cross_entropy_per_example(&self.net.forward_with(&x, weights, true), &y)
        };
        Ok((per_example(&self.train), per_example(&self.search)))
    }
}

/// Cross-entropy of each example in the logits' own precision.
///
/// # Shapes
/// `logits: [N, K]`, `labels: [N]` -> `[N]`
pub fn cross_entropy_per_example(logits: &Tensor, labels: &Tensor) -> Tensor {
    -logits
        .log_softmax(-1, logits.kind())
        .gather(1, &labels.unsqueeze(1), false)
        .squeeze_dim(1)
}
