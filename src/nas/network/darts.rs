//! The DARTS CIFAR networks (Liu et al., ICLR 2019): the search network (`model_search.py`)
//! and the evaluation network for a genotype (`cnn/model.py` `NetworkCIFAR`: drop-path,
//! auxiliary head), built by one cell-stack builder ([`DartsCells`]).

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{check_betas, global_pool, stem_plan, OpCostTable, Supernet};
use crate::agents::compute::{self, Conv2d};
use crate::nas::cell::{CellInputs, CellOutput, SearchCell, SearchCellConfig};
use crate::nas::error::NasError;
use crate::nas::fixed::{FixedCell, FixedCellConfig};
use crate::nas::genotype::{CellType, Genotype};
use crate::nas::norm::NodeNorm;
use crate::nas::ops::{
    conv_layer, network_input_layout, torch_batch_norm2d, torch_linear, ConvGeom, OpSet, Sequence,
    StrideStyle,
};
use crate::nas::partial::{EdgeBetas, PartialChannels};
use crate::nas::space::CellSpace;
use crate::nas::weights::CellWeights;

/// Cells `layers / 3` and `2 * layers / 3` are reductions (DARTS).
pub(crate) fn is_reduction(i: usize, layers: usize) -> bool {
    i == layers / 3 || i == 2 * layers / 3
}

/// Where one cell of a [`DartsCells`] stack sits: what the cell maker is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DartsCellSlot {
    /// Position in the stack.
    pub index: usize,
    /// Cells `layers / 3` and `2 * layers / 3` reduce the resolution and double the channels.
    pub reduction: bool,
    /// Channels of every node of the cell.
    pub c: i64,
    /// The outputs of the two cells before it (the stem's output for the first two).
    pub inputs: CellInputs,
}

/// The stack of two-input cells of both DARTS networks, generic over the cell type (search
/// cell or fixed cell): the channel and reduction bookkeeping of DARTS's
/// `for i in range(layers)` loop, written once for the search and the evaluation network.
#[derive(Debug)]
pub(crate) struct DartsCells<C> {
    cells: Vec<C>,
    out_channels: i64,
}

impl<C> std::ops::Index<usize> for DartsCells<C> {
    type Output = C;

    fn index(&self, i: usize) -> &C {
        &self.cells[i]
    }
}

/// How a stack builds one cell: `(path, slot) -> (cell, out_channels)`.
pub(crate) type MakeDartsCell<'a, C> =
    dyn FnMut(nn::Path, DartsCellSlot) -> Result<(C, i64), NasError> + 'a;

impl<C> DartsCells<C> {
    /// Builds `layers` cells in order, cell `i` under `p / "cells" / i`, after a stem of
    /// `c_stem` channels; the first cell has `c` channels per node.
    pub(crate) fn build(
        p: &nn::Path,
        layers: usize,
        c_stem: i64,
        c: i64,
        make_cell: &mut MakeDartsCell<'_, C>,
    ) -> Result<Self, NasError> {
        let (mut c_prev_prev, mut c_prev, mut c_curr) = (c_stem, c_stem, c);
        let mut reduction_prev = false;
        let mut cells = Vec::with_capacity(layers);
        for index in 0..layers {
            let reduction = is_reduction(index, layers);
            if reduction {
                c_curr *= 2;
            }
            let slot = DartsCellSlot {
                index,
                reduction,
                c: c_curr,
                inputs: CellInputs::Two {
                    c_prev_prev,
                    c_prev,
                    reduction_prev,
                },
            };
            let (cell, c_out) = make_cell(p / "cells" / index, slot)?;
            reduction_prev = reduction;
            c_prev_prev = c_prev;
            c_prev = c_out;
            cells.push(cell);
        }
        Ok(Self {
            cells,
            out_channels: c_prev,
        })
    }

    /// Output channels of the last cell.
    pub(crate) fn out_channels(&self) -> i64 {
        self.out_channels
    }

    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Runs the stack on states of any kind (tensors, shapes): `step(i, cell, s0, s1)` is cell
    /// `i` on the outputs of the two cells before it, the first cell reading `s0` and `s1`
    /// (the stem's output twice). Returns the last cell's output.
    pub(crate) fn fold<'a, S>(
        &'a self,
        s0: S,
        s1: S,
        mut step: impl FnMut(usize, &'a C, &S, &S) -> S,
    ) -> S {
        let (mut s0, mut s1) = (s0, s1);
        for (i, cell) in self.cells.iter().enumerate() {
            let out = step(i, cell, &s0, &s1);
            s0 = s1;
            s1 = out;
        }
        s1
    }
}

