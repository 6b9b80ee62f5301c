//! The NAS-Bench-201 search network (Dong & Yang, ICLR 2020, xautodl `TinyNetworkDarts`).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{global_pool, stem_plan, OpCostTable, Supernet};
use crate::agents::compute::{self, Conv2d};
use crate::nas::cell::{CellInputs, CellOutput, SearchCell, SearchCellConfig};
use crate::nas::error::NasError;
use crate::nas::norm::NodeNorm;
use crate::nas::ops::{
    conv_layer, relu_conv_bn_plan, torch_batch_norm2d, torch_linear, ConvGeom, Sequence,
};
use crate::nas::partial::PartialChannels;
use crate::nas::space::CellSpace;
use crate::nas::weights::CellWeights;

/// NAS-Bench-201 search network. Defaults: the benchmark's (C = 16, N = 5 cells per stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NasBench201Config {
    /// Channels of the first stage (then 2C, 4C). NAS-Bench-201: 16.
    pub c: i64,
    /// Cells per stage. NAS-Bench-201: 5.
    pub cells_per_stage: usize,
    pub num_classes: i64,
    pub in_channels: i64,
}

impl Default for NasBench201Config {
    fn default() -> Self {
        Self {
            c: 16,
            cells_per_stage: 5,
            num_classes: 10,
            in_channels: 3,
        }
    }
}

/// xautodl's ResNetBasicblock at stride 2 (the fixed reduction between stages):
/// `conv_b(conv_a(x)) + conv1x1(avgpool2x2(x))`.
#[derive(Debug)]
struct ResNetBasicBlock {
    conv_a: Sequence,
    conv_b: Sequence,
    downsample: Conv2d,
}

impl ResNetBasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let down = ConvGeom {
            c_in,
            c_out,
            kernel: 1,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: false,
        };
        Self {
            conv_a: Sequence::new(&p / "conv_a", relu_conv_bn_plan(c_in, c_out, 3, 2, 1, true)),
            conv_b: Sequence::new(
                &p / "conv_b",
                relu_conv_bn_plan(c_out, c_out, 3, 1, 1, true),
            ),
            downsample: conv_layer(&p / "downsample", &down),
        }
    }

    /// # Shapes
    /// `[N, C_in, H, W] -> [N, C_out, H / 2, W / 2]`
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let residual =
            self.downsample
                .forward(&x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None));
        self.conv_b
            .forward_t(&self.conv_a.forward_t(x, train), train)
            + residual
    }
}

#[derive(Debug)]
enum Nb201Layer {
    Cell(SearchCell),
    Reduction(ResNetBasicBlock),
}

/// The NAS-Bench-201 search network: stem, 3 stages of search cells joined by residual
/// reduction blocks, BN + relu, global average pool, classifier.
#[derive(Debug)]
pub struct NasBench201SearchNet {
    config: NasBench201Config,
    stem: Sequence,
    layers: Vec<Nb201Layer>,
    last_bn: nn::BatchNorm,
    classifier: nn::Linear,
}

impl NasBench201SearchNet {
    /// Variables under `p`: `stem`, `cells.{i}` (cells and reduction blocks, one index),
    /// `lastact`, `classifier`.
    pub fn new(p: nn::Path, config: &NasBench201Config) -> Result<Self, NasError> {
        if config.c <= 0
            || config.cells_per_stage == 0
            || config.num_classes <= 0
            || config.in_channels <= 0
        {
            return Err(NasError::Config(format!(
                "NAS-Bench-201 network: every size must be positive, got {config:?}"
            )));
        }
        let space = CellSpace::nas_bench_201();
        let stem = Sequence::new(
            &p / "stem",
            stem_plan(config.in_channels, config.c, false, true),
        );
        let mut layers = Vec::new();
        let mut c_prev = config.c;
        for stage in 0..3 {
            let c = config.c << stage;
            if stage > 0 {
                layers.push(Nb201Layer::Reduction(ResNetBasicBlock::new(
                    &p / "cells" / layers.len(),
                    c_prev,
                    c,
                )));
                c_prev = c;
            }
            for _ in 0..config.cells_per_stage {
                let cell_config = SearchCellConfig {
                    space,
                    c,
                    reduction: false,
                    inputs: CellInputs::One { c_prev },
                    output: CellOutput::LastNode,
                    node_norm: NodeNorm::None,
                    affine: false,
                    pool_bn: false,
                    partial: PartialChannels::default(),
                };
                layers.push(Nb201Layer::Cell(SearchCell::new(
                    &p / "cells" / layers.len(),
                    cell_config,
                )?));
            }
        }
        let last_bn = torch_batch_norm2d(&p / "lastact", c_prev, true);
        let classifier = torch_linear(&p / "classifier", c_prev, config.num_classes);
        Ok(Self {
            config: config.clone(),
            stem,
            layers,
            last_bn,
            classifier,
        })
    }

    pub fn config(&self) -> &NasBench201Config {
        &self.config
    }
}

impl Supernet for NasBench201SearchNet {
    /// # Shapes
    /// `x: [N, in_channels, H, W]` -> logits `[N, num_classes]`
    fn forward_with(&self, x: &Tensor, weights: &CellWeights, train: bool) -> Tensor {
        let mut h = self.stem.forward_t(x, train);
        for layer in &self.layers {
            h = match layer {
                Nb201Layer::Cell(cell) => cell.forward_t(&[&h], &weights.normal, train),
                Nb201Layer::Reduction(block) => block.forward_t(&h, train),
            };
        }
        let h = self.last_bn.forward_t(&h, train).relu();
        compute::linear_layer(&self.classifier, &global_pool(&h))
    }

    fn space(&self) -> CellSpace {
        CellSpace::nas_bench_201()
    }

    fn has_reduction_cells(&self) -> bool {
        false
    }

    fn op_costs(&self, input_chw: [i64; 3]) -> OpCostTable {
        let mut table = OpCostTable::zeros(&self.space(), false);
        let mut shape = self.stem.out_shape(input_chw);
        for layer in &self.layers {
            match layer {
                Nb201Layer::Cell(cell) => {
                    let (costs, out) = cell.op_costs(&[shape]);
                    table.add(false, &costs);
                    shape = out;
                }
                Nb201Layer::Reduction(block) => {
                    shape = [block.downsample.ws.size()[0], shape[1] / 2, shape[2] / 2];
                }
            }
        }
        table
    }

    fn search_cells(&self, input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        let mut out = Vec::new();
        let mut shape = self.stem.out_shape(input_chw);
        for layer in &self.layers {
            match layer {
                Nb201Layer::Cell(cell) => {
                    out.push((cell, false, vec![shape]));
                    shape = cell.op_costs(&[shape]).1;
                }
                Nb201Layer::Reduction(block) => {
                    shape = [block.downsample.ws.size()[0], shape[1] / 2, shape[2] / 2];
                }
            }
        }
        out
    }
}
