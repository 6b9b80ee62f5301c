//! The multi-split reversible layer of Zhao et al. 2021 (section 3.1 and Algorithm 1) and its
//! backward pass by reconstruction.
//!
//! Forward, `k = 1..n`: `Y_k = X_k + G_k(H_k)`, `H_k = combine(Y_1..Y_{k-1}, X_{k+1}..X_n)`
//! (element-wise max, or mean). Inverse, `k = n..1`: `X_k = Y_k - G_k(H_k)`, where `H_k` reads
//! only outputs `Y_{i<k}` (known) and inputs `X_{i>k}` (already reconstructed).
//!
//! Backward ([`RevLayer::backward`]), `k = n..1`: from detached leaf copies of `H_k`'s inputs,
//! recompute `g_k = G_k(H_k)` with autograd, backpropagate `(g_k * dY_k).sum()` into those
//! leaves, the split's weights, the op weights and the encoder output (cross-attention), then
//! `X_k = Y_k - g_k` and `dX_k += dY_k`. `dY_k` is complete when split `k` is reached: every
//! later split that read `Y_k` has already sent its share back. tch has no custom autograd
//! Function, so gradients are collected with `Tensor::run_backward` and accumulated in a
//! [`GradAccum`]; nothing is written into `.grad`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::mixed::MixedSeqOp;
use super::ops::{OpConfig, OpContext};
use super::TransformerError;
use crate::nas::{OpKind, OpWeights};

/// How `H_k` combines the parts it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Element-wise max (the paper's choice).
    #[default]
    Max,
    /// Element-wise mean (slightly worse in the paper).
    Mean,
}

impl Combine {
    fn apply(self, parts: &[Tensor]) -> Tensor {
        let mut acc = parts[0].shallow_clone();
        for p in &parts[1..] {
            acc = match self {
                Combine::Max => acc.maximum(p),
                Combine::Mean => acc + p,
            };
        }
        match self {
            Combine::Mean if parts.len() > 1 => acc / parts.len() as f64,
            _ => acc,
        }
    }
}

/// Gradients keyed by the storage of the tensor they belong to (weights, op-weight leaves,
/// the encoder-output leaf), summed over every use.
#[derive(Debug, Default)]
pub struct GradAccum {
    grads: HashMap<usize, Tensor>,
    /// The caller wants the op weights' (and the encoder output's) gradients only: the layers
    /// leave their weights out of each backward, so autograd skips the weight-gradient
    /// products (what a plain `grad(loss, alphas)` skips too).
    pub skip_layer_weights: bool,
}

impl GradAccum {
    fn key(t: &Tensor) -> usize {
        t.data_ptr() as usize
    }

    /// Adds `grad` to `of`'s gradient; an undefined `grad` (unused input) adds nothing.
    pub fn add(&mut self, of: &Tensor, grad: Tensor) {
        if !grad.defined() {
            return;
        }
        match self.grads.get_mut(&Self::key(of)) {
            Some(acc) => *acc += grad,
            None => {
                self.grads.insert(Self::key(of), grad);
            }
        }
    }

    /// `of`'s accumulated gradient, if anything reached it.
    pub fn get(&self, of: &Tensor) -> Option<&Tensor> {
        self.grads.get(&Self::key(of))
    }

    /// Removes and returns `of`'s gradient.
    pub fn take(&mut self, of: &Tensor) -> Option<Tensor> {
        self.grads.remove(&Self::key(of))
    }

    /// Backpropagates `root` (a scalar) into `inputs` and adds each gradient.
    pub fn backprop(&mut self, root: &Tensor, inputs: &[Tensor]) {
        let inputs: Vec<&Tensor> = inputs.iter().filter(|t| t.requires_grad()).collect();
        // A root without graph (nothing it depends on requires grad) has no gradient; libtorch
        // must not be asked to backpropagate it.
        if inputs.is_empty() || !root.requires_grad() {
            return;
        }
        let grads = Tensor::run_backward(&[root], &inputs, false, false);
        for (t, g) in inputs.into_iter().zip(grads) {
            self.add(t, g);
        }
    }
}

/// What one split computes: a mixed op reading edge `edge` of the op weights, or a fixed op.
#[derive(Debug)]
pub struct Split {
    pub op: MixedSeqOp,
    /// Row of the op-weight matrix; `None` for a fixed op (the decoder's cross-attention, or a
    /// derived architecture).
    pub edge: Option<usize>,
}

