//! Activation checkpointing of the plain network, one checkpoint per layer: the third memory
//! baseline next to plain autograd and the reversible backward of Zhao et al. 2021.
//!
//! This is what `torch.utils.checkpoint` does around each layer (Chen, Xu, Zhang and Guestrin
//! 2016, "Training Deep Nets with Sublinear Memory Cost", with one segment per layer): the
//! forward runs without graph and keeps only each layer's input `X`; the backward, from the
//! top layer down, recomputes the layer from detached leaf copies of its stored input with
//! autograd and backpropagates the output gradient, `(sum_k <Y_k, dY_k>)`, into the input, the
//! layer's weights, the op weights and the encoder output. It needs no inverse, so it works
//! for any layer, but it keeps one hidden state per layer (memory linear in depth, with a
//! slope of one `[B, T, D]` tensor instead of every op's activations), where the reversible
//! backward keeps none. The compute is the same: about one extra forward.

use tch::Tensor;

use super::reversible::{GradAccum, LayerInputs, RevLayer};
use super::TransformerError;

impl RevLayer {
    /// Backward of one layer from its stored input `x` and its output gradient `dy`: returns
    /// `dX` and adds the gradients of the split weights, of `inputs.weights` and of
    /// `inputs.memory` (leaves that require grad, when present) to `acc`.
    ///
    /// # Shapes
    /// `x, dy: n x [B, T, d]` -> `dx: n x [B, T, d]`
    pub fn backward_from_input(
        &self,
        x: Vec<Tensor>,
        dy: Vec<Tensor>,
        inputs: &LayerInputs<'_>,
        acc: &mut GradAccum,
    ) -> Result<Vec<Tensor>, TransformerError> {
        let leaves: Vec<Tensor> = x
            .iter()
            .map(|t| t.detach().set_requires_grad(true))
            .collect();
        drop(x);
        let y = self.forward(&leaves, inputs)?;
        let root = y
            .iter()
            .zip(&dy)
            .map(|(y, g)| (y * g).sum(y.kind()))
            .reduce(|a, b| a + b)
            .ok_or_else(|| TransformerError::Config("a layer without splits".into()))?;
        if !root.requires_grad() {
            return Err(TransformerError::Config(
                "the checkpointed backward ran without autograd (inside tch::no_grad?)".into(),
            ));
        }
        let mut targets: Vec<Tensor> = leaves.iter().map(Tensor::shallow_clone).collect();
        if !acc.skip_layer_weights {
            targets.extend(self.parameters());
        }
        targets.extend(inputs.grad_targets());
        // The leaves always require grad, so they are the first `leaves.len()` of `usable`.
        let usable: Vec<&Tensor> = targets.iter().filter(|t| t.requires_grad()).collect();
        let mut grads = Tensor::f_run_backward(&[&root], &usable, false, false)?.into_iter();
        let dx = leaves
            .iter()
            .map(|leaf| {
                // Y_k = X_k + G_k(...) reads every X_k, so each gradient is defined; an
                // undefined one would mean the input did not matter: zero.
                let g = grads.next().unwrap_or_else(Tensor::new);
                if g.defined() {
                    g
                } else {
                    leaf.zeros_like()
                }
            })
            .collect();
        for (t, g) in usable[leaves.len()..].iter().zip(grads) {
            acc.add(t, g);
        }
        Ok(dx)
    }
}
