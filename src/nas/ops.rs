//! The candidate-op registry: DARTS's eight ops (Liu et al., ICLR 2019, `cnn/operations.py`),
//! the RL-DARTS op sets (Miao et al. 2021) and NAS-Bench-201's five (Dong & Yang, ICLR 2020,
//! `xautodl/models/cell_operations.py`), each with an analytic per-sample cost (parameters,
//! FLOPs, memory access) for SNAS's resource penalty (Xie et al., ICLR 2019) and UNAS.
//!
//! Every op is a [`Sequence`] of primitive layers planned from `(kind, spec)` as plain data
//! ([`LayerDesc`]); the forward pass and the cost are both read off that one plan, so they
//! cannot drift apart.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::NasError;
use crate::agents::compute::{self, ConvShape};

/// One candidate operation. Serialises as the exact DARTS / NAS-Bench-201 string
/// (`"sep_conv_3x3"`), see [`OpKind::name`].
///
/// RL-DARTS's "skip" and "zero" are [`OpKind::SkipConnect`] (`skip_connect`) and
/// [`OpKind::None`] (`none`): the same maths as in DARTS, and one name for "zero" lets every
/// derivation rule drop it uniformly. What differs in RL-DARTS is how parameter-free ops
/// realise a stride, which is a property of the op set ([`StrideStyle`]), not of the op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `none`: the zero op; with stride, zeros of the strided shape.
    None,
    /// `max_pool_3x3`: 3x3 max-pool, padding 1.
    MaxPool3x3,
    /// `avg_pool_3x3`: 3x3 average pool, padding 1, padding not counted.
    AvgPool3x3,
    /// `skip_connect`: identity; with stride 2, FactorizedReduce (DARTS) or avg-pool
    /// (RL-DARTS).
    SkipConnect,
    /// `sep_conv_3x3`: (relu, depthwise 3x3, pointwise, BN) twice.
    SepConv3x3,
    /// `sep_conv_5x5`: (relu, depthwise 5x5, pointwise, BN) twice.
    SepConv5x5,
    /// `dil_conv_3x3`: relu, depthwise 3x3 dilation 2, pointwise, BN.
    DilConv3x3,
    /// `dil_conv_5x5`: relu, depthwise 5x5 dilation 2, pointwise, BN.
    DilConv5x5,
    /// `conv_3x3`: RL-DARTS default set: a plain 3x3 convolution with bias.
    Conv3x3,
    /// `relu`: RL-DARTS default set.
    Relu,
    /// `tanh`: RL-DARTS default set.
    Tanh,
    /// `conv_3x3_relu`: RL-DARTS "DARTS-like" set: 3x3 conv with bias, then relu.
    Conv3x3Relu,
    /// `dil_conv_3x3_relu`: RL-DARTS "DARTS-like" set: 3x3 conv dilation 2, then relu.
    DilConv3x3Relu,
    /// `conv_5x5_relu`: RL-DARTS "DARTS-like" set: 5x5 conv, then relu.
    Conv5x5Relu,
    /// `dil_conv_5x5_relu`: RL-DARTS "DARTS-like" set: 5x5 conv dilation 2, then relu.
    DilConv5x5Relu,
    /// `nor_conv_1x1`: NAS-Bench-201: relu, 1x1 conv, BN.
    NorConv1x1,
    /// `nor_conv_3x3`: NAS-Bench-201: relu, 3x3 conv, BN.
    NorConv3x3,
    /// `linear_relu`: the `mlp` set for vector observations (features as `[N, C, 1, 1]`): a
    /// linear layer with bias (a 1x1 conv), then relu.
    LinearRelu,
    /// `linear_tanh`: the `mlp` set: a linear layer with bias, then tanh (CleanRL's MLP
    /// activation for classic control).
    LinearTanh,
    /// `self_attention`: transformer search space (Zhao et al. 2021): multi-head self-attention
    /// (causal in the decoder). Built and run by `crate::transformer`, not by cell networks.
    SelfAttention,
    /// `conv_1d_3`: transformer space: 1-D convolution of width 3 over time, then relu
    /// (left-padded in the decoder).
    Conv1d3,
    /// `conv_1d_5`: transformer space: 1-D convolution of width 5.
    Conv1d5,
    /// `conv_1d_7`: transformer space: 1-D convolution of width 7.
    Conv1d7,
    /// `conv_1d_11`: transformer space: 1-D convolution of width 11.
    Conv1d11,
    /// `light_conv_7`: transformer space: lightweight convolution (Wu et al. 2019) of width 7,
    /// GLU input projection, softmax-normalised kernels shared per head.
    LightConv7,
    /// `glu`: transformer space: gated linear unit `a * sigmoid(b)`, `[a, b] = W x + c`.
    Glu,
    /// `ffn`: transformer space: position-wise feed-forward `W2 relu(W1 x)`.
    Ffn,
    /// `cross_attention`: transformer space: attention from the decoder to the encoder output
    /// (the decoder's fixed last split).
    CrossAttention,
}

impl OpKind {
    /// The sequence ops of the transformer search space (`crate::transformer`). They are kept
    /// out of [`OpKind::ALL`] because they have no convolutional cell plan: [`plan`] refuses
    /// them, and every test that builds each op of `ALL` as a cell op stays as it is.
    pub const TRANSFORMER: [OpKind; 9] = [
        OpKind::SelfAttention,
        OpKind::Conv1d3,
        OpKind::Conv1d5,
        OpKind::Conv1d7,
        OpKind::Conv1d11,
        OpKind::LightConv7,
        OpKind::Glu,
        OpKind::Ffn,
        OpKind::CrossAttention,
    ];

