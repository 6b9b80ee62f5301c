//! The transformer supernet (or a derived transformer) of Zhao et al. 2021: token embeddings
//! with sinusoidal positions, a stack of reversible encoder layers (2 splits), optionally a
//! stack of reversible decoder layers (2 searchable splits + cross-attention), a final
//! LayerNorm and the output projection. Three ways to differentiate the same network:
//! [`Mode::Plain`] (ordinary autograd, every activation kept), [`Mode::Reversible`]
//! ([`SeqNet::reversible_grads`]: only the top outputs kept, inputs reconstructed going down)
//! and [`Mode::Checkpointed`] ([`SeqNet::checkpointed_grads`]: every layer's input kept, each
//! layer recomputed going down, as `torch.utils.checkpoint` around each layer does); the last
//! two are in [`grads`].

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::ops::OpConfig;
use super::reversible::{Combine, LayerInputs, RevLayer};
use super::TransformerError;
use crate::nas::{CellWeights, OpKind, OpSet, OpWeights};

mod grads;

/// How gradients of the network are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Ordinary autograd: activation memory grows with depth x ops.
    Plain,
    /// Backward by reconstruction (Zhao et al. 2021, Algorithm 1): activation memory flat in
    /// depth, about one extra forward of compute.
    #[default]
    Reversible,
    /// Activation checkpointing of the plain network, one checkpoint per layer (Chen et al.
    /// 2016; `torch.utils.checkpoint` around each layer): the forward keeps only each layer's
    /// input, the backward recomputes one layer at a time with autograd. Memory grows with
    /// depth by one hidden state per layer instead of every op's activations; about one extra
    /// forward of compute. The third memory baseline, and a check that the reversible saving
    /// is more than what recomputation alone buys.
    Checkpointed,
}

/// `[network]`: sizes of the supernet or derived transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqNetConfig {
    /// Hidden width `D`. The encoder splits it in 2 parts, the decoder in 3, so it must be a
    /// multiple of 6 with a decoder (2 without), and each split a multiple of `heads`.
    pub d_model: i64,
    /// Attention heads per op (and lightweight-convolution kernel heads).
    pub heads: i64,
    /// FFN hidden width as a multiple of the split width (transformer: 4).
    pub ffn_mult: i64,
    /// Reversible encoder layers.
    pub encoder_layers: usize,
    /// Reversible decoder layers; 0 for an encoder-only (per-position labelling) task.
    pub decoder_layers: usize,
    /// How `H_k` combines the parts it reads (paper: max).
    pub combine: Combine,
    /// All layers of a stack share one set of weights (used by the memory measurements, so
    /// that parameters do not grow with depth). Alphas are shared by all layers either way.
    pub tie_layers: bool,
    /// Gradient computation: `reversible` (default), `plain` or `checkpointed`.
    pub mode: Mode,
    /// Keep the residual stream (the layers' `X`, `Y`) in f64 while the ops compute in the
    /// weights' precision. The inverse then recomputes each `G_k` on bit-identical f32 inputs
    /// and subtracts in f64, so reconstruction does not drift with depth (24 f32 layers:
    /// relative error 2e-4 with an f32 stream). Costs one f64 copy of the top output in
    /// reversible mode; plain mode stores its residual activations in f64 too.
    pub residual_f64: bool,
}

impl Default for SeqNetConfig {
    fn default() -> Self {
        Self {
            d_model: 48,
            heads: 2,
            ffn_mult: 2,
            encoder_layers: 2,
            decoder_layers: 0,
            combine: Combine::Max,
            tie_layers: false,
            mode: Mode::Reversible,
            residual_f64: true,
        }
    }
}

/// Splits of an encoder layer (the paper's n = 2).
pub const ENCODER_SPLITS: usize = 2;
/// Splits of a decoder layer (the paper's n = 3; the last is cross-attention).
pub const DECODER_SPLITS: usize = 3;

/// Supernet (mixed ops on every searchable split) or a derived architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqArch {
    Supernet,
    /// The op of each searchable split: encoder `[split0, split1]`, decoder likewise.
    Derived {
        encoder: Vec<OpKind>,
        decoder: Vec<OpKind>,
    },
}