/// One reversible layer of `n` splits.
#[derive(Debug)]
pub struct RevLayer {
    pub splits: Vec<Split>,
    pub combine: Combine,
}

/// The layer's inputs besides its hidden state.
#[derive(Debug, Clone, Copy)]
pub struct LayerInputs<'a> {
    /// `[num_searchable_splits, num_ops]` for a supernet; `None` for a derived network.
    pub weights: Option<&'a OpWeights>,
    /// `[B, S, d_memory]`, the encoder output (decoder only).
    pub memory: Option<&'a Tensor>,
}

impl LayerInputs<'_> {
    /// The inputs a layer's backward also differentiates: the op weights and the encoder
    /// output, when present.
    pub(super) fn grad_targets(&self) -> Vec<Tensor> {
        self.weights
            .map(|w| w.weights().shallow_clone())
            .into_iter()
            .chain(self.memory.map(Tensor::shallow_clone))
            .collect()
    }
}

impl RevLayer {
    /// A supernet layer: `searchable` mixed splits over `candidates` (edge `k` for split `k`),
    /// then, for the decoder, a fixed cross-attention split.
    pub fn search(
        p: &nn::Path,
        candidates: &[OpKind],
        searchable: usize,
        cross_attention: bool,
        config: OpConfig,
        combine: Combine,
    ) -> Result<Self, TransformerError> {
        let choices = vec![candidates.to_vec(); searchable];
        Self::build(p, &choices, true, cross_attention, config, combine)
    }

    /// A derived layer: split `k` runs `ops[k]` alone, then the fixed cross-attention split.
    pub fn fixed(
        p: &nn::Path,
        ops: &[OpKind],
        cross_attention: bool,
        config: OpConfig,
        combine: Combine,
    ) -> Result<Self, TransformerError> {
        let choices: Vec<Vec<OpKind>> = ops.iter().map(|&k| vec![k]).collect();
        Self::build(p, &choices, false, cross_attention, config, combine)
    }

    fn build(
        p: &nn::Path,
        choices: &[Vec<OpKind>],
        mixed: bool,
        cross_attention: bool,
        config: OpConfig,
        combine: Combine,
    ) -> Result<Self, TransformerError> {
        let mut splits = Vec::new();
        for (k, kinds) in choices.iter().enumerate() {
            splits.push(Split {
                op: MixedSeqOp::new(&(p / format!("split{k}")), kinds, config)?,
                edge: mixed.then_some(k),
            });
        }
        if cross_attention {
            let k = splits.len();
            splits.push(Split {
                op: MixedSeqOp::new(
                    &(p / format!("split{k}")),
                    &[OpKind::CrossAttention],
                    config,
                )?,
                edge: None,
            });
        }
        if splits.len() < 2 {
            return Err(TransformerError::Config(format!(
                "a reversible layer needs at least 2 splits, got {}",
                splits.len()
            )));
        }
        Ok(Self { splits, combine })
    }

    pub fn num_splits(&self) -> usize {
        self.splits.len()
    }