    /// Whether the op is one of [`OpKind::TRANSFORMER`].
    pub fn is_sequence_op(self) -> bool {
        OpKind::TRANSFORMER.contains(&self)
    }

    /// Every op of the registry.
    pub const ALL: [OpKind; 19] = [
        OpKind::None,
        OpKind::MaxPool3x3,
        OpKind::AvgPool3x3,
        OpKind::SkipConnect,
        OpKind::SepConv3x3,
        OpKind::SepConv5x5,
        OpKind::DilConv3x3,
        OpKind::DilConv5x5,
        OpKind::Conv3x3,
        OpKind::Relu,
        OpKind::Tanh,
        OpKind::Conv3x3Relu,
        OpKind::DilConv3x3Relu,
        OpKind::Conv5x5Relu,
        OpKind::DilConv5x5Relu,
        OpKind::NorConv1x1,
        OpKind::NorConv3x3,
        OpKind::LinearRelu,
        OpKind::LinearTanh,
    ];

    /// The name used in genotypes, configs and checkpoints (the DARTS `PRIMITIVES` strings
    /// where DARTS has the op).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::None => "none",
            OpKind::MaxPool3x3 => "max_pool_3x3",
            OpKind::AvgPool3x3 => "avg_pool_3x3",
            OpKind::SkipConnect => "skip_connect",
            OpKind::SepConv3x3 => "sep_conv_3x3",
            OpKind::SepConv5x5 => "sep_conv_5x5",
            OpKind::DilConv3x3 => "dil_conv_3x3",
            OpKind::DilConv5x5 => "dil_conv_5x5",
            OpKind::Conv3x3 => "conv_3x3",
            OpKind::Relu => "relu",
            OpKind::Tanh => "tanh",
            OpKind::Conv3x3Relu => "conv_3x3_relu",
            OpKind::DilConv3x3Relu => "dil_conv_3x3_relu",
            OpKind::Conv5x5Relu => "conv_5x5_relu",
            OpKind::DilConv5x5Relu => "dil_conv_5x5_relu",
            OpKind::NorConv1x1 => "nor_conv_1x1",
            OpKind::NorConv3x3 => "nor_conv_3x3",
            OpKind::LinearRelu => "linear_relu",
            OpKind::LinearTanh => "linear_tanh",
            OpKind::SelfAttention => "self_attention",
            OpKind::Conv1d3 => "conv_1d_3",
            OpKind::Conv1d5 => "conv_1d_5",
            OpKind::Conv1d7 => "conv_1d_7",
            OpKind::Conv1d11 => "conv_1d_11",
            OpKind::LightConv7 => "light_conv_7",
            OpKind::Glu => "glu",
            OpKind::Ffn => "ffn",
            OpKind::CrossAttention => "cross_attention",
        }
    }

    /// Ops without weights of their own (before any channel-matching 1x1 conv).
    pub fn is_parameter_free(self) -> bool {
        matches!(
            self,
            OpKind::None
                | OpKind::MaxPool3x3
                | OpKind::AvgPool3x3
                | OpKind::SkipConnect
                | OpKind::Relu
                | OpKind::Tanh
        )
    }

    /// Per-sample cost of this op on an input of shape `[C, H, W]`, without building it.
    pub fn cost(self, spec: &OpSpec, input_chw: [i64; 3]) -> Result<OpCost, NasError> {
        Ok(cost_of(&plan(self, spec)?, input_chw).0)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OpKind {
    type Err = NasError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let every = || OpKind::ALL.iter().chain(OpKind::TRANSFORMER.iter());
        if let Some(kind) = every().find(|k| k.name() == s) {
            return Ok(*kind);
        }
        let suggestion = every()
            .map(|k| (strsim::levenshtein(s, k.name()), k.name()))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, name)| name);
        let known = every().map(|k| k.name()).collect::<Vec<_>>().join(", ");
        Err(NasError::UnknownOp {
            name: s.to_string(),
            suggestion,
            known,
        })
    }
}

impl Serialize for OpKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for OpKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// How parameter-free ops realise a stride of 2 (only edges leaving a reduction cell's
/// inputs have one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrideStyle {
    /// DARTS and NAS-Bench-201: `skip_connect` becomes FactorizedReduce, pools stride
    /// themselves, `none` returns zeros of the strided shape.
    Darts,
    /// RL-DARTS: `skip_connect`, `relu` and `tanh` run after an avg-pool 3x3 stride 2, and a
    /// 1x1 conv matches channels where the cell changes them.
    AvgPool,
}