/// One batch of a sequence task.
#[derive(Debug)]
pub struct SeqBatch {
    /// `[B, S]` int64 source tokens.
    pub src: Tensor,
    /// `[B, T]` int64 decoder inputs (BOS + target without its last token); `None` for
    /// encoder-only tasks.
    pub tgt_in: Option<Tensor>,
    /// `[B, T]` (or `[B, S]`) int64 labels.
    pub labels: Tensor,
}

/// The reconstructed gradients of one loss evaluation.
#[derive(Debug)]
pub struct ReconstructedGrads {
    /// The loss value, `[]`, no graph.
    pub loss: Tensor,
    /// `(parameter, dL/dparameter)` for every parameter the loss reached.
    pub params: Vec<(Tensor, Tensor)>,
    /// `dL/d(op weights)`: encoder (normal) and decoder (reduce), when given and reached.
    pub op_weights: [Option<Tensor>; 2],
}

/// The network.
#[derive(Debug)]
pub struct SeqNet {
    pub config: SeqNetConfig,
    src_emb: Tensor,
    tgt_emb: Option<Tensor>,
    encoder: Vec<RevLayer>,
    decoder: Vec<RevLayer>,
    enc_norm: nn::LayerNorm,
    dec_norm: Option<nn::LayerNorm>,
    head: nn::Linear,
}

/// Sinusoidal positions (Vaswani et al. 2017), `[T, D]` in `kind`.
fn positions(t: i64, d: i64, kind: Kind, device: tch::Device) -> Tensor {
    let pos = Tensor::arange(t, (Kind::Double, device)).unsqueeze(1); // [T, 1]
    let i = Tensor::arange(d, (Kind::Double, device)); // [D]
    let even = i.divide_scalar_mode(2.0, "floor") * 2.0;
    let angle = pos * (even * (-(10000f64.ln()) / d as f64)).exp().unsqueeze(0); // [T, D]
    let odd = i.remainder(2.0).eq(1.0).unsqueeze(0);
    angle
        .sin()
        .where_self(&odd.logical_not(), &angle.cos())
        .to_kind(kind)
}

fn linear_params(l: &nn::Linear) -> Vec<Tensor> {
    let mut out = vec![l.ws.shallow_clone()];
    out.extend(l.bs.as_ref().map(Tensor::shallow_clone));
    out
}

fn norm_params(n: &nn::LayerNorm) -> Vec<Tensor> {
    n.ws.iter()
        .chain(n.bs.iter())
        .map(Tensor::shallow_clone)
        .collect()
}

/// A leaf copy of op weights (same active lists) that collects their gradient.
fn leaf_weights(w: &OpWeights) -> Result<OpWeights, TransformerError> {
    let leaf = w.weights().detach().set_requires_grad(true);
    let rows = w.weights().size()[0] as usize;
    Ok(match w.active(0) {
        None => OpWeights::dense(leaf),
        Some(_) => OpWeights::sparse(
            leaf,
            (0..rows)
                .map(|e| w.active(e).map(<[usize]>::to_vec).unwrap_or_default())
                .collect(),
        )?,
    })
}

