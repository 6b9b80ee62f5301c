//! Supernets and the networks derived from them, grouped by family: [`darts`] (the DARTS CIFAR
//! search network, Liu et al., ICLR 2019, `model_search.py`, and its evaluation network,
//! `cnn/model.py`), [`rl_darts`] (the RL-DARTS encoders "standard" and "impala", Miao et al.
//! 2021, searched and derived), [`nb201`] (the NAS-Bench-201 search network, Dong & Yang, ICLR
//! 2020, xautodl `TinyNetworkDarts`) and [`mlp`] (supernets for vector observations). Every
//! supernet takes its op weights per forward ([`CellWeights`]) and never decides how they
//! were made; this file holds what they share: the [`Supernet`] trait and the cost table.

use tch::nn;
use tch::Tensor;

use super::cell::SearchCell;
use super::error::NasError;
use super::ops::{ConvGeom, LayerDesc, OpCost};
use super::partial::{EdgeBetas, PartialChannels};
use super::space::CellSpace;
use super::weights::CellWeights;

pub mod darts;
pub mod mlp;
pub mod nb201;
pub mod rl_darts;

pub use darts::{DartsEvalConfig, DartsEvalNet, DartsSearchConfig, DartsSearchNet};
pub use mlp::{MlpDartsConfig, MlpFixedEncoder, MlpSupernet};
pub use nb201::{NasBench201Config, NasBench201SearchNet};
pub use rl_darts::{RlDartsConfig, RlDartsFixedEncoder, RlDartsSupernet, RlDartsVariant};

/// Per-sample op costs summed over all cells of each type, `[num_edges][num_ops]`: the cost of
/// choosing op `o` on edge `e` of the shared normal (reduce) cell.
#[derive(Debug, Clone, PartialEq)]
pub struct OpCostTable {
    pub normal: Vec<Vec<OpCost>>,
    pub reduce: Option<Vec<Vec<OpCost>>>,
}

impl OpCostTable {
    fn zeros(space: &CellSpace, with_reduce: bool) -> Self {
        let table = vec![vec![OpCost::default(); space.num_ops()]; space.num_edges()];
        Self {
            normal: table.clone(),
            reduce: with_reduce.then_some(table),
        }
    }

    fn add(&mut self, reduction: bool, costs: &[Vec<OpCost>]) {
        let target = if reduction {
            self.reduce.as_mut().expect("reduce table exists")
        } else {
            &mut self.normal
        };
        for (row, add) in target.iter_mut().zip(costs) {
            for (cell, &c) in row.iter_mut().zip(add) {
                *cell += c;
            }
        }
    }
}

/// A network whose cells take op weights: what a search strategy trains and evaluates.
pub trait Supernet: std::fmt::Debug + Send {
    /// # Shapes
    /// `x: [N, C, H, W]` -> logits `[N, num_classes]` (vision) or features `[N, D]` (RL).
    fn forward_with(&self, x: &Tensor, weights: &CellWeights, train: bool) -> Tensor;

    /// The cell topology, hence the shape of each op-weight matrix.
    fn space(&self) -> CellSpace;

    /// Whether the network has reduction cells (and so needs `CellWeights::reduce`).
    fn has_reduction_cells(&self) -> bool;

    /// Op costs for one input of shape `[C, H, W]` (SNAS / UNAS resource terms).
    fn op_costs(&self, input_chw: [i64; 3]) -> OpCostTable;

    /// Every search cell in forward order with its reduction flag and the `[C, H, W]` of its
    /// inputs, for a network input `input_chw`: what [`crate::nas::latency`] times. Empty for
    /// networks whose cells cannot be timed alone.
    fn search_cells(&self, _input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        Vec::new()
    }

    /// Whether the cells see channels-last activations on the CPU
    /// ([`crate::nas::ops::to_channels_last`]), so that per-op timings use the layout the
    /// network runs in.
    fn channels_last(&self) -> bool {
        false
    }

    /// PC-DARTS's partial-channel setting of the cells (1 = off).
    fn partial_channels(&self) -> PartialChannels {
        PartialChannels::default()
    }

    /// Hands over PC-DARTS's edge-normalisation betas (handles on the [`crate::nas::ArchParams`]
    /// store's variables); every later forward weighs each edge's output by its per-node
    /// `softmax(beta)`. Supernets without partial-channel support refuse.
    fn set_edge_betas(&mut self, _betas: EdgeBetas) -> Result<(), NasError> {
        Err(NasError::Config(
            "this supernet has no edge normalisation (PC-DARTS): use an rl_darts or DARTS \
             search network"
                .into(),
        ))
    }
}

/// `Err(Shape)` unless `betas` are `[num_edges]` for `space`, with a reduce vector where the
/// network has reduction cells.
fn check_betas(space: &CellSpace, has_reduce: bool, betas: &EdgeBetas) -> Result<(), NasError> {
    let edges = [space.num_edges() as i64];
    let fits = betas.space == *space
        && betas.normal.size() == edges
        && match &betas.reduce {
            Some(r) => has_reduce && r.size() == edges,
            None => !has_reduce,
        };
    if !fits {
        return Err(NasError::Shape(format!(
            "edge-normalisation betas {:?} / {:?} do not fit this network's {} edges (reduction \
             cells: {has_reduce})",
            betas.normal.size(),
            betas.reduce.as_ref().map(Tensor::size),
            space.num_edges()
        )));
    }
    Ok(())
}

fn stem_plan(c_in: i64, c_out: i64, bias: bool, bn: bool) -> Vec<LayerDesc> {
    let geom = ConvGeom {
        c_in,
        c_out,
        kernel: 3,
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
        bias,
    };
    let mut plan = vec![LayerDesc::Conv { name: "conv", geom }];
    if bn {
        plan.push(LayerDesc::BatchNorm {
            name: "bn",
            channels: c_out,
            affine: true,
        });
    }
    plan
}

/// Global average pool then flatten: `[N, C, H, W] -> [N, C]`.
fn global_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}
/// Number of trainable parameters of `vs` whose name passes `keep`.
pub fn count_parameters(vs: &nn::VarStore, keep: impl Fn(&str) -> bool) -> i64 {
    let trainable: Vec<Tensor> = vs.trainable_variables();
    vs.variables()
        .into_iter()
        .filter(|(name, t)| keep(name) && trainable.iter().any(|v| v.data_ptr() == t.data_ptr()))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod derived_tests;
#[cfg(test)]
mod tests;