/// A named op set: the columns of the architecture-parameter matrices, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpSet {
    /// DARTS `PRIMITIVES` (8 ops, `none` first).
    #[serde(rename = "darts")]
    Darts,
    /// RL-DARTS default set (5 ops): conv_3x3, relu, tanh, skip_connect, none.
    #[serde(rename = "rl_darts")]
    RlDarts,
    /// RL-DARTS "DARTS-like" set (6 ops): conv_3x3_relu, dil_conv_3x3_relu, conv_5x5_relu,
    /// dil_conv_5x5_relu, skip_connect, none.
    #[serde(rename = "rl_darts_conv")]
    RlDartsConv,
    /// NAS-Bench-201 (5 ops, xautodl's `NAS_BENCH_201` order).
    #[serde(rename = "nas_bench_201")]
    NasBench201,
    /// Vector features (4 ops): linear_relu, linear_tanh, skip_connect, none; the RL-DARTS
    /// default set with its conv made a linear layer and its activations folded into it, for
    /// MLP supernets on state-vector envs (CartPole).
    #[serde(rename = "mlp")]
    Mlp,
    /// The transformer search space (Zhao et al. 2021) as `crate::transformer` builds it
    /// (10 ops): none, skip_connect, self_attention, conv_1d_{3,5,7,11}, light_conv_7, glu,
    /// ffn. Not in [`OpSet::ALL`]: its ops are sequence ops without a cell plan.
    #[serde(rename = "transformer")]
    Transformer,
}

const DARTS_OPS: [OpKind; 8] = [
    OpKind::None,
    OpKind::MaxPool3x3,
    OpKind::AvgPool3x3,
    OpKind::SkipConnect,
    OpKind::SepConv3x3,
    OpKind::SepConv5x5,
    OpKind::DilConv3x3,
    OpKind::DilConv5x5,
];
const RL_DARTS_OPS: [OpKind; 5] = [
    OpKind::Conv3x3,
    OpKind::Relu,
    OpKind::Tanh,
    OpKind::SkipConnect,
    OpKind::None,
];
const RL_DARTS_CONV_OPS: [OpKind; 6] = [
    OpKind::Conv3x3Relu,
    OpKind::DilConv3x3Relu,
    OpKind::Conv5x5Relu,
    OpKind::DilConv5x5Relu,
    OpKind::SkipConnect,
    OpKind::None,
];
const MLP_OPS: [OpKind; 4] = [
    OpKind::LinearRelu,
    OpKind::LinearTanh,
    OpKind::SkipConnect,
    OpKind::None,
];
const NAS_BENCH_201_OPS: [OpKind; 5] = [
    OpKind::None,
    OpKind::SkipConnect,
    OpKind::NorConv1x1,
    OpKind::NorConv3x3,
    OpKind::AvgPool3x3,
];

const TRANSFORMER_OPS: [OpKind; 10] = [
    OpKind::None,
    OpKind::SkipConnect,
    OpKind::SelfAttention,
    OpKind::Conv1d3,
    OpKind::Conv1d5,
    OpKind::Conv1d7,
    OpKind::Conv1d11,
    OpKind::LightConv7,
    OpKind::Glu,
    OpKind::Ffn,
];

impl OpSet {
    /// Every named set, for tests and `--help`.
    pub const ALL: [OpSet; 5] = [
        OpSet::Darts,
        OpSet::RlDarts,
        OpSet::RlDartsConv,
        OpSet::NasBench201,
        OpSet::Mlp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpSet::Darts => "darts",
            OpSet::RlDarts => "rl_darts",
            OpSet::RlDartsConv => "rl_darts_conv",
            OpSet::NasBench201 => "nas_bench_201",
            OpSet::Mlp => "mlp",
            OpSet::Transformer => "transformer",
        }
    }

    /// The ops, in the column order of the architecture parameters.
    pub fn ops(self) -> &'static [OpKind] {
        match self {
            OpSet::Darts => &DARTS_OPS,
            OpSet::RlDarts => &RL_DARTS_OPS,
            OpSet::RlDartsConv => &RL_DARTS_CONV_OPS,
            OpSet::NasBench201 => &NAS_BENCH_201_OPS,
            OpSet::Mlp => &MLP_OPS,
            OpSet::Transformer => &TRANSFORMER_OPS,
        }
    }

    pub fn len(self) -> usize {
        self.ops().len()
    }

    /// Always false; present because clippy pairs it with `len`.
    pub fn is_empty(self) -> bool {
        self.ops().is_empty()
    }

    pub fn index_of(self, kind: OpKind) -> Option<usize> {
        self.ops().iter().position(|&k| k == kind)
    }

    /// Column of `none`, which the DARTS and RL-DARTS derivation rules skip.
    pub fn none_index(self) -> Option<usize> {
        self.index_of(OpKind::None)
    }

    pub fn stride_style(self) -> StrideStyle {
        match self {
            OpSet::Darts | OpSet::NasBench201 => StrideStyle::Darts,
            // Mlp: a skip between widths needs the RL-DARTS 1x1 projection (a linear layer);
            // its networks have no reduction cells, so the avg-pool never runs.
            // Transformer: never strided; the value is never read.
            OpSet::RlDarts | OpSet::RlDartsConv | OpSet::Mlp | OpSet::Transformer => {
                StrideStyle::AvgPool
            }
        }
    }

    /// `Err(OpNotInSet)` unless `kind` is a member.
    pub fn check_member(self, kind: OpKind) -> Result<usize, NasError> {
        self.index_of(kind).ok_or_else(|| NasError::OpNotInSet {
            op: kind.name().to_string(),
            op_set: self.name().to_string(),
            members: self
                .ops()
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

impl fmt::Display for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OpSet {
    type Err = NasError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OpSet::ALL
            .iter()
            .copied()
            .chain([OpSet::Transformer])
            .find(|set| set.name() == s)
            .ok_or_else(|| {
                let names = OpSet::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ");
                NasError::Config(format!("unknown op set '{s}'; known op sets: {names}"))
            })
    }
}

/// Where an op sits: channels in and out, stride, and the BatchNorm conventions of the network
/// that builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpec {
    pub c_in: i64,
    pub c_out: i64,
    /// 1, or 2 on the input edges of a reduction cell.
    pub stride: i64,
    /// Learn BatchNorm scale and shift. DARTS: off during search (the op weights already scale
    /// each op's output, a learned affine would fight them), on in the evaluation network.
    pub affine: bool,
    /// Follow pooling ops with BatchNorm(affine = false): DARTS's search `MixedOp` does, so
    /// that parameter-free pools output the same scale as the BN-terminated convs and are not
    /// favoured or penalised by scale alone. NAS-Bench-201 and DARTS evaluation do not.
    pub pool_bn: bool,
    pub stride_style: StrideStyle,
}

impl OpSpec {
    /// DARTS search edge: `c -> c`, no affine, pooling followed by BN.
    pub fn darts_search(c: i64, stride: i64) -> Self {
        Self {
            c_in: c,
            c_out: c,
            stride,
            affine: false,
            pool_bn: true,
            stride_style: StrideStyle::Darts,
        }
    }

    /// DARTS evaluation edge: `c -> c`, affine BN, bare pooling.
    pub fn darts_eval(c: i64, stride: i64) -> Self {
        Self {
            c_in: c,
            c_out: c,
            stride,
            affine: true,
            pool_bn: false,
            stride_style: StrideStyle::Darts,
        }
    }
}

/// Per-sample cost of an op, from its layer plan.
///
/// Conventions (stated because papers differ): `flops` counts multiply-adds (a conv costs
/// `C_in/groups * k * k * C_out * H_out * W_out`), one per element for BatchNorm (folded to
/// scale-and-shift) and activations, nine per output element for 3x3 pooling; `mac` is
/// ShuffleNet V2's memory access cost, the sum over layers of input elements, output elements
/// and parameters; `params` counts trainable parameters (BN running statistics excluded, as in
/// PyTorch's `parameters()`). The zero op and the identity cost nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpCost {
    pub params: i64,
    pub flops: i64,
    pub mac: i64,
}

