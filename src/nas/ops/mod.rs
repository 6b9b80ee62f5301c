//! The candidate ops: DARTS's eight ops (Liu et al., ICLR 2019, `cnn/operations.py`),
//! the RL-DARTS op sets (Miao et al. 2021) and NAS-Bench-201's five (Dong & Yang, ICLR 2020,
//! `xautodl/models/cell_operations.py`), each with an analytic per-sample cost (parameters,
//! FLOPs, memory access) for SNAS's resource penalty (Xie et al., ICLR 2019) and UNAS.
//!
//! Every op is a [`Sequence`] of primitive layers planned from `(kind, spec)` as plain data
//! ([`LayerDesc`]); the forward pass and the cost are both read off that one plan, so they
//! cannot drift apart.
//!
//! One concern per file: [`registry`] (op names and op sets), [`plans`] (layer plans),
//! [`cost`] (the cost model), [`kernels`] (torch layers, layouts, kernels), [`shared`]
//! (sharing and fusing work across the ops that read one input) and [`sequence`] (the built
//! [`Sequence`] and [`Op`]).

pub mod cost;
pub mod kernels;
pub mod plans;
pub mod registry;
pub mod sequence;
pub mod shared;

pub use cost::OpCost;
pub(crate) use kernels::{conv_layer, torch_batch_norm2d, torch_linear};
pub use kernels::{is_channels_last, network_input_layout, to_channels_last, zeros_in_layout_of};
pub(crate) use plans::{factorized_reduce_plan, input_projection_plan, relu_conv_bn_plan};
pub use plans::{plan, ConvGeom, LayerDesc, OpSpec};
pub use registry::{OpKind, OpSet, StrideStyle};
pub use sequence::{Op, Sequence};
pub use shared::{LeadingConv, SharedInput};

#[cfg(test)]
mod tests;
