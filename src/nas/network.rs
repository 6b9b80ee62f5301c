//! Supernets: the DARTS CIFAR search network (Liu et al., ICLR 2019, `model_search.py`), the
//! RL-DARTS encoders "standard" and "impala" (Miao et al. 2021), and the NAS-Bench-201 search
//! network (Dong & Yang, ICLR 2020, xautodl `TinyNetworkDarts`). Each takes its op weights per
//! forward ([`CellWeights`]) and never decides how they were made.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::ops::{
    conv_layer, network_input_layout, relu_conv_bn_plan, torch_batch_norm2d, torch_linear,
    ConvGeom, LayerDesc, Sequence,
};
use super::{
    CellInputs, CellOutput, CellSpace, CellWeights, EdgeBetas, NasError, NodeNorm, OpCost, OpSet,
    PartialChannels, SearchCell, SearchCellConfig,
};
use crate::agents::compute::{self, Conv2d};
use crate::agents::init::HiddenInit;
use crate::agents::Encoder;

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
    /// inputs, for a network input `input_chw`: what [`super::latency`] times. Empty for
    /// networks whose cells cannot be timed alone.
    fn search_cells(&self, _input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        Vec::new()
    }

    /// Whether the cells see channels-last activations on the CPU ([`to_channels_last`]), so
    /// that per-op timings use the layout the network runs in.
    fn channels_last(&self) -> bool {
        false
    }

    /// PC-DARTS's partial-channel setting of the cells (1 = off).
    fn partial_channels(&self) -> PartialChannels {
        PartialChannels::default()
    }

    /// Hands over PC-DARTS's edge-normalisation betas (handles on the [`super::ArchParams`]
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

/// Cells `layers / 3` and `2 * layers / 3` are reductions (DARTS).
pub(crate) fn is_reduction(i: usize, layers: usize) -> bool {
    i == layers / 3 || i == 2 * layers / 3
}

/// Global average pool then flatten: `[N, C, H, W] -> [N, C]`.
fn global_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

// ---------------------------------------------------------------------------------------------
// DARTS

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
    cells: Vec<SearchCell>,
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
        let (mut c_prev_prev, mut c_prev, mut c_curr) = (c_stem, c_stem, config.c);
        let mut reduction_prev = false;
        let mut cells = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let reduction = is_reduction(i, config.layers);
            if reduction {
                c_curr *= 2;
            }
            let cell_config = SearchCellConfig {
                space,
                c: c_curr,
                reduction,
                inputs: CellInputs::Two {
                    c_prev_prev,
                    c_prev,
                    reduction_prev,
                },
                output: CellOutput::Concat,
                node_norm: NodeNorm::None,
                affine: false,
                pool_bn: true,
                partial: config.partial_channels,
            };
            let cell = SearchCell::new(&p / "cells" / i, cell_config)?;
            reduction_prev = reduction;
            c_prev_prev = c_prev;
            c_prev = cell_config.out_channels();
            cells.push(cell);
        }
        let classifier = torch_linear(&p / "classifier", c_prev, config.num_classes);
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
        let (mut s0, mut s1) = (s.shallow_clone(), s);
        for cell in &self.cells {
            let w = if cell.config().reduction {
                weights.reduce_or_panic()
            } else {
                &weights.normal
            };
            let out = cell.forward_t(&[&s0, &s1], w, train);
            s0 = s1;
            s1 = out;
        }
        compute::linear_layer(&self.classifier, &global_pool(&s1))
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
        let (mut s0, mut s1) = (s, s);
        for cell in &self.cells {
            let (costs, out) = cell.op_costs(&[s0, s1]);
            table.add(cell.config().reduction, &costs);
            s0 = s1;
            s1 = out;
        }
        table
    }

    fn search_cells(&self, input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        let s = self.stem.out_shape(input_chw);
        let (mut s0, mut s1) = (s, s);
        let mut out = Vec::with_capacity(self.cells.len());
        for cell in &self.cells {
            out.push((cell, cell.config().reduction, vec![s0, s1]));
            let next = cell.op_costs(&[s0, s1]).1;
            s0 = s1;
            s1 = next;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// RL-DARTS

/// RL-DARTS supernet layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlDartsVariant {
    /// Per stage: one reduction cell, then the normal cells.
    Standard,
    /// IMPALA's conv3x3 + maxpool per stage, its residual blocks replaced by normal cells
    /// (no reduction cells, so no `alpha_reduce`).
    Impala,
}

/// RL-DARTS encoder. Defaults: the paper's "standard" supernet over the 5-op set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsConfig {
    pub variant: RlDartsVariant,
    /// Channels of each stage; every stage halves the resolution. RL-DARTS / IMPALA: [16, 32, 32].
    pub channels: Vec<i64>,
    /// Normal cells after each stage's head (reduction cell or conv + pool). RL-DARTS: 2.
    pub normal_cells_per_stage: usize,
    /// A conv3x3 stem with bias (to `channels[0]`, no activation) before the first stage
    /// ("standard" only). On by default, as the official `DartsStandardCNN`'s
    /// `use_initial_conv=True`: without it the first reduction cell would need an input
    /// projection from the 3 colour channels and would halve the resolution on raw pixels.
    pub stem: bool,
    /// Intermediate nodes per cell. RL-DARTS: 4.
    pub num_nodes: usize,
    /// `rl_darts` (5 ops, default) or `rl_darts_conv` (6 ops); any named set builds.
    pub op_set: OpSet,
    /// RL-DARTS: concat -> conv1x1 (`concat_conv1x1`); `sum`, `mean`, `last_node` also work.
    pub cell_output: CellOutput,
    /// Normalisation after each node: `none` (what the official RL-DARTS code computes, see
    /// [`NodeNorm`]), `layer` (per sample, no affine) or `batch` (batch statistics in every
    /// forward; makes one env's action depend on the other envs' frames).
    pub node_norm: NodeNorm,
    /// Width of the final linear layer = feature dimension. RL-DARTS / IMPALA: 256.
    pub embedding: i64,
    /// The final linear layer: "torch_default" (default, as the IMPALA-CNN's), "glorot_uniform"
    /// or "orthogonal" ([`HiddenInit`]). The cells' convs always start from PyTorch's defaults.
    pub init: HiddenInit,
    /// PC-DARTS (Xu et al. 2020): `K`, so that `1 / K` of each edge's channels go through its
    /// ops and the rest bypass them, plus edge normalisation; `1` = off, PC-DARTS: 4. Every
    /// stage's channel count must be a multiple of `K`.
    pub partial_channels: PartialChannels,
}