impl Add for OpCost {
    type Output = OpCost;
    fn add(self, other: OpCost) -> OpCost {
        OpCost {
            params: self.params + other.params,
            flops: self.flops + other.flops,
            mac: self.mac + other.mac,
        }
    }
}

impl AddAssign for OpCost {
    fn add_assign(&mut self, other: OpCost) {
        *self = *self + other;
    }
}

impl std::iter::Sum for OpCost {
    fn sum<I: Iterator<Item = OpCost>>(iter: I) -> OpCost {
        iter.fold(OpCost::default(), Add::add)
    }
}

/// Geometry of one 2-d convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub c_in: i64,
    pub c_out: i64,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
    pub bias: bool,
}

impl ConvGeom {
    /// What [`compute::conv2d`] needs of this geometry.
    pub fn shape(&self) -> ConvShape {
        ConvShape {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    fn new(c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            dilation: 1,
            groups: 1,
            bias: false,
        }
    }

    fn out_hw(&self, h: i64) -> i64 {
        (h + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }

    fn params(&self) -> i64 {
        self.c_out * (self.c_in / self.groups) * self.kernel * self.kernel
            + if self.bias { self.c_out } else { 0 }
    }
}

/// One primitive layer of an op's plan, as data. `name` is the variable-path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerDesc {
    Relu,
    Tanh,
    Conv {
        name: &'static str,
        geom: ConvGeom,
    },
    BatchNorm {
        name: &'static str,
        channels: i64,
        affine: bool,
    },
    /// 3x3, padding 1.
    MaxPool {
        stride: i64,
    },
    /// 3x3, padding 1, `count_include_pad = false` (DARTS and NAS-Bench-201).
    AvgPool {
        stride: i64,
    },
    /// The two stride-2 1x1 convs of FactorizedReduce, on `x` and on `x` shifted by one pixel,
    /// concatenated on channels (`conv_1`: `c_out / 2` channels, `conv_2`: the rest).
    FactorizedConvs {
        c_in: i64,
        c_out: i64,
        bias: bool,
    },
    /// Zeros of shape `[N, c_out, ceil(H / stride), ceil(W / stride)]`.
    Zero {
        stride: i64,
        c_out: i64,
    },
}

/// 3x3/stride/pad-1 pooling output size: floor((h - 1) / s) + 1, i.e. ceil(h / s) for s <= 2.
fn pooled(h: i64, stride: i64) -> i64 {
    (h - 1) / stride + 1
}

impl LayerDesc {
    /// Parameter-free and the same in training and evaluation, so its output on a shared
    /// input can be shared ([`SharedInput`]).
    pub fn is_stateless(&self) -> bool {
        matches!(
            self,
            LayerDesc::Relu
                | LayerDesc::Tanh
                | LayerDesc::MaxPool { .. }
                | LayerDesc::AvgPool { .. }
        )
    }

    /// Runs a stateless layer ([`LayerDesc::is_stateless`]).
    fn forward_stateless(&self, x: &Tensor) -> Tensor {
        match *self {
            LayerDesc::Relu => x.relu(),
            LayerDesc::Tanh => x.tanh(),
            LayerDesc::MaxPool { stride } => max_pool_3x3(x, stride),
            LayerDesc::AvgPool { stride } => avg_pool_3x3(x, stride),
            _ => unreachable!("forward_stateless on {self:?}, which has state"),
        }
    }