impl SeqNet {
    /// Builds the network under `p`; `tgt_vocab` is the output vocabulary (and the decoder's
    /// input vocabulary when `config.decoder_layers > 0`).
    pub fn new(
        p: &nn::Path,
        config: &SeqNetConfig,
        src_vocab: i64,
        tgt_vocab: i64,
        arch: &SeqArch,
    ) -> Result<Self, TransformerError> {
        let c = config;
        let seq2seq = c.decoder_layers > 0;
        let multiple = if seq2seq { 6 } else { 2 };
        if c.d_model <= 0 || c.d_model % multiple != 0 || c.encoder_layers == 0 {
            return Err(TransformerError::Config(format!(
                "network.d_model = {} must be a positive multiple of {multiple} (the encoder \
                 splits it in {ENCODER_SPLITS}{}) and encoder_layers ({}) at least 1",
                c.d_model,
                if seq2seq { ", the decoder in 3" } else { "" },
                c.encoder_layers
            )));
        }
        if c.ffn_mult <= 0 {
            return Err(TransformerError::Config(
                "network.ffn_mult must be at least 1".into(),
            ));
        }
        let op_config = |splits: usize, causal: bool| OpConfig {
            d: c.d_model / splits as i64,
            d_memory: c.d_model,
            heads: c.heads,
            ffn_mult: c.ffn_mult,
            causal,
        };
        let candidates = OpSet::Transformer.ops();
        let layer = |p: nn::Path, decoder: bool| -> Result<RevLayer, TransformerError> {
            let splits = if decoder {
                DECODER_SPLITS
            } else {
                ENCODER_SPLITS
            };
            let oc = op_config(splits, decoder);
            match arch {
                SeqArch::Supernet => RevLayer::search(&p, candidates, 2, decoder, oc, c.combine),
                SeqArch::Derived {
                    encoder,
                    decoder: dec,
                } => {
                    let ops = if decoder { dec } else { encoder };
                    if ops.len() != 2 {
                        return Err(TransformerError::Config(format!(
                            "a derived layer needs one op per searchable split (2), got {ops:?}"
                        )));
                    }
                    RevLayer::fixed(&p, ops, decoder, oc, c.combine)
                }
            }
        };
        let built = |n: usize| if c.tie_layers { n.min(1) } else { n };
        let encoder = (0..built(c.encoder_layers))
            .map(|i| layer(p / "encoder" / i, false))
            .collect::<Result<Vec<_>, _>>()?;
        let decoder = (0..built(c.decoder_layers))
            .map(|i| layer(p / "decoder" / i, true))
            .collect::<Result<Vec<_>, _>>()?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: (c.d_model as f64).powf(-0.5),
        };
        let d = c.d_model;
        Ok(Self {
            config: c.clone(),
            src_emb: p.var("src_embedding", &[src_vocab, d], init),
            tgt_emb: seq2seq.then(|| p.var("tgt_embedding", &[tgt_vocab, d], init)),
            encoder,
            decoder,
            enc_norm: nn::layer_norm(p / "encoder_norm", vec![d], Default::default()),
            dec_norm: seq2seq
                .then(|| nn::layer_norm(p / "decoder_norm", vec![d], Default::default())),
            head: nn::linear(p / "head", d, tgt_vocab, Default::default()),
        })
    }

    pub fn is_seq2seq(&self) -> bool {
        self.tgt_emb.is_some()
    }

    fn enc_layer(&self, i: usize) -> &RevLayer {
        &self.encoder[if self.config.tie_layers { 0 } else { i }]
    }

    fn dec_layer(&self, i: usize) -> &RevLayer {
        &self.decoder[if self.config.tie_layers { 0 } else { i }]
    }

    /// For op costs: per searchable split of the first layer of a stack, `(op, parameters)`,
    /// with the split width and the stack's depth.
    pub fn searchable_ops(&self, decoder: bool) -> (Vec<Vec<(OpKind, i64)>>, i64, usize) {
        let (layers, n, depth) = if decoder {
            (&self.decoder, DECODER_SPLITS, self.config.decoder_layers)
        } else {
            (&self.encoder, ENCODER_SPLITS, self.config.encoder_layers)
        };
        let ops = layers
            .first()
            .map(|l| {
                l.splits
                    .iter()
                    .filter(|s| s.edge.is_some())
                    .map(|s| s.op.op_sizes())
                    .collect()
            })
            .unwrap_or_default();
        (ops, self.config.d_model / n as i64, depth)
    }

    /// Every trainable tensor, in a fixed order (shared layers once).
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut out = vec![self.src_emb.shallow_clone()];
        out.extend(self.tgt_emb.iter().map(Tensor::shallow_clone));
        for l in self.encoder.iter().chain(&self.decoder) {
            out.extend(l.parameters());
        }
        out.extend(norm_params(&self.enc_norm));
        out.extend(self.dec_norm.iter().flat_map(norm_params));
        out.extend(linear_params(&self.head));
        out
    }

    /// `emb[tokens] * sqrt(D) + positions`.
    ///
    /// # Shapes
    /// `tokens: [B, T]` -> `[B, T, D]`
    fn embed(&self, emb: &Tensor, tokens: &Tensor) -> Tensor {
        let t = tokens.size()[1];
        let x =
            Tensor::embedding(emb, tokens, -1, false, false) * (self.config.d_model as f64).sqrt();
        x + positions(t, self.config.d_model, emb.kind(), emb.device())
    }

    fn split(x: &Tensor, n: usize) -> Vec<Tensor> {
        x.chunk(n as i64, -1)
    }

    /// Runs a stack; with `saved`, pushes each layer's input onto it (checkpointed mode: under
    /// `no_grad` these are the only activations that survive the forward).
    fn stack(
        &self,
        x: Tensor,
        decoder: bool,
        inputs: &LayerInputs<'_>,
        mut saved: Option<&mut Vec<Vec<Tensor>>>,
    ) -> Result<Tensor, TransformerError> {
        let (n, depth) = if decoder {
            (DECODER_SPLITS, self.config.decoder_layers)
        } else {
            (ENCODER_SPLITS, self.config.encoder_layers)
        };
        let mut parts = Self::split(&x.to_kind(self.stream_kind()), n);
        for i in 0..depth {
            let layer = if decoder {
                self.dec_layer(i)
            } else {
                self.enc_layer(i)
            };
            if let Some(saved) = saved.as_deref_mut() {
                saved.push(parts.iter().map(Tensor::shallow_clone).collect());
            }
            parts = layer.forward(&parts, inputs)?;
        }
        Ok(Tensor::cat(&parts, -1))
    }

    /// Precision of the weights and of everything outside the residual stream.
    fn model_kind(&self) -> Kind {
        self.src_emb.kind()
    }

    /// Precision of the residual stream `X`, `Y` between the layers.
    fn stream_kind(&self) -> Kind {
        if self.config.residual_f64 {
            Kind::Double
        } else {
            self.model_kind()
        }
    }

    /// The encoder output after its final LayerNorm.
    ///
    /// # Shapes
    /// `src: [B, S]` -> `[B, S, D]`
    pub fn encode(
        &self,
        src: &Tensor,
        weights: Option<&CellWeights>,
    ) -> Result<Tensor, TransformerError> {
        let inputs = LayerInputs {
            weights: weights.map(|w| &w.normal),
            memory: None,
        };
        let top = self.stack(self.embed(&self.src_emb, src), false, &inputs, None)?;
        Ok(self.enc_norm.forward(&top.to_kind(self.model_kind())))
    }

    /// Logits of the decoder (or, encoder-only, of every source position), with graph.
    ///
    /// # Shapes
    /// `memory: [B, S, D]` (the output of [`SeqNet::encode`]), `tgt_in: [B, T]` ->
    /// `[B, T, V]`
    pub fn decode(
        &self,
        memory: &Tensor,
        tgt_in: Option<&Tensor>,
        weights: Option<&CellWeights>,
    ) -> Result<Tensor, TransformerError> {
        let (Some(emb), Some(norm), Some(tgt_in)) = (&self.tgt_emb, &self.dec_norm, tgt_in) else {
            if self.is_seq2seq() {
                return Err(TransformerError::Config(
                    "a sequence-to-sequence network needs decoder inputs".into(),
                ));
            }
            return Ok(self.head.forward(memory));
        };
        let dec_w = match weights {
            Some(w) => Some(w.reduce.as_ref().ok_or_else(|| {
                TransformerError::Config("decoder op weights (reduce) missing".into())
            })?),
            None => None,
        };
        let inputs = LayerInputs {
            weights: dec_w,
            memory: Some(memory),
        };
        let top = self.stack(self.embed(emb, tgt_in), true, &inputs, None)?;
        Ok(self
            .head
            .forward(&norm.forward(&top.to_kind(self.model_kind()))))
    }

    /// Plain forward, with graph: `[B, T, V]`.
    pub fn forward(
        &self,
        batch: &SeqBatch,
        weights: Option<&CellWeights>,
    ) -> Result<Tensor, TransformerError> {
        let memory = self.encode(&batch.src, weights)?;
        self.decode(&memory, batch.tgt_in.as_ref(), weights)
    }

    /// Mean token cross-entropy with graph (plain autograd).
    pub fn plain_loss(
        &self,
        batch: &SeqBatch,
        weights: Option<&CellWeights>,
    ) -> Result<Tensor, TransformerError> {
        let logits = self.forward(batch, weights)?;
        Ok(token_loss(&logits, &batch.labels))
    }
}

/// Mean cross-entropy over every position.
///
/// # Shapes
/// `logits: [B, T, V]`, `labels: [B, T]` -> `[]`
pub fn token_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let v = logits.size()[2];
    crate::train::supervised::cross_entropy(&logits.view([-1, v]), &labels.view([-1]))
}
