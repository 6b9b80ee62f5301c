//! [`SeqNet`]'s gradients by recomputation, without keeping the activations of the forward:
//! reversible (each layer's input reconstructed from its output by the inverse, Algorithm 1
//! of Zhao et al. 2021) or checkpointed (each layer's input stored and the layer recomputed).

use tch::nn::Module;
use tch::Tensor;

use super::{
    leaf_weights, linear_params, norm_params, token_loss, Mode, ReconstructedGrads, SeqBatch,
    SeqNet, DECODER_SPLITS, ENCODER_SPLITS,
};
use crate::nas::CellWeights;
use crate::transformer::reversible::{GradAccum, LayerInputs};
use crate::transformer::TransformerError;

impl SeqNet {
    /// Loss and every gradient by reconstruction (Algorithm 1): forward without graph keeping
    /// only each stack's top output (and the encoder output the decoder reads), then layer by
    /// layer from the top reconstruct the inputs and backpropagate. Nothing is written into
    /// `.grad`.
    pub fn reversible_grads(
        &self,
        batch: &SeqBatch,
        weights: Option<&CellWeights>,
    ) -> Result<ReconstructedGrads, TransformerError> {
        // The recomputations need autograd even when the caller disabled it.
        tch::with_grad(|| self.grads_by_recomputation(batch, weights, Backward::Reconstruct, true))
    }

    /// The loss and the gradient of the op weights only (reversible or checkpointed, as the
    /// mode says): the layers' weight gradients are not computed, which saves their products
    /// in the backward. `params` of the result holds at most the embeddings' and the output
    /// head's gradients; only `op_weights` is meant to be read.
    pub fn op_weight_grads(
        &self,
        batch: &SeqBatch,
        weights: &CellWeights,
    ) -> Result<ReconstructedGrads, TransformerError> {
        let how = match self.config.mode {
            Mode::Checkpointed => Backward::StoredInputs,
            _ => Backward::Reconstruct,
        };
        tch::with_grad(|| self.grads_by_recomputation(batch, Some(weights), how, false))
    }

    /// Loss and every gradient by per-layer activation checkpointing: forward without graph
    /// keeping each layer's input (and each stack's top output), then layer by layer from the
    /// top recompute the layer from its stored input with autograd and backpropagate. Same
    /// result as [`SeqNet::reversible_grads`]; nothing is written into `.grad`.
    pub fn checkpointed_grads(
        &self,
        batch: &SeqBatch,
        weights: Option<&CellWeights>,
    ) -> Result<ReconstructedGrads, TransformerError> {
        tch::with_grad(|| self.grads_by_recomputation(batch, weights, Backward::StoredInputs, true))
    }