    /// Cost and output shape for one sample of shape `[C, H, W]`.
    fn cost(&self, [c, h, w]: [i64; 3]) -> (OpCost, [i64; 3]) {
        let elems = c * h * w;
        match self {
            LayerDesc::Relu | LayerDesc::Tanh => (
                OpCost {
                    params: 0,
                    flops: elems,
                    mac: 2 * elems,
                },
                [c, h, w],
            ),
            LayerDesc::Conv { geom, .. } => {
                let (ho, wo) = (geom.out_hw(h), geom.out_hw(w));
                let out = geom.c_out * ho * wo;
                let params = geom.params();
                let flops =
                    geom.c_out * (geom.c_in / geom.groups) * geom.kernel * geom.kernel * ho * wo;
                (
                    OpCost {
                        params,
                        flops,
                        mac: elems + out + params,
                    },
                    [geom.c_out, ho, wo],
                )
            }
            LayerDesc::BatchNorm { affine, .. } => {
                let params = if *affine { 2 * c } else { 0 };
                (
                    OpCost {
                        params,
                        flops: elems,
                        mac: 2 * elems + params,
                    },
                    [c, h, w],
                )
            }
            LayerDesc::MaxPool { stride } | LayerDesc::AvgPool { stride } => {
                let (ho, wo) = (pooled(h, *stride), pooled(w, *stride));
                let out = c * ho * wo;
                (
                    OpCost {
                        params: 0,
                        flops: 9 * out,
                        mac: elems + out,
                    },
                    [c, ho, wo],
                )
            }
            LayerDesc::FactorizedConvs { c_in, c_out, bias } => {
                let (ho, wo) = (pooled(h, 2), pooled(w, 2));
                let params = c_in * c_out + if *bias { *c_out } else { 0 };
                let out = c_out * ho * wo;
                // Each half reads the whole input once.
                (
                    OpCost {
                        params,
                        flops: c_in * c_out * ho * wo,
                        mac: 2 * elems + out + params,
                    },
                    [*c_out, ho, wo],
                )
            }
            LayerDesc::Zero { stride, c_out } => (
                OpCost::default(),
                [*c_out, pooled(h, *stride), pooled(w, *stride)],
            ),
        }
    }
}

fn cost_of(plan: &[LayerDesc], input_chw: [i64; 3]) -> (OpCost, [i64; 3]) {
    plan.iter()
        .fold((OpCost::default(), input_chw), |(total, shape), layer| {
            let (cost, out) = layer.cost(shape);
            (total + cost, out)
        })
}

/// `relu -> conv k x k (no bias) -> BN`: DARTS's ReLUConvBN (cell preprocessing).
pub(crate) fn relu_conv_bn_plan(
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    affine: bool,
) -> Vec<LayerDesc> {
    vec![
        LayerDesc::Relu,
        LayerDesc::Conv {
            name: "conv",
            geom: ConvGeom::new(c_in, c_out, kernel, stride, padding),
        },
        LayerDesc::BatchNorm {
            name: "bn",
            channels: c_out,
            affine,
        },
    ]
}

/// A bare 1x1 conv with bias: RL-DARTS's input projection (the official `Cell`'s preprocessing
/// layer, a Sonnet `Conv2D(kernel_shape=1)`), applied once per cell input whose channels
/// differ from the cell's, and shared by every edge leaving that input.
pub(crate) fn input_projection_plan(c_in: i64, c_out: i64) -> Vec<LayerDesc> {
    let geom = ConvGeom {
        bias: true,
        ..ConvGeom::new(c_in, c_out, 1, 1, 0)
    };
    vec![LayerDesc::Conv { name: "conv", geom }]
}

/// DARTS's FactorizedReduce: relu, two stride-2 1x1 convs on offset grids, concat, BN. Halves
/// the resolution without discarding every other pixel as a single strided 1x1 conv would.
pub(crate) fn factorized_reduce_plan(c_in: i64, c_out: i64, affine: bool) -> Vec<LayerDesc> {
    vec![
        LayerDesc::Relu,
        LayerDesc::FactorizedConvs {
            c_in,
            c_out,
            bias: false,
        },
        LayerDesc::BatchNorm {
            name: "bn",
            channels: c_out,
            affine,
        },
    ]
}

/// The layer plan of `kind` at `spec`: the single source of both forward and cost.
pub fn plan(kind: OpKind, spec: &OpSpec) -> Result<Vec<LayerDesc>, NasError> {
    let &OpSpec {
        c_in,
        c_out,
        stride,
        affine,
        pool_bn,
        stride_style,
    } = spec;
    if c_in <= 0 || c_out <= 0 {
        return Err(NasError::Config(format!(
            "op {kind}: channels must be positive, got {c_in} -> {c_out}"
        )));
    }
    if stride != 1 && stride != 2 {
        return Err(NasError::Config(format!(
            "op {kind}: stride must be 1 or 2, got {stride}"
        )));
    }
    let reduce = stride == 2;
    let conv = |name, kernel: i64, dilation: i64, bias: bool| LayerDesc::Conv {
        name,
        geom: ConvGeom {
            c_in,
            c_out,
            kernel,
            stride,
            padding: dilation * (kernel - 1) / 2,
            dilation,
            groups: 1,
            bias,
        },
    };
    // RL-DARTS: "a 1x1 conv matches channels where needed" (with bias: nothing normalises it).
    let avgpool_style_prefix = || {
        let mut layers = Vec::new();
        if reduce {
            layers.push(LayerDesc::AvgPool { stride: 2 });
        }
        if c_in != c_out {
            let geom = ConvGeom {
                bias: true,
                ..ConvGeom::new(c_in, c_out, 1, 1, 0)
            };
            layers.push(LayerDesc::Conv { name: "proj", geom });
        }
        layers
    };
    let plan = match kind {
        OpKind::None => vec![LayerDesc::Zero { stride, c_out }],
        OpKind::MaxPool3x3 | OpKind::AvgPool3x3 => {
            let mut layers = Vec::new();
            if c_in != c_out {
                // NAS-Bench-201's POOLING: ReLUConvBN 1x1 first when channels change.
                match stride_style {
                    StrideStyle::Darts => {
                        layers.push(LayerDesc::Relu);
                        layers.push(LayerDesc::Conv {
                            name: "proj",
                            geom: ConvGeom::new(c_in, c_out, 1, 1, 0),
                        });
                        layers.push(LayerDesc::BatchNorm {
                            name: "proj_bn",
                            channels: c_out,
                            affine,
                        });
                    }
                    StrideStyle::AvgPool => {
                        let geom = ConvGeom {
                            bias: true,
                            ..ConvGeom::new(c_in, c_out, 1, 1, 0)
                        };
                        layers.push(LayerDesc::Conv { name: "proj", geom });
                    }
                }
            }
            layers.push(if kind == OpKind::MaxPool3x3 {
                LayerDesc::MaxPool { stride }
            } else {
                LayerDesc::AvgPool { stride }
            });
            if pool_bn {
                layers.push(LayerDesc::BatchNorm {
                    name: "bn",
                    channels: c_out,
                    affine: false,
                });
            }
            layers
        }
        OpKind::SkipConnect => match stride_style {
            StrideStyle::Darts if !reduce && c_in == c_out => Vec::new(),
            StrideStyle::Darts if reduce => factorized_reduce_plan(c_in, c_out, affine),
            // NAS-Bench-201's FactorizedReduce at stride 1: 1x1 conv + BN, no relu.
            StrideStyle::Darts => vec![
                LayerDesc::Conv {
                    name: "proj",
                    geom: ConvGeom::new(c_in, c_out, 1, 1, 0),
                },
                LayerDesc::BatchNorm {
                    name: "bn",
                    channels: c_out,
                    affine,
                },
            ],
            StrideStyle::AvgPool => avgpool_style_prefix(),
        },
        OpKind::Relu | OpKind::Tanh => {
            // Pool and channel-match first, so the activation stays the op's last layer as in
            // the conv+relu ops of the same search space.
            let mut layers = avgpool_style_prefix();
            layers.push(if kind == OpKind::Relu {
                LayerDesc::Relu
            } else {
                LayerDesc::Tanh
            });
            layers
        }
        OpKind::SepConv3x3 | OpKind::SepConv5x5 => {
            let k = if kind == OpKind::SepConv3x3 { 3 } else { 5 };
            let depthwise = |name, stride| LayerDesc::Conv {
                name,
                geom: ConvGeom {
                    groups: c_in,
                    ..ConvGeom::new(c_in, c_in, k, stride, k / 2)
                },
            };
            vec![
                LayerDesc::Relu,
                depthwise("dw1", stride),
                LayerDesc::Conv {
                    name: "pw1",
                    geom: ConvGeom::new(c_in, c_in, 1, 1, 0),
                },
                LayerDesc::BatchNorm {
                    name: "bn1",
                    channels: c_in,
                    affine,
                },
                LayerDesc::Relu,
                depthwise("dw2", 1),
                LayerDesc::Conv {
                    name: "pw2",
                    geom: ConvGeom::new(c_in, c_out, 1, 1, 0),
                },
                LayerDesc::BatchNorm {
                    name: "bn2",
                    channels: c_out,
                    affine,
                },
            ]
        }
        OpKind::DilConv3x3 | OpKind::DilConv5x5 => {
            let k = if kind == OpKind::DilConv3x3 { 3 } else { 5 };
            // DARTS: padding 2 (3x3) and 4 (5x5) at dilation 2 keep the size.
            let geom = ConvGeom {
                dilation: 2,
                groups: c_in,
                ..ConvGeom::new(c_in, c_in, k, stride, k - 1)
            };
            vec![
                LayerDesc::Relu,
                LayerDesc::Conv { name: "dw", geom },
                LayerDesc::Conv {
                    name: "pw",
                    geom: ConvGeom::new(c_in, c_out, 1, 1, 0),
                },
                LayerDesc::BatchNorm {
                    name: "bn",
                    channels: c_out,
                    affine,
                },
            ]
        }
        OpKind::Conv3x3 => vec![conv("conv", 3, 1, true)],
        OpKind::Conv3x3Relu => vec![conv("conv", 3, 1, true), LayerDesc::Relu],
        OpKind::DilConv3x3Relu => vec![conv("conv", 3, 2, true), LayerDesc::Relu],
        OpKind::Conv5x5Relu => vec![conv("conv", 5, 1, true), LayerDesc::Relu],
        OpKind::DilConv5x5Relu => vec![conv("conv", 5, 2, true), LayerDesc::Relu],
        // On `[N, C, 1, 1]` a 1x1 conv with bias is exactly a linear layer, and its plan's cost
        // (C_in * C_out multiply-adds, C_in * C_out + C_out parameters) is the linear layer's.
        OpKind::LinearRelu => vec![conv("linear", 1, 1, true), LayerDesc::Relu],
        OpKind::LinearTanh => vec![conv("linear", 1, 1, true), LayerDesc::Tanh],
        OpKind::NorConv1x1 | OpKind::NorConv3x3 => {
            let k = if kind == OpKind::NorConv1x1 { 1 } else { 3 };
            // xautodl's ReLUConvBN: the conv has a bias exactly when the BN has no affine.
            vec![
                LayerDesc::Relu,
                conv("conv", k, 1, !affine),
                LayerDesc::BatchNorm {
                    name: "bn",
                    channels: c_out,
                    affine,
                },
            ]
        }
        OpKind::SelfAttention
        | OpKind::Conv1d3
        | OpKind::Conv1d5
        | OpKind::Conv1d7
        | OpKind::Conv1d11
        | OpKind::LightConv7
        | OpKind::Glu
        | OpKind::Ffn
        | OpKind::CrossAttention => {
            return Err(NasError::Config(format!(
                "op {kind} is a sequence op of the transformer search space \
                 (rl_darts::transformer); it has no convolutional cell plan"
            )))
        }
    };
    Ok(plan)
}

/// PyTorch's default conv init (`kaiming_uniform_(a = sqrt(5))` = U(+-1/sqrt(fan_in)), the same
/// bound for the bias), which the official DARTS and NAS-Bench-201 code rely on.
pub(crate) fn torch_conv2d(p: nn::Path, g: &ConvGeom) -> nn::Conv2D {
    let fan_in = (g.c_in / g.groups) * g.kernel * g.kernel;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let config = nn::ConvConfig {
        stride: g.stride,
        padding: g.padding,
        dilation: g.dilation,
        groups: g.groups,
        bias: g.bias,
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        padding_mode: nn::PaddingMode::Zeros,
    };
    nn::conv2d(p, g.c_in, g.c_out, g.kernel, config)
}

/// [`torch_conv2d`] as a layer that runs in the run's precision and layout
/// ([`compute::Conv2d`]).
pub(crate) fn conv_layer(p: nn::Path, g: &ConvGeom) -> compute::Conv2d {
    let conv = torch_conv2d(p, g);
    compute::Conv2d {
        ws: conv.ws,
        bs: conv.bs,
        shape: g.shape(),
    }
}

/// PyTorch's BatchNorm2d defaults (weight 1, bias 0, momentum 0.1, eps 1e-5); tch's own
/// default draws the weight from U(0, 1).
pub(crate) fn torch_batch_norm2d(p: nn::Path, channels: i64, affine: bool) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        affine,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, channels, config)
}

