//! The candidate sequence ops of the transformer search space (Zhao et al. 2021, section 3.2):
//! zero, identity, multi-head self-attention (causal in the decoder), cross-attention,
//! 1-D convolutions of width 3/5/7/11 (left-padded in the decoder), a lightweight convolution
//! (Wu et al. 2019), GLU and FFN. Every op but zero and identity is wrapped as
//! `LayerNorm(x + op(x))`, as the paper does.
//!
//! Departures: attention ops read a LayerNorm of their input, `LN(x + attn(LN_in(x)))`, as
//! the reversible transformers Reformer and RevViT do: the hidden state of a reversible stack
//! is never normalised and grows with depth, and raw attention logits then saturate the
//! softmax, whose steep Jacobian amplified the rounding of the reconstruction (24 layers in
//! f32: relative error 7e-3 with attention alone, against 2e-5 for every other op). The
//! paper's dynamic convolutions of widths 3, 7, 11, 15 are one lightweight
//! convolution of width 7 here (CPU budget); the lightweight form is the dynamic one with
//! input-independent kernels.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::TransformerError;
use crate::agents::compute;
use crate::nas::OpKind;

/// Where an op sits: split width, attention heads, FFN width, and whether it is in the
/// decoder (causal attention, left-padded convolutions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpConfig {
    /// Width of the split the op reads and writes (`d`).
    pub d: i64,
    /// Width of the encoder output cross-attention reads.
    pub d_memory: i64,
    /// Attention heads (and lightweight-convolution kernel heads); must divide `d`.
    pub heads: i64,
    /// FFN hidden width = `ffn_mult * d` (the paper's transformer: 4).
    pub ffn_mult: i64,
    /// Decoder: no op may look at later positions.
    pub causal: bool,
}

/// What an op reads besides its input: the encoder output, for cross-attention.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpContext<'a> {
    /// `[B, S, d_memory]`.
    pub memory: Option<&'a Tensor>,
}

#[derive(Debug)]
enum Body {
    Zero,
    Identity,
    SelfAttention {
        qkv: nn::Linear,
        out: nn::Linear,
    },
    CrossAttention {
        q: nn::Linear,
        kv: nn::Linear,
        out: nn::Linear,
    },
    Conv {
        conv: nn::Conv1D,
        width: i64,
    },
    LightConv {
        input: nn::Linear,
        /// `[heads, width]`, softmax-normalised over the width at every use.
        kernel: Tensor,
        out: nn::Linear,
        width: i64,
    },
    Glu {
        proj: nn::Linear,
    },
    Ffn {
        up: nn::Linear,
        down: nn::Linear,
    },
}

/// One candidate op with its weights.
#[derive(Debug)]
pub struct SeqOp {
    kind: OpKind,
    body: Body,
    /// `LayerNorm(x + op(x))`; absent for zero and identity.
    norm: Option<nn::LayerNorm>,
    /// Attention only: queries, keys and values read `LayerNorm(x)` (see the module docs).
    input_norm: Option<nn::LayerNorm>,
    config: OpConfig,
}

fn linear_params(l: &nn::Linear) -> Vec<Tensor> {
    let mut out = vec![l.ws.shallow_clone()];
    out.extend(l.bs.as_ref().map(Tensor::shallow_clone));
    out
}

fn cat<const N: usize>(parts: [Vec<Tensor>; N]) -> Vec<Tensor> {
    parts.into_iter().flatten().collect()
}

/// Scaled dot-product attention over `heads` heads.
///
/// # Shapes
/// `q: [B, Tq, d]`, `k, v: [B, Tk, d]` -> `[B, Tq, d]`
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let (b, tq, d) = (q.size()[0], q.size()[1], q.size()[2]);
    let tk = k.size()[1];
    let dh = d / heads;
    let split = |t: &Tensor, len: i64| t.view([b, len, heads, dh]).transpose(1, 2);
    let (q, k, v) = (split(q, tq), split(k, tk), split(v, tk)); // [B, h, T, dh]
    let mut scores = compute::matmul(&q, &k.transpose(-2, -1)) / (dh as f64).sqrt(); // [B, h, Tq, Tk]
    if causal {
        let mask = Tensor::ones([tq, tk], (Kind::Bool, q.device())).triu(1);
        scores = scores.masked_fill(&mask, f64::NEG_INFINITY);
    }
    // The softmax in the input's precision, the products in the run's (agents::compute).
    compute::matmul(&scores.softmax(-1, q.kind()), &v)
        .transpose(1, 2)
        .contiguous()
        .view([b, tq, d])
}