    /// The backward of [`SeqNet::reversible_grads`] or [`SeqNet::checkpointed_grads`]: the two
    /// differ only in where a layer's input comes from going down.
    fn grads_by_recomputation(
        &self,
        batch: &SeqBatch,
        weights: Option<&CellWeights>,
        how: Backward,
        layer_weights: bool,
    ) -> Result<ReconstructedGrads, TransformerError> {
        let keep_inputs = how == Backward::StoredInputs;
        let mut enc_saved = Vec::new();
        let mut dec_saved = Vec::new();
        let mut acc = GradAccum::default();
        acc.skip_layer_weights = !layer_weights;
        let enc_w = weights.map(|w| leaf_weights(&w.normal)).transpose()?;
        let dec_w = match (weights, self.is_seq2seq()) {
            (Some(w), true) => Some(leaf_weights(w.reduce.as_ref().ok_or_else(|| {
                TransformerError::Config("decoder op weights (reduce) missing".into())
            })?)?),
            _ => None,
        };
        let enc_inputs = LayerInputs {
            weights: enc_w.as_ref(),
            memory: None,
        };
        // Encoder forward, no graph: only its top output survives.
        let enc_top = tch::no_grad(|| {
            let x = self.embed(&self.src_emb, &batch.src);
            self.stack(x, false, &enc_inputs, keep_inputs.then_some(&mut enc_saved))
        })?;
        let enc_top_leaf = enc_top
            .to_kind(self.model_kind())
            .detach()
            .set_requires_grad(true);
        let memory = self.enc_norm.forward(&enc_top_leaf); // [B, S, D], with graph
        let mut enc_side = vec![enc_top_leaf.shallow_clone()];
        enc_side.extend(norm_params(&self.enc_norm));
        let loss = match (&self.tgt_emb, &self.dec_norm, &batch.tgt_in) {
            (Some(emb), Some(norm), Some(tgt_in)) => {
                let mem_leaf = memory.detach().set_requires_grad(true);
                let dec_inputs = LayerInputs {
                    weights: dec_w.as_ref(),
                    memory: Some(&mem_leaf),
                };
                // Decoder forward, no graph.
                let dec_top = tch::no_grad(|| {
                    let x = self.embed(emb, tgt_in);
                    self.stack(x, true, &dec_inputs, keep_inputs.then_some(&mut dec_saved))
                })?;
                let dec_top_leaf = dec_top
                    .to_kind(self.model_kind())
                    .detach()
                    .set_requires_grad(true);
                let logits = self.head.forward(&norm.forward(&dec_top_leaf));
                let loss = token_loss(&logits, &batch.labels);
                let mut head = vec![dec_top_leaf.shallow_clone()];
                head.extend(norm_params(norm));
                head.extend(linear_params(&self.head));
                acc.backprop(&loss, &head);
                let g_top = take(&mut acc, &dec_top_leaf, "decoder output")?;
                let saved = keep_inputs.then_some(std::mem::take(&mut dec_saved));
                let g_x0 =
                    self.reverse_stack(dec_top, g_top, true, &dec_inputs, &mut acc, saved)?;
                let embedded = self.embed(emb, tgt_in);
                acc.backprop(&(embedded * &g_x0).sum(g_x0.kind()), &[emb.shallow_clone()]);
                // What every cross-attention sent back to the encoder output.
                let g_mem = take(&mut acc, &mem_leaf, "encoder output")?;
                acc.backprop(&(&memory * g_mem).sum(memory.kind()), &enc_side);
                loss
            }
            _ => {
                let loss = token_loss(&self.head.forward(&memory), &batch.labels);
                enc_side.extend(linear_params(&self.head));
                acc.backprop(&loss, &enc_side);
                loss
            }
        };
        let g_top = take(&mut acc, &enc_top_leaf, "encoder top")?;
        let saved = keep_inputs.then_some(enc_saved);
        let g_x0 = self.reverse_stack(enc_top, g_top, false, &enc_inputs, &mut acc, saved)?;
        let embedded = self.embed(&self.src_emb, &batch.src);
        acc.backprop(
            &(embedded * &g_x0).sum(g_x0.kind()),
            &[self.src_emb.shallow_clone()],
        );
        let params = self
            .parameters()
            .into_iter()
            .filter_map(|p| acc.get(&p).map(|g| (p.shallow_clone(), g.shallow_clone())))
            .collect();
        let op_weights = [
            enc_w
                .as_ref()
                .and_then(|w| acc.get(w.weights()).map(Tensor::shallow_clone)),
            dec_w
                .as_ref()
                .and_then(|w| acc.get(w.weights()).map(Tensor::shallow_clone)),
        ];
        Ok(ReconstructedGrads {
            loss: loss.detach(),
            params,
            op_weights,
        })
    }

    /// Backward through a stack, by reconstruction, or from `saved` (each layer's input, bottom
    /// first) when given; returns the gradient of its input (the embedded tokens), `[B, T, D]`.
    fn reverse_stack(
        &self,
        top: Tensor,
        g_top: Tensor,
        decoder: bool,
        inputs: &LayerInputs<'_>,
        acc: &mut GradAccum,
        mut saved: Option<Vec<Vec<Tensor>>>,
    ) -> Result<Tensor, TransformerError> {
        let (n, depth) = if decoder {
            (DECODER_SPLITS, self.config.decoder_layers)
        } else {
            (ENCODER_SPLITS, self.config.encoder_layers)
        };
        let mut y = Self::split(&top, n);
        let mut dy = Self::split(&g_top.to_kind(self.stream_kind()), n);
        for i in (0..depth).rev() {
            let layer = if decoder {
                self.dec_layer(i)
            } else {
                self.enc_layer(i)
            };
            match saved.as_mut() {
                // Popping frees each stored input once its layer is done, as the backward of
                // `torch.utils.checkpoint` does.
                Some(saved) => {
                    let x = saved.pop().ok_or_else(|| {
                        TransformerError::Config("fewer stored layer inputs than layers".into())
                    })?;
                    dy = layer.backward_from_input(x, dy, inputs, acc)?;
                }
                None => (y, dy) = layer.backward(y, dy, inputs, acc)?,
            }
        }
        Ok(Tensor::cat(&dy, -1).to_kind(self.model_kind()))
    }
}

/// Where the backward of a layer gets the layer's input from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backward {
    /// Reconstructed from its output by the inverse (reversible mode).
    Reconstruct,
    /// Stored by the forward (checkpointed mode).
    StoredInputs,
}

/// `of`'s gradient, which the loss must have reached.
fn take(acc: &mut GradAccum, of: &Tensor, what: &str) -> Result<Tensor, TransformerError> {
    acc.take(of)
        .ok_or_else(|| TransformerError::Config(format!("the loss does not reach the {what}")))
}