/// PyTorch's default linear init: U(+-1/sqrt(in)) for weight and bias.
pub(crate) fn torch_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: Some(nn::Init::Uniform {
            lo: -bound,
            up: bound,
        }),
        bias: true,
    };
    nn::linear(p, c_in, c_out, config)
}

/// `x` in the channels-last (NHWC) layout, still indexed `[N, C, H, W]`, for float tensors on
/// the CPU; other tensors unchanged. Layers keep the layout of their input, and on the CPU
/// oneDNN runs NHWC depthwise convolutions with its direct depthwise kernels instead of
/// im2col + GEMM, and pooling and BatchNorm have vectorised NHWC kernels: on the DARTS
/// supernet about a quarter of the search time was im2col/col2im and scalar NCHW max-pooling.
/// Only the memory order changes, so results equal the NCHW ones up to float rounding.
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if x.dim() == 4 && x.device() == tch::Device::Cpu && x.kind() == tch::Kind::Float {
        compute::channels_last(x)
    } else {
        x.shallow_clone()
    }
}

/// The layout a network hands its first layer: the run's ([`compute::to_layout`]) when one
/// is set, else channels-last for float CPU tensors ([`to_channels_last`], the DARTS
/// networks' choice before the layout became a setting).
pub fn network_input_layout(x: &Tensor) -> Tensor {
    if compute::current().layout.is_some() {
        compute::to_layout(x)
    } else {
        to_channels_last(x)
    }
}