/// Pads the time axis of `[B, d, T]` so that a width-`w` convolution keeps length `T`:
/// `w - 1` on the left in the decoder (no look-ahead), centred in the encoder.
fn pad_time(x: &Tensor, width: i64, causal: bool) -> Tensor {
    if causal {
        x.constant_pad_nd([width - 1, 0])
    } else {
        x.constant_pad_nd([(width - 1) / 2, width / 2])
    }
}

impl SeqOp {
    /// Builds `kind` under `p`. Errors for ops outside the transformer space and for widths the
    /// heads do not divide.
    pub fn new(p: &nn::Path, kind: OpKind, config: OpConfig) -> Result<Self, TransformerError> {
        let OpConfig {
            d,
            d_memory,
            heads,
            ffn_mult,
            ..
        } = config;
        if d <= 0 || heads <= 0 || d % heads != 0 {
            return Err(TransformerError::Config(format!(
                "split width {d} must be a positive multiple of the {heads} heads; change \
                 network.d_model or network.heads"
            )));
        }
        let lin = |name: &str, i: i64, o: i64| nn::linear(p / name, i, o, Default::default());
        let body = match kind {
            OpKind::None => Body::Zero,
            OpKind::SkipConnect => Body::Identity,
            OpKind::SelfAttention => Body::SelfAttention {
                qkv: lin("qkv", d, 3 * d),
                out: lin("out", d, d),
            },
            OpKind::CrossAttention => Body::CrossAttention {
                q: lin("q", d, d),
                kv: lin("kv", d_memory, 2 * d),
                out: lin("out", d, d),
            },
            OpKind::Conv1d3 | OpKind::Conv1d5 | OpKind::Conv1d7 | OpKind::Conv1d11 => {
                let width = match kind {
                    OpKind::Conv1d3 => 3,
                    OpKind::Conv1d5 => 5,
                    OpKind::Conv1d7 => 7,
                    _ => 11,
                };
                Body::Conv {
                    conv: nn::conv1d(p / "conv", d, d, width, Default::default()),
                    width,
                }
            }
            OpKind::LightConv7 => Body::LightConv {
                input: lin("input", d, 2 * d),
                kernel: p.var(
                    "kernel",
                    &[heads, 7],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.1,
                    },
                ),
                out: lin("out", d, d),
                width: 7,
            },
            OpKind::Glu => Body::Glu {
                proj: lin("proj", d, 2 * d),
            },
            OpKind::Ffn => Body::Ffn {
                up: lin("up", d, ffn_mult * d),
                down: lin("down", ffn_mult * d, d),
            },
            other => {
                return Err(TransformerError::Config(format!(
                    "op {other} is not a transformer op; the transformer space has: none, \
                     skip_connect, {}",
                    OpKind::TRANSFORMER.map(OpKind::name).join(", ")
                )))
            }
        };
        let norm = (!matches!(body, Body::Zero | Body::Identity))
            .then(|| nn::layer_norm(p / "norm", vec![d], Default::default()));
        let input_norm = matches!(
            body,
            Body::SelfAttention { .. } | Body::CrossAttention { .. }
        )
        .then(|| nn::layer_norm(p / "input_norm", vec![d], Default::default()));
        Ok(Self {
            kind,
            body,
            norm,
            input_norm,
            config,
        })
    }

    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// Trainable tensors, in a fixed order.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut out = match &self.body {
            Body::Zero | Body::Identity => Vec::new(),
            Body::SelfAttention { qkv, out } => cat([linear_params(qkv), linear_params(out)]),
            Body::CrossAttention { q, kv, out } => {
                cat([linear_params(q), linear_params(kv), linear_params(out)])
            }
            Body::Conv { conv, .. } => {
                let mut v = vec![conv.ws.shallow_clone()];
                v.extend(conv.bs.as_ref().map(Tensor::shallow_clone));
                v
            }
            Body::LightConv {
                input, kernel, out, ..
            } => cat([
                linear_params(input),
                vec![kernel.shallow_clone()],
                linear_params(out),
            ]),
            Body::Glu { proj } => linear_params(proj),
            Body::Ffn { up, down } => cat([linear_params(up), linear_params(down)]),
        };
        for n in self.input_norm.iter().chain(&self.norm) {
            out.extend(n.ws.as_ref().map(Tensor::shallow_clone));
            out.extend(n.bs.as_ref().map(Tensor::shallow_clone));
        }
        out
    }

    fn normed_input(&self, x: &Tensor) -> Tensor {
        match &self.input_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        }
    }

    /// The op, wrapped as `LayerNorm(x + op(x))` unless it is zero or identity.
    ///
    /// # Shapes
    /// `x: [B, T, d]` -> `[B, T, d]`; `ctx.memory: [B, S, d_memory]` for cross-attention.
    pub fn forward(&self, x: &Tensor, ctx: &OpContext<'_>) -> Result<Tensor, TransformerError> {
        let causal = self.config.causal;
        let heads = self.config.heads;
        let y = match &self.body {
            Body::Zero => return Ok(x.zeros_like()),
            Body::Identity => return Ok(x.shallow_clone()),
            Body::SelfAttention { qkv, out } => {
                let parts = compute::linear_layer(qkv, &self.normed_input(x)).chunk(3, -1);
                compute::linear_layer(
                    out,
                    &attention(&parts[0], &parts[1], &parts[2], heads, causal),
                )
            }
            Body::CrossAttention { q, kv, out } => {
                let memory = ctx.memory.ok_or_else(|| {
                    TransformerError::Config(
                        "cross_attention needs the encoder output; it exists only in the decoder \
                         of a sequence-to-sequence task"
                            .into(),
                    )
                })?;
                let parts = compute::linear_layer(kv, memory).chunk(2, -1);
                let q = compute::linear_layer(q, &self.normed_input(x));
                compute::linear_layer(out, &attention(&q, &parts[0], &parts[1], heads, false))
            }
            Body::Conv { conv, width } => {
                let t = pad_time(&x.transpose(1, 2), *width, causal); // [B, d, T + w - 1]
                conv.forward(&t).relu().transpose(1, 2)
            }
            Body::LightConv {
                input,
                kernel,
                out,
                width,
            } => {
                let d = self.config.d;
                let h = compute::linear_layer(input, x).glu(-1).transpose(1, 2); // [B, d, T]
                                                                                 // Each head's normalised kernel serves its d / heads consecutive channels.
                let k = kernel
                    .softmax(-1, kernel.kind())
                    .repeat_interleave_self_int(d / heads, 0, None::<i64>)
                    .unsqueeze(1); // [d, 1, w]
                let y = pad_time(&h, *width, causal).conv1d(&k, None::<Tensor>, [1], [0], [1], d);
                compute::linear_layer(out, &y.transpose(1, 2))
            }
            Body::Glu { proj } => compute::linear_layer(proj, x).glu(-1),
            Body::Ffn { up, down } => {
                compute::linear_layer(down, &compute::linear_layer(up, x).relu())
            }
        };
        Ok(match &self.norm {
            Some(n) => n.forward(&(x + y)),
            None => x + y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn config(causal: bool) -> OpConfig {
        OpConfig {
            d: 8,
            d_memory: 12,
            heads: 2,
            ffn_mult: 2,
            causal,
        }
    }

    /// Every op keeps the shape, and in the decoder no output position depends on a later
    /// input position (changing the last input leaves every earlier output unchanged).
    #[test]
    fn transformer_ops_keep_shape_and_decoder_ops_are_causal() {
        tch::manual_seed(0);
        let memory = Tensor::randn([2, 5, 12], (Kind::Double, Device::Cpu));
        let ctx = OpContext {
            memory: Some(&memory),
        };
        let kinds = [OpKind::None, OpKind::SkipConnect]
            .into_iter()
            .chain(OpKind::TRANSFORMER);
        for kind in kinds {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let op = SeqOp::new(&(vs.root() / kind.name()), kind, config(true)).unwrap();
            vs.double();
            let x = Tensor::randn([2, 6, 8], (Kind::Double, Device::Cpu));
            let y = op.forward(&x, &ctx).unwrap();
            assert_eq!(y.size(), [2, 6, 8], "{kind}");
            let x2 = x.copy();
            let _ = x2.narrow(1, 5, 1).fill_(3.0);
            let y2 = op.forward(&x2, &ctx).unwrap();
            let diff = (y.narrow(1, 0, 5) - y2.narrow(1, 0, 5))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-12, "{kind} looks ahead: {diff}");
            let n: usize = op.parameters().iter().map(|t| t.numel()).sum();
            assert_eq!(
                n as i64,
                vs.trainable_variables()
                    .iter()
                    .map(|t| t.numel() as i64)
                    .sum::<i64>(),
                "{kind}"
            );
        }
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(SeqOp::new(&vs.root(), OpKind::SepConv3x3, config(false)).is_err());
    }
}
