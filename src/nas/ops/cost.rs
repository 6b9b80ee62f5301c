//! The analytic per-sample cost of an op (parameters, FLOPs, memory access), read off its
//! layer plan: SNAS's resource penalty (Xie et al., ICLR 2019) and UNAS's.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use super::plans::{plan, pooled, LayerDesc, OpSpec};
use super::registry::OpKind;
use crate::nas::error::NasError;

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

impl OpKind {
    /// Per-sample cost of this op on an input of shape `[C, H, W]`, without building it.
    pub fn cost(self, spec: &OpSpec, input_chw: [i64; 3]) -> Result<OpCost, NasError> {
        Ok(cost_of(&plan(self, spec)?, input_chw).0)
    }
}

impl LayerDesc {
    pub(super) fn cost(&self, [c, h, w]: [i64; 3]) -> (OpCost, [i64; 3]) {
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

pub(super) fn cost_of(plan: &[LayerDesc], input_chw: [i64; 3]) -> (OpCost, [i64; 3]) {
    plan.iter()
        .fold((OpCost::default(), input_chw), |(total, shape), layer| {
            let (cost, out) = layer.cost(shape);
            (total + cost, out)
        })
}
