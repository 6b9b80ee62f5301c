//! Built ops: a plan's layers with their variables ([`Sequence`]), and one candidate op
//! ([`Op`]), run plainly or on a [`SharedInput`].

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::cost::{cost_of, OpCost};
use super::kernels::{
    avg_pool_3x3, max_pool_3x3, run_conv, torch_batch_norm2d, torch_conv2d, zeros_in_layout_of,
};
use super::plans::{plan, pooled, ConvGeom, LayerDesc, OpSpec};
use super::registry::OpKind;
use super::shared::SharedInput;
use crate::nas::error::NasError;

/// A built layer.
#[derive(Debug)]
enum Layer {
    Relu,
    Tanh,
    Conv {
        conv: nn::Conv2D,
        geom: ConvGeom,
    },
    BatchNorm(nn::BatchNorm),
    MaxPool {
        stride: i64,
    },
    AvgPool {
        stride: i64,
    },
    FactorizedConvs {
        conv_1: nn::Conv2D,
        conv_2: nn::Conv2D,
        /// Both halves' geometry but for `c_out`.
        geom: ConvGeom,
    },
    Zero {
        stride: i64,
        c_out: i64,
    },
}

impl Layer {
    fn build(p: &nn::Path, desc: &LayerDesc) -> Layer {
        match *desc {
            LayerDesc::Relu => Layer::Relu,
            LayerDesc::Tanh => Layer::Tanh,
            LayerDesc::Conv { name, geom } => Layer::Conv {
                conv: torch_conv2d(p / name, &geom),
                geom,
            },
            LayerDesc::BatchNorm {
                name,
                channels,
                affine,
            } => Layer::BatchNorm(torch_batch_norm2d(p / name, channels, affine)),
            LayerDesc::MaxPool { stride } => Layer::MaxPool { stride },
            LayerDesc::AvgPool { stride } => Layer::AvgPool { stride },
            LayerDesc::FactorizedConvs { c_in, c_out, bias } => {
                let half = |c| ConvGeom {
                    bias,
                    ..ConvGeom::new(c_in, c, 1, 2, 0)
                };
                Layer::FactorizedConvs {
                    conv_1: torch_conv2d(p / "conv_1", &half(c_out / 2)),
                    conv_2: torch_conv2d(p / "conv_2", &half(c_out - c_out / 2)),
                    geom: half(c_out / 2),
                }
            }
            LayerDesc::Zero { stride, c_out } => Layer::Zero { stride, c_out },
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Layer::Relu => x.relu(),
            Layer::Tanh => x.tanh(),
            Layer::Conv { conv, geom } => run_conv(conv, geom, x),
            Layer::BatchNorm(bn) => bn.forward_t(x, train),
            Layer::MaxPool { stride } => max_pool_3x3(x, *stride),
            Layer::AvgPool { stride } => avg_pool_3x3(x, *stride),
            Layer::FactorizedConvs {
                conv_1,
                conv_2,
                geom,
            } => {
                let (h, w) = (x.size()[2], x.size()[3]);
                // DARTS convolves x[:, :, 1:, 1:]; padding one zero row and column first
                // (NAS-Bench-201's variant) gives the identical result for even sizes and
                // matching shapes for odd ones, where DARTS's concat would fail.
                let shifted = x
                    .constant_pad_nd([0, 1, 0, 1])
                    .narrow(2, 1, h)
                    .narrow(3, 1, w);
                Tensor::cat(
                    &[run_conv(conv_1, geom, x), run_conv(conv_2, geom, &shifted)],
                    1,
                )
            }
            Layer::Zero { stride, c_out } => {
                let size = x.size();
                let shape = [
                    size[0],
                    *c_out,
                    pooled(size[2], *stride),
                    pooled(size[3], *stride),
                ];
                zeros_in_layout_of(shape, x)
            }
        }
    }
}

/// A chain of layers built from a plan; ops and cell preprocessing are both one.
#[derive(Debug)]
pub struct Sequence {
    plan: Vec<LayerDesc>,
    layers: Vec<Layer>,
}

impl Sequence {
    /// Builds `plan` with variables under `p` (one path component per parameterised layer).
    pub fn new(p: nn::Path, plan: Vec<LayerDesc>) -> Self {
        let layers = plan.iter().map(|desc| Layer::build(&p, desc)).collect();
        Self { plan, layers }
    }

    pub fn plan(&self) -> &[LayerDesc] {
        &self.plan
    }

    /// True for the identity (an empty plan).
    pub fn is_identity(&self) -> bool {
        self.plan.is_empty()
    }