/// DARTS CIFAR search network. Defaults: the paper's (C = 16, 8 cells, 4 nodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DartsSearchConfig {
    /// Initial channels C (the stem outputs `stem_multiplier * C`). DARTS search: 16.
    pub c: i64,
    /// Number of cells; cells `layers/3` and `2*layers/3` reduce and double C. DARTS search: 8.
    pub layers: usize,
    pub num_classes: i64,
    /// Intermediate nodes per cell (all concatenated into the output). DARTS: 4.
    pub num_nodes: usize,
    /// DARTS: 3.
    pub stem_multiplier: i64,
    /// Image channels.
    pub in_channels: i64,
    pub op_set: OpSet,
    /// PC-DARTS (Xu et al. 2020): `K`, so that `1 / K` of each edge's channels go through its
    /// ops and the rest bypass them, plus edge normalisation; `1` = off (DARTS), PC-DARTS: 4.
    /// Every cell's channel count must be a multiple of `K`.
    pub partial_channels: PartialChannels,
}

impl Default for DartsSearchConfig {
    fn default() -> Self {
        Self {
            c: 16,
            layers: 8,
            num_classes: 10,
            num_nodes: 4,
            stem_multiplier: 3,
            in_channels: 3,
            op_set: OpSet::Darts,
            partial_channels: PartialChannels::default(),
        }
    }
}

/// The DARTS search network: stem conv3x3 + BN, `layers` two-input cells, global average pool,
/// linear classifier.
#[derive(Debug)]
pub struct DartsSearchNet {
    config: DartsSearchConfig,
    stem: Sequence,
    pub(super) cells: DartsCells<SearchCell>,
    classifier: nn::Linear,
    edge_betas: Option<EdgeBetas>,
}

impl DartsSearchNet {
    /// Variables under `p`: `stem`, `cells.{i}`, `classifier`.
    pub fn new(p: nn::Path, config: &DartsSearchConfig) -> Result<Self, NasError> {
        let space = CellSpace {
            num_inputs: 2,
            num_nodes: config.num_nodes,
            op_set: config.op_set,
        };
        space.validate()?;
        if config.c <= 0
            || config.layers == 0
            || config.num_classes <= 0
            || config.stem_multiplier <= 0
        {
            return Err(NasError::Config(format!(
                "DARTS search network: every size must be positive, got {config:?}"
            )));
        }
        let c_stem = config.stem_multiplier * config.c;
        let stem = Sequence::new(
            &p / "stem",
            stem_plan(config.in_channels, c_stem, false, true),
        );
        let mut make = |cp: nn::Path, slot: DartsCellSlot| {
            let cell_config = SearchCellConfig {
                space,
                c: slot.c,
                reduction: slot.reduction,
                inputs: slot.inputs,
                output: CellOutput::Concat,
                node_norm: NodeNorm::None,
                affine: false,
                pool_bn: true,
                partial: config.partial_channels,
            };
            Ok((
                SearchCell::new(cp, cell_config)?,
                cell_config.out_channels(),
            ))
        };
        let cells = DartsCells::build(&p, config.layers, c_stem, config.c, &mut make)?;
        let classifier = torch_linear(&p / "classifier", cells.out_channels(), config.num_classes);
        Ok(Self {
            config: config.clone(),
            stem,
            cells,
            classifier,
            edge_betas: None,
        })
    }

    pub fn config(&self) -> &DartsSearchConfig {
        &self.config
    }
}

impl Supernet for DartsSearchNet {
    /// # Shapes
    /// `x: [N, in_channels, H, W]` -> logits `[N, num_classes]`
    fn forward_with(&self, x: &Tensor, weights: &CellWeights, train: bool) -> Tensor {
        let attached = self.edge_betas.as_ref().map(|b| b.attach(weights));
        let weights = attached.as_ref().unwrap_or(weights);
        let s = self.stem.forward_t(&network_input_layout(x), train);
        let out = self.cells.fold(s.shallow_clone(), s, |_, cell, s0, s1| {
            let w = if cell.config().reduction {
                weights.reduce_or_panic()
            } else {
                &weights.normal
            };
            cell.forward_t(&[s0, s1], w, train)
        });
        compute::linear_layer(&self.classifier, &global_pool(&out))
    }