impl Default for RlDartsConfig {
    fn default() -> Self {
        Self {
            variant: RlDartsVariant::Standard,
            channels: vec![16, 32, 32],
            normal_cells_per_stage: 2,
            stem: true,
            num_nodes: 4,
            op_set: OpSet::RlDarts,
            cell_output: CellOutput::ConcatConv1x1,
            node_norm: NodeNorm::default(),
            embedding: 256,
            init: HiddenInit::default(),
            partial_channels: PartialChannels::default(),
        }
    }
}

impl RlDartsConfig {
    pub fn space(&self) -> CellSpace {
        CellSpace::rl_darts(self.op_set).with_nodes(self.num_nodes)
    }

    /// "standard" has reduction cells, "impala" does not.
    pub fn has_reduction_cells(&self) -> bool {
        self.variant == RlDartsVariant::Standard
    }

    fn validate(&self, obs_chw: &[i64]) -> Result<[i64; 3], NasError> {
        let &[c, h, w] = obs_chw else {
            return Err(NasError::Config(format!(
                "RL-DARTS encoder needs image observations [C, H, W], got {obs_chw:?}"
            )));
        };
        if c <= 0 || h <= 0 || w <= 0 {
            return Err(NasError::Config(format!(
                "observation shape {obs_chw:?} must be positive"
            )));
        }
        if self.channels.is_empty() || self.channels.iter().any(|&c| c <= 0) || self.embedding <= 0
        {
            return Err(NasError::Config(format!(
                "RL-DARTS channels {:?} and embedding {} must be positive and non-empty",
                self.channels, self.embedding
            )));
        }
        self.space().validate()?;
        Ok([c, h, w])
    }
}

/// Shared layout of the RL-DARTS encoders (supernet and derived), generic over the cell type:
/// optional stem, stages of (reduction cell | conv + maxpool) + normal cells, then
/// flatten -> relu -> linear -> relu.
#[derive(Debug)]
pub(crate) struct RlSkeleton<C> {
    stem: Option<Conv2d>,
    stages: Vec<RlStage<C>>,
    fc: nn::Linear,
    embedding: i64,
}

#[derive(Debug)]
enum RlStageHead<C> {
    ReductionCell(C),
    ConvPool(Conv2d),
}

#[derive(Debug)]
struct RlStage<C> {
    head: RlStageHead<C>,
    normal: Vec<C>,
}