    /// Trainable tensors, split by split.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.splits.iter().flat_map(|s| s.op.parameters()).collect()
    }

    /// `G_k(H_k)`.
    fn g(
        &self,
        k: usize,
        h: &Tensor,
        inputs: &LayerInputs<'_>,
    ) -> Result<Tensor, TransformerError> {
        let split = &self.splits[k];
        let weights = match (split.edge, inputs.weights) {
            (Some(edge), Some(w)) => Some((w, edge)),
            (Some(_), None) => {
                return Err(TransformerError::Config(
                    "a supernet layer needs op weights".into(),
                ))
            }
            (None, _) => None,
        };
        let ctx = OpContext {
            memory: inputs.memory,
        };
        // The ops compute in their weights' precision; the stream may be wider (f64).
        let kind = split.op.compute_kind().unwrap_or(h.kind());
        Ok(split
            .op
            .forward(&h.to_kind(kind), weights, &ctx)?
            .to_kind(h.kind()))
    }

    /// The parts `H_k` reads: `Y_{i<k}` then `X_{i>k}`.
    fn h_inputs(k: usize, y: &[Tensor], x: &[Tensor]) -> Vec<Tensor> {
        y[..k]
            .iter()
            .chain(&x[k + 1..])
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// `Y_k = X_k + G_k(H_k)`, `k = 1..n`.
    ///
    /// # Shapes
    /// `x: n x [B, T, d]` -> `n x [B, T, d]`
    pub fn forward(
        &self,
        x: &[Tensor],
        inputs: &LayerInputs<'_>,
    ) -> Result<Vec<Tensor>, TransformerError> {
        let mut y: Vec<Tensor> = Vec::with_capacity(x.len());
        for k in 0..x.len() {
            let h = self.combine.apply(&Self::h_inputs(k, &y, x));
            y.push(&x[k] + self.g(k, &h, inputs)?);
        }
        Ok(y)
    }

    /// `X_k = Y_k - G_k(H_k)`, `k = n..1`.
    ///
    /// # Shapes
    /// `y: n x [B, T, d]` -> `n x [B, T, d]`
    pub fn inverse(
        &self,
        y: &[Tensor],
        inputs: &LayerInputs<'_>,
    ) -> Result<Vec<Tensor>, TransformerError> {
        let n = y.len();
        // Placeholders for X_{i<=k}; only X_{i>k} is read at step k.
        let mut x: Vec<Tensor> = y.iter().map(Tensor::shallow_clone).collect();
        for k in (0..n).rev() {
            let h = self.combine.apply(&Self::h_inputs(k, y, &x));
            x[k] = &y[k] - self.g(k, &h, inputs)?;
        }
        Ok(x)
    }

    /// Algorithm 1 for one layer: from the outputs `y` (no graph) and their gradients `dy`,
    /// returns the reconstructed inputs and their gradients, and adds the gradients of the
    /// split weights, of `inputs.weights` and of `inputs.memory` (both must be leaves that
    /// require grad when present) to `acc`.
    ///
    /// # Shapes
    /// `y, dy: n x [B, T, d]` -> `(x, dx): n x [B, T, d]`
    pub fn backward(
        &self,
        y: Vec<Tensor>,
        mut dy: Vec<Tensor>,
        inputs: &LayerInputs<'_>,
        acc: &mut GradAccum,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), TransformerError> {
        let n = y.len();
        let mut x: Vec<Tensor> = y.iter().map(Tensor::shallow_clone).collect();
        let mut dx: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
        let extra = inputs.grad_targets();
        for k in (0..n).rev() {
            // Leaves for what H_k reads: Y_{i<k}, then X_{i>k}.
            let leaves: Vec<Tensor> = Self::h_inputs(k, &y, &x)
                .iter()
                .map(|t| t.detach().set_requires_grad(true))
                .collect();
            let g = self.g(k, &self.combine.apply(&leaves), inputs)?;
            let root = (&g * &dy[k]).sum(g.kind());
            let mut targets: Vec<Tensor> = leaves.iter().map(Tensor::shallow_clone).collect();
            if !acc.skip_layer_weights {
                targets.extend(self.splits[k].op.parameters());
            }
            targets.extend(extra.iter().map(Tensor::shallow_clone));
            let usable: Vec<&Tensor> = targets.iter().filter(|t| t.requires_grad()).collect();
            if !root.requires_grad() {
                return Err(TransformerError::Config(
                    "the reversible backward ran without autograd (inside tch::no_grad?)".into(),
                ));
            }
            let grads = Tensor::f_run_backward(&[&root], &usable, false, false)?;
            let mut grads = grads.into_iter();
            // H_k's inputs: the first k are Y_{i<k}, the rest X_{i>k}.
            for (j, _) in leaves.iter().enumerate() {
                let grad = grads.next().unwrap_or_else(Tensor::new);
                if !grad.defined() {
                    continue;
                }
                if j < k {
                    dy[j] += grad;
                } else {
                    let i = j + 1;
                    dx[i] = Some(match dx[i].take() {
                        Some(d) => d + grad,
                        None => grad,
                    });
                }
            }
            for (t, grad) in usable[leaves.len()..].iter().zip(grads) {
                acc.add(t, grad);
            }
            x[k] = &y[k] - g.detach();
            // Y_k = X_k + g_k: the identity path.
            dx[k] = Some(match dx[k].take() {
                Some(d) => d + &dy[k],
                None => dy[k].shallow_clone(),
            });
        }
        let dx = dx
            .into_iter()
            .map(|d| d.unwrap_or_else(Tensor::new))
            .collect();
        Ok((x, dx))
    }
}