    fn space(&self) -> CellSpace {
        CellSpace {
            num_inputs: 2,
            num_nodes: self.config.num_nodes,
            op_set: self.config.op_set,
        }
    }

    fn has_reduction_cells(&self) -> bool {
        true
    }

    fn channels_last(&self) -> bool {
        true
    }

    fn partial_channels(&self) -> PartialChannels {
        self.config.partial_channels
    }

    fn set_edge_betas(&mut self, betas: EdgeBetas) -> Result<(), NasError> {
        check_betas(&self.space(), true, &betas)?;
        self.edge_betas = Some(betas);
        Ok(())
    }

    fn op_costs(&self, input_chw: [i64; 3]) -> OpCostTable {
        let mut table = OpCostTable::zeros(&self.space(), true);
        let s = self.stem.out_shape(input_chw);
        self.cells.fold(s, s, |_, cell, &s0, &s1| {
            let (costs, out) = cell.op_costs(&[s0, s1]);
            table.add(cell.config().reduction, &costs);
            out
        });
        table
    }

    fn search_cells(&self, input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        let s = self.stem.out_shape(input_chw);
        let mut out = Vec::with_capacity(self.cells.len());
        self.cells.fold(s, s, |_, cell, &s0, &s1| {
            out.push((cell, cell.config().reduction, vec![s0, s1]));
            cell.op_costs(&[s0, s1]).1
        });
        out
    }
}

/// DARTS CIFAR evaluation network. Defaults: the paper's (C = 36, 20 cells, auxiliary head,
/// drop-path 0.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DartsEvalConfig {
    /// Initial channels. DARTS CIFAR-10: 36.
    pub c: i64,
    /// Cells; `layers/3` and `2*layers/3` reduce. DARTS CIFAR-10: 20.
    pub layers: usize,
    pub num_classes: i64,
    /// Auxiliary classifier on the output of cell `2*layers/3` (its loss weight, 0.4 in DARTS,
    /// belongs to the training loop).
    pub auxiliary: bool,
    /// Maximum drop-path probability; DARTS ramps it linearly over training via
    /// [`DartsEvalNet::set_drop_path_prob`]. DARTS: 0.2.
    pub drop_path_prob: f64,
    pub stem_multiplier: i64,
    pub in_channels: i64,
    /// Input height = width; fixes the auxiliary head's input size (DARTS assumes 8x8 there,
    /// i.e. 32x32 images).
    pub image_size: i64,
}

impl Default for DartsEvalConfig {
    fn default() -> Self {
        Self {
            c: 36,
            layers: 20,
            num_classes: 10,
            auxiliary: true,
            drop_path_prob: 0.2,
            stem_multiplier: 3,
            in_channels: 3,
            image_size: 32,
        }
    }
}

/// DARTS's AuxiliaryHeadCIFAR: relu, avgpool 5 stride 3, conv1x1 -> 128, BN, relu,
/// conv2x2 -> 768, BN, relu, linear.
#[derive(Debug)]
pub(super) struct AuxiliaryHead {
    conv1: Conv2d,
    bn1: nn::BatchNorm,
    conv2: Conv2d,
    bn2: nn::BatchNorm,
    classifier: nn::Linear,
}

impl AuxiliaryHead {
    pub(super) fn new(p: nn::Path, c: i64, size: i64, num_classes: i64) -> Result<Self, NasError> {
        // avgpool 5/3 then conv 2x2 (no padding).
        let pooled = (size - 5) / 3 + 1;
        let out = pooled - 1;
        if size < 5 || out < 1 {
            return Err(NasError::Config(format!(
                "the auxiliary head needs a feature map of at least 8x8 (images of 32x32), got {size}x{size}"
            )));
        }
        let geom = |c_in, c_out, kernel| ConvGeom {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: false,
        };
        Ok(Self {
            conv1: conv_layer(&p / "conv1", &geom(c, 128, 1)),
            bn1: torch_batch_norm2d(&p / "bn1", 128, true),
            conv2: conv_layer(&p / "conv2", &geom(128, 768, 2)),
            bn2: torch_batch_norm2d(&p / "bn2", 768, true),
            classifier: torch_linear(&p / "classifier", 768 * out * out, num_classes),
        })
    }

    /// # Shapes
    /// `[N, C, 8, 8] -> [N, num_classes]`
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x
            .relu()
            .avg_pool2d([5, 5], [3, 3], [0, 0], false, false, None);
        let h = self.bn1.forward_t(&self.conv1.forward(&h), train).relu();
        let h = self.bn2.forward_t(&self.conv2.forward(&h), train).relu();
        compute::linear_layer(&self.classifier, &h.flatten(1, -1))
    }
}