    /// # Shapes
    /// `[N, C_in, H, W] -> [N, C_out, H', W']` (see [`Sequence::out_shape`])
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut layers = self.layers.iter();
        match layers.next() {
            None => x.shallow_clone(),
            Some(first) => layers.fold(first.forward_t(x, train), |h, layer| {
                layer.forward_t(&h, train)
            }),
        }
    }

    /// How many leading layers are stateless, so [`Sequence::forward_shared`] can share them.
    fn stateless_prefix_len(&self) -> usize {
        self.plan.iter().take_while(|d| d.is_stateless()).count()
    }

    /// The first layer when it is a dense (ungrouped) convolution, which
    /// [`SharedInput::fuse_convs`] can run together with others.
    pub fn leading_conv(&self) -> Option<(&nn::Conv2D, ConvGeom)> {
        match (self.plan.first(), self.layers.first()) {
            (Some(LayerDesc::Conv { geom, .. }), Some(Layer::Conv { conv, .. }))
                if geom.groups == 1 =>
            {
                Some((conv, *geom))
            }
            _ => None,
        }
    }

    /// Equal to `forward_t(input.tensor())`, but the leading stateless layers come from
    /// `input`'s cache ([`SharedInput::after`]), or the leading conv from a fused one.
    pub fn forward_shared(&self, input: &SharedInput, train: bool) -> Tensor {
        if let Some(Layer::Conv { conv, .. }) = self.layers.first() {
            if let Some(y) = input.fused_output(conv) {
                return self.layers[1..]
                    .iter()
                    .fold(y, |h, layer| layer.forward_t(&h, train));
            }
        }
        let k = self.stateless_prefix_len();
        let head = input.after(&self.plan[..k]);
        self.layers[k..]
            .iter()
            .fold(head, |h, layer| layer.forward_t(&h, train))
    }

    /// Output `[C, H, W]` for an input `[C, H, W]`.
    pub fn out_shape(&self, input_chw: [i64; 3]) -> [i64; 3] {
        cost_of(&self.plan, input_chw).1
    }

    /// Per-sample cost for an input `[C, H, W]`.
    pub fn cost(&self, input_chw: [i64; 3]) -> OpCost {
        cost_of(&self.plan, input_chw).0
    }
}

/// One built candidate op.
#[derive(Debug)]
pub struct Op {
    kind: OpKind,
    spec: OpSpec,
    seq: Sequence,
}

impl Op {
    /// Builds `kind` at `spec`, variables under `p` (callers use `edge / kind.name()`).
    pub fn new(p: nn::Path, kind: OpKind, spec: OpSpec) -> Result<Self, NasError> {
        Ok(Self {
            kind,
            spec,
            seq: Sequence::new(p, plan(kind, &spec)?),
        })
    }

    pub fn kind(&self) -> OpKind {
        self.kind
    }

    pub fn spec(&self) -> &OpSpec {
        &self.spec
    }

    pub fn plan(&self) -> &[LayerDesc] {
        self.seq.plan()
    }

    /// The identity (`skip_connect` at stride 1, equal channels): DARTS skips drop-path on it.
    pub fn is_identity(&self) -> bool {
        self.seq.is_identity()
    }

    /// # Shapes
    /// `[N, c_in, H, W] -> [N, c_out, ceil(H / stride), ceil(W / stride)]`
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.seq.forward_t(x, train)
    }

    /// Like [`Op::forward_t`], but the op's leading parameter-free layers come from `input`,
    /// so they run (and are kept for backward) once for all ops and edges that read it: four
    /// of the eight DARTS ops start with a ReLU, both pools are shared across a state's edges,
    /// and in RL-DARTS reduction cells `skip_connect`, `relu` and `tanh` share one avg-pool.
    pub fn forward_shared(&self, input: &SharedInput, train: bool) -> Tensor {
        self.seq.forward_shared(input, train)
    }

    /// The op's first layer when it is a dense conv ([`SharedInput::fuse_convs`]).
    pub fn leading_conv(&self) -> Option<(&nn::Conv2D, ConvGeom)> {
        self.seq.leading_conv()
    }

    /// The op is one dense conv and nothing else (RL-DARTS's `conv_3x3`): linear in its
    /// kernel and bias, so its op weight can be folded into them
    /// (`w * conv_{W,b}(x) = conv_{wW,wb}(x)`, [`SharedInput::fuse_convs`]).
    pub fn is_single_conv(&self) -> bool {
        self.seq.plan().len() == 1 && self.seq.leading_conv().is_some()
    }

    pub fn out_shape(&self, input_chw: [i64; 3]) -> [i64; 3] {
        self.seq.out_shape(input_chw)
    }

    /// Per-sample cost for an input `[C, H, W]`; see [`OpCost`] for the conventions.
    pub fn cost(&self, input_chw: [i64; 3]) -> OpCost {
        self.seq.cost(input_chw)
    }
}
