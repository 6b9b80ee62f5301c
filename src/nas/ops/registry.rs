//! The op registry: every candidate op's name ([`OpKind`], the exact DARTS / NAS-Bench-201
//! strings), the named op sets that fix the columns of the architecture parameters
//! ([`OpSet`]), and how parameter-free ops realise a stride ([`StrideStyle`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::nas::error::NasError;

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
    /// out of [`OpKind::ALL`] because they have no convolutional cell plan:
    /// [`plan`](super::plan) refuses them, and every test that builds each op of `ALL` as a
    /// cell op stays as it is.
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