/// The DARTS evaluation network for a genotype.
#[derive(Debug)]
pub struct DartsEvalNet {
    config: DartsEvalConfig,
    stem: Sequence,
    pub(super) cells: DartsCells<FixedCell>,
    auxiliary: Option<AuxiliaryHead>,
    classifier: nn::Linear,
    drop_path_prob: f64,
}

impl DartsEvalNet {
    /// Variables under `p`: `stem`, `cells.{i}`, `auxiliary_head`, `classifier`.
    pub fn new(
        p: nn::Path,
        config: &DartsEvalConfig,
        genotype: &Genotype,
    ) -> Result<Self, NasError> {
        if config.c <= 0 || config.layers == 0 || config.num_classes <= 0 || config.image_size <= 0
        {
            return Err(NasError::Config(format!(
                "DARTS evaluation network: every size must be positive, got {config:?}"
            )));
        }
        if !(0.0..1.0).contains(&config.drop_path_prob) {
            return Err(NasError::Config(format!(
                "drop_path_prob must be in [0, 1), got {}",
                config.drop_path_prob
            )));
        }
        genotype.validate(2, true)?;
        let c_stem = config.stem_multiplier * config.c;
        // The same stem as the search network's: conv 3x3 (no bias) + affine BN.
        let stem = Sequence::new(
            &p / "stem",
            stem_plan(config.in_channels, c_stem, false, true),
        );
        let mut size = config.image_size;
        let mut aux = None;
        let aux_at = 2 * config.layers / 3;
        let mut make = |cp: nn::Path, slot: DartsCellSlot| {
            if slot.reduction {
                size = (size + 1) / 2;
            }
            let cell_type = if slot.reduction {
                CellType::Reduce
            } else {
                CellType::Normal
            };
            let (genes, concat) = genotype.cell(cell_type);
            let cell_config = FixedCellConfig {
                c: slot.c,
                reduction: slot.reduction,
                inputs: slot.inputs,
                output: CellOutput::Concat,
                node_norm: NodeNorm::None,
                affine: true,
                stride_style: StrideStyle::Darts,
            };
            let cell = FixedCell::new(cp, genes, concat, cell_config)?;
            let c_out = cell.out_channels();
            // Built right after its cell, as DARTS does, so that seeded initial weights match.
            if slot.index == aux_at && config.auxiliary {
                aux = Some(AuxiliaryHead::new(
                    &p / "auxiliary_head",
                    c_out,
                    size,
                    config.num_classes,
                )?);
            }
            Ok((cell, c_out))
        };
        let cells = DartsCells::build(&p, config.layers, c_stem, config.c, &mut make)?;
        let classifier = torch_linear(&p / "classifier", cells.out_channels(), config.num_classes);
        Ok(Self {
            config: config.clone(),
            stem,
            cells,
            auxiliary: aux,
            classifier,
            drop_path_prob: config.drop_path_prob,
        })
    }

    pub fn config(&self) -> &DartsEvalConfig {
        &self.config
    }

    /// DARTS sets `drop_path_prob * epoch / epochs` at the start of every epoch.
    pub fn set_drop_path_prob(&mut self, p: f64) {
        self.drop_path_prob = p;
    }

    pub fn drop_path_prob(&self) -> f64 {
        self.drop_path_prob
    }

    /// Logits, and the auxiliary logits when training with the auxiliary head.
    ///
    /// # Shapes
    /// `x: [N, in_channels, H, W]` -> (`[N, num_classes]`, `Some([N, num_classes])` if training
    /// with `auxiliary`)
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        // The run's layout; NHWC on the CPU when none is set, like the search network.
        let s = self.stem.forward_t(&network_input_layout(x), train);
        let mut aux_logits = None;
        let aux_at = 2 * self.config.layers / 3;
        let out = self.cells.fold(s.shallow_clone(), s, |i, cell, s0, s1| {
            let out = cell.forward_t(&[s0, s1], self.drop_path_prob, train);
            if i == aux_at && train {
                aux_logits = self
                    .auxiliary
                    .as_ref()
                    .map(|head| head.forward_t(&out, train));
            }
            out
        });
        (
            compute::linear_layer(&self.classifier, &global_pool(&out)),
            aux_logits,
        )
    }
}