/// Zeros of `shape` in the layout of `like` (channels-last if `like` is): an NCHW term in an
/// NHWC sum would turn everything after it NCHW.
pub fn zeros_in_layout_of(shape: [i64; 4], like: &Tensor) -> Tensor {
    let zeros = Tensor::zeros(shape, (like.kind(), like.device()));
    if is_channels_last(like) {
        to_channels_last(&zeros)
    } else {
        zeros
    }
}

/// True when the 4-d tensor `x` is stored channels-last: `[N, H, W, C]` in memory.
pub fn is_channels_last(x: &Tensor) -> bool {
    x.dim() == 4 && x.permute([0, 2, 3, 1]).is_contiguous() && !x.is_contiguous()
}

/// A tensor read by several ops. The outputs of the parameter-free layers that ops start with
/// (ReLU, tanh, pools: [`LayerDesc::is_stateless`]) are computed on first use and then shared,
/// keyed by the chain of such layers: every edge that leaves a cell state runs the same
/// candidate ops, so without sharing a state's ReLU, tanh or stride-2 average pool would be
/// computed (and kept for backward) once per op and edge.
///
/// It also holds the outputs of convolutions fused across ops ([`SharedInput::fuse_convs`]).
#[derive(Debug)]
pub struct SharedInput {
    x: Tensor,
    prefixes: std::cell::RefCell<Vec<(Vec<LayerDesc>, Tensor)>>,
    /// `(address of the op's nn::Conv2D, its output)`: the conv was run as part of a fused one.
    fused: std::cell::RefCell<Vec<(usize, Tensor)>>,
}

