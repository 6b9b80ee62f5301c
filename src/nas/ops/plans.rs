//! Layer plans: what an op is made of, as plain data ([`LayerDesc`]), planned from
//! `(kind, spec)` ([`plan`]). The forward pass ([`super::Sequence`]) and the cost
//! ([`super::OpCost`]) are both read off one plan, so they cannot drift apart.

use super::registry::{OpKind, StrideStyle};
use crate::agents::compute::ConvShape;
use crate::nas::error::NasError;

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
    /// What [`crate::agents::compute::conv2d`] needs of this geometry.
    pub fn shape(&self) -> ConvShape {
        ConvShape {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    pub(super) fn new(c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
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

    pub(super) fn out_hw(&self, h: i64) -> i64 {
        (h + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) / self.stride + 1
    }

    pub(super) fn params(&self) -> i64 {
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
pub(super) fn pooled(h: i64, stride: i64) -> i64 {
    (h - 1) / stride + 1
}

impl LayerDesc {
    /// Parameter-free and the same in training and evaluation, so its output on a shared
    /// input can be shared ([`SharedInput`](super::SharedInput)).
    pub fn is_stateless(&self) -> bool {
        matches!(
            self,
            LayerDesc::Relu
                | LayerDesc::Tanh
                | LayerDesc::MaxPool { .. }
                | LayerDesc::AvgPool { .. }
        )
    }
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
