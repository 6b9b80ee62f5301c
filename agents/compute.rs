//! The precision and memory layout that convolutions and matrix products run in: the one
//! place where a network's activations and weights are cast to bf16 / fp16 and back.
//!
//! Mixed precision by explicit casts (tch's autocast switch covers CUDA only): a conv or
//! linear layer casts its weight and bias (and an fp32 input) to the low precision and runs
//! there. Autograd differentiates the casts, so the gradients reach the fp32 master weights
//! as fp32. What a layer hands on depends on what it was given:
//! - an fp32 input gets an fp32 output (the layer casts back). The search networks work this
//!   way: their mixed op's weighted sum with fp32 op weights, BatchNorm statistics and
//!   everything else between layers stay fp32, as the architecture parameters must.
//! - an input already in the low precision gets a low-precision output, as under PyTorch's
//!   autocast. A plain stack of convs (the IMPALA-CNN) enters the low precision once
//!   ([`to_activation_kind`]) and leaves it once at the end: ReLUs, pools and residual adds
//!   then run on bf16 activations, which saves the two casts per layer and halves the
//!   activation memory kept for backward.
//!
//! Softmax, losses and the optimiser always see fp32. Only fp32 tensors are ever cast down:
//! an f64 network (the gradient tests) runs in f64 whatever the precision.
//!
//! The setting is per thread and scoped, like PyTorch's autocast state: a run enters its
//! [`Compute`] once ([`enter`]), every forward on that thread follows it, and a step that
//! must be exact (a second-order search step) runs inside [`full_precision`]. Backward passes
//! need no setting: the casts are recorded in the graph at forward time. With nothing
//! entered, layers compute in fp32 and leave the layout as their input has it (what they did
//! before precision was configurable).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// The floating-point format of convolutions and matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in fp32.
    Fp32,
    /// Convolutions and matmuls in bfloat16 (fp32's exponent range, 8 bits of mantissa): no
    /// loss scaling needed. Fast on CPUs with AMX or AVX-512 BF16 and GPUs of compute
    /// capability 8.0 and above.
    Bf16,
    /// Convolutions and matmuls in IEEE half precision, with dynamic loss scaling
    /// ([`LossScaler`]); CUDA only.
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The kind layers cast to; None for fp32 (no cast).
    pub fn low_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The memory order of 4-d activations (`[N, C, H, W]` indexing either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[N, C, H, W]` in memory (PyTorch's default, `contiguous()`).
    Nchw,
    /// `[N, H, W, C]` in memory (PyTorch's `channels_last`): oneDNN's direct NHWC kernels on
    /// the CPU, tensor-core-friendly on GPUs.
    ChannelsLast,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Nchw, Layout::ChannelsLast];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::ChannelsLast => "channels_last",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the layers of this thread compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compute {
    pub precision: Precision,
    /// None: each layer keeps the layout its input has (the default when nothing is entered).
    pub layout: Option<Layout>,
}

impl Compute {
    /// fp32, layouts as they come.
    pub const DEFAULT: Compute = Compute {
        precision: Precision::Fp32,
        layout: None,
    };

    pub fn new(precision: Precision, layout: Layout) -> Self {
        Self {
            precision,
            layout: Some(layout),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Compute> = const { Cell::new(Compute::DEFAULT) };
}

/// The setting layers on this thread follow now.
pub fn current() -> Compute {
    CURRENT.with(Cell::get)
}

/// While alive, this thread's layers compute as [`enter`] said; dropping it restores the
/// setting before. Not `Send`: the setting belongs to the thread that entered it.
#[must_use = "the setting lasts as long as the scope value"]
#[derive(Debug)]
pub struct ComputeScope {
    previous: Compute,
    _thread_bound: PhantomData<*const ()>,
}

impl Drop for ComputeScope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Makes this thread's layers compute in `compute` until the returned scope is dropped.
pub fn enter(compute: Compute) -> ComputeScope {
    let previous = CURRENT.with(|c| c.replace(compute));
    ComputeScope {
        previous,
        _thread_bound: PhantomData,
    }
}

/// Runs `f` with the layers in fp32 (the layout unchanged): for steps whose accuracy rests on
/// small differences, such as the finite-difference and exact Hessian-vector products of
/// second-order DARTS and iDARTS's Neumann series. In bf16 the perturbation `eps * v` of a
/// finite difference would sit below the weights' 8-bit mantissa and the difference would be
/// rounding noise.
pub fn full_precision<T>(f: impl FnOnce() -> T) -> T {
    let now = current();
    let _scope = enter(Compute {
        precision: Precision::Fp32,
        ..now
    });
    f()
}

/// `x` stored channels-last (`[N, H, W, C]` in memory), still indexed `[N, C, H, W]`; a
/// tensor already stored so is returned as is (no copy). tch has no memory-format argument,
/// so this is PyTorch's `contiguous(memory_format=torch.channels_last)` spelled with
/// permutes.
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// True when the 4-d tensor `x` is stored channels-last and not also NCHW-contiguous (a
/// tensor with C = 1 or H = W = 1 is both).
pub fn is_channels_last(x: &Tensor) -> bool {
    x.dim() == 4 && x.permute([0, 2, 3, 1]).is_contiguous() && !x.is_contiguous()
}

/// `x` in the layout this thread's setting asks for (4-d floating tensors only; others, and
/// everything when no layout is set, unchanged). Free when `x` is already in it.
pub fn to_layout(x: &Tensor) -> Tensor {
    match current().layout {
        Some(layout) if x.dim() == 4 && x.is_floating_point() => match layout {
            Layout::Nchw => x.contiguous(),
            Layout::ChannelsLast => channels_last(x),
        },
        _ => x.shallow_clone(),
    }
}

/// The low-precision kind a layer fed `x` computes in, or None to compute in `x`'s own kind
/// with the weights as they are: an fp32 input under bf16 / fp16, or an input already in
/// that kind (its weights are then cast to match). f64 is never cast.
fn low_kind_for(x: &Tensor) -> Option<Kind> {
    let low = current().precision.low_kind()?;
    (x.kind() == Kind::Float || x.kind() == low).then_some(low)
}

/// `x` (fp32) in this thread's low precision, for a network that keeps its activations there
/// between layers (see the module notes); unchanged under fp32, or when `x` is not fp32.
/// Pair with `.to_kind(Kind::Float)` where the activations leave the network.
pub fn to_activation_kind(x: &Tensor) -> Tensor {
    match current().precision.low_kind() {
        Some(low) if x.kind() == Kind::Float => x.to_kind(low),
        _ => x.shallow_clone(),
    }
}

/// Geometry of a 2-d convolution (square kernels, equal strides and paddings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
}

impl ConvShape {
    pub fn padded(padding: i64) -> Self {
        Self {
            stride: 1,
            padding,
            dilation: 1,
            groups: 1,
        }
    }
}

/// `conv2d(x, weight, bias)` in this thread's precision and layout; the output has `x`'s kind
/// (fp32 in, fp32 out; bf16 in, bf16 out).
///
/// # Shapes
/// x `[N, C_in, H, W]`, weight `[C_out, C_in / groups, k, k]`, bias `[C_out]` -> `[N, C_out, H', W']`
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, shape: ConvShape) -> Tensor {
    let x = to_layout(x);
    let run = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        x.conv2d(
            w,
            b,
            [shape.stride, shape.stride],
            [shape.padding, shape.padding],
            [shape.dilation, shape.dilation],
            shape.groups,
        )
    };
    match low_kind_for(&x) {
        None => run(&x, weight, bias),
        Some(kind) => {
            let b = bias.map(|b| b.to_kind(kind));
            // `to_kind` to the tensor's own kind is free (returns the same storage).
            run(&x.to_kind(kind), &weight.to_kind(kind), b.as_ref()).to_kind(x.kind())
        }
    }
}

/// `x W^T + b` in this thread's precision; the output has `x`'s kind (as in [`conv2d`]).
///
/// # Shapes
/// x `[.., D_in]`, weight `[D_out, D_in]`, bias `[D_out]` -> `[.., D_out]`
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match low_kind_for(x) {
        None => x.linear(weight, bias),
        Some(kind) => {
            let b = bias.map(|b| b.to_kind(kind));
            x.to_kind(kind)
                .linear(&weight.to_kind(kind), b.as_ref())
                .to_kind(x.kind())
        }
    }
}

/// A tch linear layer run through [`linear`].
pub fn linear_layer(layer: &nn::Linear, x: &Tensor) -> Tensor {
    linear(x, &layer.ws, layer.bs.as_ref())
}

/// `a @ b` in this thread's precision (when `a` is fp32); the output has `a`'s kind.
pub fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    match low_kind_for(a) {
        None => a.matmul(b),
        Some(kind) => a.to_kind(kind).matmul(&b.to_kind(kind)).to_kind(a.kind()),
    }
}

/// A 2-d convolution layer whose forward goes through [`conv2d`] (tch's `nn::Conv2D` keeps
/// its stride and padding private, so it cannot be run by a free function).
#[derive(Debug)]
pub struct Conv2d {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
    pub shape: ConvShape,
}

impl Conv2d {
    /// Variables `weight` (and `bias`) under `p`, initialised as `config` says.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, config: nn::ConvConfig) -> Self {
        let shape = ConvShape {
            stride: config.stride,
            padding: config.padding,
            dilation: config.dilation,
            groups: config.groups,
        };
        let conv = nn::conv2d(p, c_in, c_out, kernel, config);
        Self {
            ws: conv.ws,
            bs: conv.bs,
            shape,
        }
    }

    /// # Shapes
    /// `[N, C_in, H, W] -> [N, C_out, H', W']`
    pub fn forward(&self, x: &Tensor) -> Tensor {
        conv2d(x, &self.ws, self.bs.as_ref(), self.shape)
    }
}

/// Dynamic loss scaling for fp16 (`torch.cuda.amp.GradScaler`'s rule): the loss is multiplied
/// by `scale` before backward so that small gradients survive fp16's narrow exponent range;
/// the gradients are divided by it before the clip and the step. A step whose gradients
/// overflowed is skipped and the scale halved; after `growth_interval` clean steps in a row it
/// doubles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: u64,
    /// Clean steps since the last overflow or growth.
    pub clean_steps: u64,
    /// Steps skipped for overflow so far.
    pub skipped: u64,
}

impl Default for LossScaler {
    /// PyTorch's defaults: scale 2^16, growth 2x every 2000 clean steps, backoff 0.5.
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_interval: 2000,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// Divides the gradients of `params` by the scale; returns whether all are finite. On
    /// false the caller must skip the step (the gradients hold inf/NaN) and the scale has
    /// been halved.
    pub fn unscale(&mut self, params: &[Tensor]) -> bool {
        let mut grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let inv = 1.0 / self.scale;
        let mut finite = true;
        tch::no_grad(|| {
            for g in grads.iter_mut() {
                let _ = g.g_mul_scalar_(inv);
            }
            if !grads.is_empty() {
                let sums: Vec<Tensor> = grads.iter().map(|g| g.sum(Kind::Float)).collect();
                finite = Tensor::stack(&sums, 0).isfinite().all().int64_value(&[]) != 0;
            }
        });
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped += 1;
        }
        finite
    }
}

#[cfg(test)]
#[path = "compute_tests.rs"]
mod tests;