/// The identity of a built conv layer while its network lives (the key of fused outputs).
fn conv_key(conv: &nn::Conv2D) -> usize {
    std::ptr::from_ref(conv) as usize
}

impl SharedInput {
    pub fn new(x: Tensor) -> Self {
        Self {
            x,
            prefixes: std::cell::RefCell::new(Vec::new()),
            fused: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Runs the ops' leading convolutions that read this input ([`Op::leading_conv`]) as one
    /// convolution per geometry, weights concatenated on output channels, and keeps each op's
    /// slice for [`Op::forward_shared`].
    ///
    /// Why: every edge leaving a cell state has its own conv of the state (RL-DARTS: a
    /// `conv_3x3` on each of them). At the narrow widths of RL encoders (4-32 channels) one
    /// conv with k times the output channels fills the vector units that k small ones leave
    /// mostly idle, and costs one kernel launch instead of k. Autograd splits the gradient
    /// back to each op's own weights, so results equal the unfused ones up to float rounding.
    pub fn fuse_convs(&self, convs: &[(&nn::Conv2D, ConvGeom)]) {
        let mut done = vec![false; convs.len()];
        for i in 0..convs.len() {
            if done[i] {
                continue;
            }
            let same_geometry = |g: &ConvGeom| {
                ConvGeom { c_out: 0, ..*g }
                    == ConvGeom {
                        c_out: 0,
                        ..convs[i].1
                    }
            };
            let group: Vec<usize> = (i..convs.len())
                .filter(|&j| !done[j] && same_geometry(&convs[j].1))
                .collect();
            for &j in &group {
                done[j] = true;
            }
            if group.len() < 2 {
                continue;
            }
            let g = convs[i].1;
            let weights: Vec<&Tensor> = group.iter().map(|&j| &convs[j].0.ws).collect();
            let biases: Option<Vec<&Tensor>> =
                group.iter().map(|&j| convs[j].0.bs.as_ref()).collect();
            let y = compute::conv2d(
                &self.x,
                &Tensor::cat(&weights, 0),
                biases.map(|b| Tensor::cat(&b, 0)).as_ref(),
                g.shape(),
            );
            let sizes: Vec<i64> = group.iter().map(|&j| convs[j].1.c_out).collect();
            let mut fused = self.fused.borrow_mut();
            for (&j, part) in group.iter().zip(y.split_with_sizes(&sizes, 1)) {
                fused.push((conv_key(convs[j].0), part));
            }
        }
    }

    /// The output of `conv` on this input, if [`SharedInput::fuse_convs`] computed it.
    fn fused_output(&self, conv: &nn::Conv2D) -> Option<Tensor> {
        let key = conv_key(conv);
        self.fused
            .borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, y)| y.shallow_clone())
    }

    pub fn tensor(&self) -> &Tensor {
        &self.x
    }

    /// The input after the stateless layers `chain`, computed once per distinct chain (each
    /// chain reuses its longest cached head, so `[avg_pool, relu]` and `[avg_pool, tanh]` pool
    /// once).
    pub fn after(&self, chain: &[LayerDesc]) -> Tensor {
        let Some((last, head)) = chain.split_last() else {
            return self.x.shallow_clone();
        };
        if let Some((_, y)) = self.prefixes.borrow().iter().find(|(c, _)| c == chain) {
            return y.shallow_clone();
        }
        let y = last.forward_stateless(&self.after(head));
        self.prefixes
            .borrow_mut()
            .push((chain.to_vec(), y.shallow_clone()));
        y
    }

    /// How many distinct layer chains have been computed (for tests).
    pub fn cached_chains(&self) -> usize {
        self.prefixes.borrow().len()
    }

    pub fn into_tensor(self) -> Tensor {
        self.x
    }
}

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

/// A built conv layer run through [`compute::conv2d`] (the run's precision and layout).
pub(crate) fn run_conv(conv: &nn::Conv2D, geom: &ConvGeom, x: &Tensor) -> Tensor {
    compute::conv2d(x, &conv.ws, conv.bs.as_ref(), geom.shape())
}

/// 3x3 max pool, padding 1.
fn max_pool_3x3(x: &Tensor, stride: i64) -> Tensor {
    x.max_pool2d([3, 3], [stride, stride], [1, 1], [1, 1], false)
}

/// 3x3 average pool, padding 1, padding not counted (DARTS, NAS-Bench-201, RL-DARTS).
fn avg_pool_3x3(x: &Tensor, stride: i64) -> Tensor {
    x.avg_pool2d([3, 3], [stride, stride], [1, 1], false, false, None)
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

    pub fn out_shape(&self, input_chw: [i64; 3]) -> [i64; 3] {
        self.seq.out_shape(input_chw)
    }

    /// Per-sample cost for an input `[C, H, W]`; see [`OpCost`] for the conventions.
    pub fn cost(&self, input_chw: [i64; 3]) -> OpCost {
        self.seq.cost(input_chw)
    }
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