/// How a skeleton builds one cell: `(path, c_prev, c, reduction) -> (cell, out_channels)`.
pub(crate) type MakeCell<'a, C> =
    dyn FnMut(nn::Path, i64, i64, bool) -> Result<(C, i64), NasError> + 'a;

fn conv3x3_bias(p: nn::Path, c_in: i64, c_out: i64) -> Conv2d {
    conv_layer(
        p,
        &ConvGeom {
            c_in,
            c_out,
            kernel: 3,
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
            bias: true,
        },
    )
}

impl<C> RlSkeleton<C> {
    /// Variables under `p`: `stem`, `stage{i}.{reduce|conv}`, `stage{i}.normal{j}`, `fc`.
    pub(crate) fn new(
        p: &nn::Path,
        config: &RlDartsConfig,
        obs_chw: &[i64],
        make_cell: &mut MakeCell<'_, C>,
    ) -> Result<Self, NasError> {
        let [c_obs, mut h, mut w] = config.validate(obs_chw)?;
        let mut c_prev = c_obs;
        let stem = (config.stem && config.variant == RlDartsVariant::Standard).then(|| {
            let conv = conv3x3_bias(p / "stem", c_obs, config.channels[0]);
            c_prev = config.channels[0];
            conv
        });
        let mut stages = Vec::with_capacity(config.channels.len());
        for (i, &c) in config.channels.iter().enumerate() {
            let sp = p / format!("stage{i}");
            let head = match config.variant {
                RlDartsVariant::Standard => {
                    let (cell, c_out) = make_cell(&sp / "reduce", c_prev, c, true)?;
                    c_prev = c_out;
                    RlStageHead::ReductionCell(cell)
                }
                RlDartsVariant::Impala => {
                    let conv = conv3x3_bias(&sp / "conv", c_prev, c);
                    c_prev = c;
                    RlStageHead::ConvPool(conv)
                }
            };
            // Both heads halve the size: ceil(h / 2) (3x3 stride-2 ops and pools, padding 1).
            h = (h + 1) / 2;
            w = (w + 1) / 2;
            let mut normal = Vec::with_capacity(config.normal_cells_per_stage);
            for j in 0..config.normal_cells_per_stage {
                let (cell, c_out) = make_cell(&sp / format!("normal{j}"), c_prev, c, false)?;
                c_prev = c_out;
                normal.push(cell);
            }
            stages.push(RlStage { head, normal });
        }
        // Orthogonal with the ReLU gain and zero bias, as the IMPALA-CNN baseline's final
        // layer (CleanRL's layer_init), so the PPO heads see the same feature scale.
        let fc_config = nn::LinearConfig {
            ws_init: nn::Init::Orthogonal { gain: 2f64.sqrt() },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let fc = nn::linear(p / "fc", c_prev * h * w, config.embedding, fc_config);
        config.init.apply(&fc.ws, fc.bs.as_ref());
        Ok(Self {
            stem,
            stages,
            fc,
            embedding: config.embedding,
        })
    }

    /// `run(cell, x, reduction)` evaluates one cell.
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, embedding]`
    pub(crate) fn forward(
        &self,
        obs: &Tensor,
        mut run: impl FnMut(&C, &Tensor, bool) -> Tensor,
    ) -> Tensor {
        let mut x = match &self.stem {
            Some(conv) => conv.forward(obs),
            None => obs.shallow_clone(),
        };
        for stage in &self.stages {
            x = match &stage.head {
                RlStageHead::ReductionCell(cell) => run(cell, &x, true),
                RlStageHead::ConvPool(conv) => {
                    conv.forward(&x)
                        .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
                }
            };
            for cell in &stage.normal {
                x = run(cell, &x, false);
            }
        }
        compute::linear_layer(&self.fc, &x.flatten(1, -1).relu()).relu()
    }

    pub(crate) fn embedding(&self) -> i64 {
        self.embedding
    }

    /// Every cell with its reduction flag and input shape, for cost tables.
    fn cells_with_inputs(
        &self,
        obs_chw: [i64; 3],
        out_shape: impl Fn(&C, [i64; 3]) -> [i64; 3],
    ) -> Vec<(&C, bool, [i64; 3])> {
        let mut shape = match &self.stem {
            Some(conv) => [conv.ws.size()[0], obs_chw[1], obs_chw[2]],
            None => obs_chw,
        };
        let mut out = Vec::new();
        for stage in &self.stages {
            match &stage.head {
                RlStageHead::ReductionCell(cell) => {
                    out.push((cell, true, shape));
                    shape = out_shape(cell, shape);
                }
                RlStageHead::ConvPool(conv) => {
                    shape = [conv.ws.size()[0], (shape[1] + 1) / 2, (shape[2] + 1) / 2];
                }
            }
            for cell in &stage.normal {
                out.push((cell, false, shape));
                shape = out_shape(cell, shape);
            }
        }
        out
    }
}

/// The RL-DARTS supernet encoder: an [`Encoder`] whose architecture argument is the op
/// weights of the forward ([`CellWeights`], computed by the caller from its search strategy),
/// and a [`Supernet`].
#[derive(Debug)]
pub struct RlDartsSupernet {
    config: RlDartsConfig,
    skeleton: RlSkeleton<SearchCell>,
    edge_betas: Option<EdgeBetas>,
}

impl RlDartsSupernet {
    /// `obs_chw`: one preprocessed observation's `[C, H, W]` (Procgen: `[3, 64, 64]`).
    pub fn new(p: nn::Path, config: &RlDartsConfig, obs_chw: &[i64]) -> Result<Self, NasError> {
        let space = config.space();
        let mut make = |cp: nn::Path, c_prev: i64, c: i64, reduction: bool| {
            let cell_config = SearchCellConfig {
                space,
                c,
                reduction,
                inputs: CellInputs::One { c_prev },
                output: config.cell_output,
                node_norm: config.node_norm,
                affine: false,
                pool_bn: false,
                partial: config.partial_channels,
            };
            Ok((
                SearchCell::new(cp, cell_config)?,
                cell_config.out_channels(),
            ))
        };
        let skeleton = RlSkeleton::new(&p, config, obs_chw, &mut make)?;
        Ok(Self {
            config: config.clone(),
            skeleton,
            edge_betas: None,
        })
    }

    pub fn config(&self) -> &RlDartsConfig {
        &self.config
    }
}

impl Supernet for RlDartsSupernet {
    /// # Shapes
    /// `x: [N, C, H, W]` -> features `[N, embedding]`
    fn forward_with(&self, x: &Tensor, weights: &CellWeights, train: bool) -> Tensor {
        let attached = self.edge_betas.as_ref().map(|b| b.attach(weights));
        let weights = attached.as_ref().unwrap_or(weights);
        self.skeleton.forward(x, |cell, h, reduction| {
            let w = if reduction {
                weights.reduce_or_panic()
            } else {
                &weights.normal
            };
            cell.forward_t(&[h], w, train)
        })
    }

    fn space(&self) -> CellSpace {
        self.config.space()
    }

    fn has_reduction_cells(&self) -> bool {
        self.config.has_reduction_cells()
    }

    fn partial_channels(&self) -> PartialChannels {
        self.config.partial_channels
    }

    fn set_edge_betas(&mut self, betas: EdgeBetas) -> Result<(), NasError> {
        check_betas(&self.space(), self.has_reduction_cells(), &betas)?;
        self.edge_betas = Some(betas);
        Ok(())
    }

    fn op_costs(&self, input_chw: [i64; 3]) -> OpCostTable {
        let mut table = OpCostTable::zeros(&self.space(), self.has_reduction_cells());
        let cells = self
            .skeleton
            .cells_with_inputs(input_chw, |cell, chw| cell.op_costs(&[chw]).1);
        for (cell, reduction, chw) in cells {
            table.add(reduction, &cell.op_costs(&[chw]).0);
        }
        table
    }

    fn search_cells(&self, input_chw: [i64; 3]) -> Vec<(&SearchCell, bool, Vec<[i64; 3]>)> {
        self.skeleton
            .cells_with_inputs(input_chw, |cell, chw| cell.op_costs(&[chw]).1)
            .into_iter()
            .map(|(cell, reduction, chw)| (cell, reduction, vec![chw]))
            .collect()
    }
}

impl Encoder<CellWeights> for RlDartsSupernet {
    /// Ops run in inference mode (`train = false`): RL-DARTS's op sets have no BatchNorm, and a
    /// DARTS op set's BatchNorm then uses its fixed initial statistics, the same for every
    /// forward, so that rollouts and updates evaluate one function of each frame.
    ///
    /// # Shapes
    /// `[N, C, H, W]` f32 in [0, 1] -> `[N, embedding]`
    fn features(&self, obs: &Tensor, weights: &CellWeights) -> Tensor {
        self.forward_with(obs, weights, false)
    }

    fn feature_dim(&self) -> i64 {
        self.skeleton.embedding()
    }
}

// ---------------------------------------------------------------------------------------------
// NAS-Bench-201

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
#[path = "network_tests.rs"]
mod tests;
