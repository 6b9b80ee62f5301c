//! The torch side of the ops: layers initialised as PyTorch initialises them, the
//! channels-last layout the networks run in, and the convolution and pooling kernels the
//! built layers call.

use tch::nn;
use tch::Tensor;

use super::plans::{ConvGeom, LayerDesc};
use crate::agents::compute;

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

/// A built conv layer run through [`compute::conv2d`] (the run's precision and layout).
pub(crate) fn run_conv(conv: &nn::Conv2D, geom: &ConvGeom, x: &Tensor) -> Tensor {
    compute::conv2d(x, &conv.ws, conv.bs.as_ref(), geom.shape())
}

/// 3x3 max pool, padding 1.
pub(super) fn max_pool_3x3(x: &Tensor, stride: i64) -> Tensor {
    x.max_pool2d([3, 3], [stride, stride], [1, 1], [1, 1], false)
}

/// 3x3 average pool, padding 1, padding not counted (DARTS, NAS-Bench-201, RL-DARTS).
pub(super) fn avg_pool_3x3(x: &Tensor, stride: i64) -> Tensor {
    x.avg_pool2d([3, 3], [stride, stride], [1, 1], false, false, None)
}

impl LayerDesc {
    /// Runs a stateless layer ([`LayerDesc::is_stateless`]).
    pub(super) fn forward_stateless(&self, x: &Tensor) -> Tensor {
        match *self {
            LayerDesc::Relu => x.relu(),
            LayerDesc::Tanh => x.tanh(),
            LayerDesc::MaxPool { stride } => max_pool_3x3(x, stride),
            LayerDesc::AvgPool { stride } => avg_pool_3x3(x, stride),
            _ => unreachable!("forward_stateless on {self:?}, which has state"),
        }
    }
}
