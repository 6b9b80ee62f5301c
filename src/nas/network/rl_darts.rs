//! The RL-DARTS encoders (Miao et al. 2021), "standard" and "impala": the supernet searched
//! with op weights and the encoder rebuilt from a derived genotype, both laid out by one
//! skeleton ([`RlSkeleton`]).

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::{check_betas, OpCostTable, Supernet};
use crate::agents::compute::{self, Conv2d};
use crate::agents::init::HiddenInit;
use crate::agents::Encoder;
use crate::nas::cell::{CellInputs, CellOutput, SearchCell, SearchCellConfig};
use crate::nas::error::NasError;
use crate::nas::fixed::{FixedCell, FixedCellConfig};
use crate::nas::genotype::{CellType, Genotype};
use crate::nas::norm::NodeNorm;
use crate::nas::ops::{conv_layer, ConvGeom, OpKind, OpSet};
use crate::nas::partial::{EdgeBetas, PartialChannels};
use crate::nas::space::CellSpace;
use crate::nas::weights::CellWeights;

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
    pub(super) fn cells_with_inputs(
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
    pub(super) skeleton: RlSkeleton<SearchCell>,
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

/// The RL-DARTS encoder rebuilt with discrete cells (same layout as the supernet it came
/// from: same [`RlDartsConfig`]), for retraining from scratch.
#[derive(Debug)]
pub struct RlDartsFixedEncoder {
    skeleton: RlSkeleton<FixedCell>,
}

impl RlDartsFixedEncoder {
    /// `genotype` must use ops of `config.op_set` and, for the "standard" variant, have a
    /// reduce cell.
    pub fn new(
        p: nn::Path,
        config: &RlDartsConfig,
        genotype: &Genotype,
        obs_chw: &[i64],
    ) -> Result<Self, NasError> {
        genotype.validate(1, config.has_reduction_cells())?;
        for (op, _) in genotype.normal.iter().chain(&genotype.reduce).flatten() {
            if *op != OpKind::None {
                config.op_set.check_member(*op)?;
            }
        }
        let mut make = |cp: nn::Path, c_prev: i64, c: i64, reduction: bool| {
            let (genes, concat) = genotype.cell(if reduction {
                CellType::Reduce
            } else {
                CellType::Normal
            });
            let cell_config = FixedCellConfig {
                c,
                reduction,
                inputs: CellInputs::One { c_prev },
                output: config.cell_output,
                node_norm: config.node_norm,
                affine: true,
                stride_style: config.op_set.stride_style(),
            };
            let cell = FixedCell::new(cp, genes, concat, cell_config)?;
            let out = cell.out_channels();
            Ok((cell, out))
        };
        Ok(Self {
            skeleton: RlSkeleton::new(&p, config, obs_chw, &mut make)?,
        })
    }
}

impl Encoder for RlDartsFixedEncoder {
    /// Ops in inference mode, as the supernet's ([`crate::nas::RlDartsSupernet`] says why).
    ///
    /// # Shapes
    /// `[N, C, H, W]` f32 in [0, 1] -> `[N, embedding]`
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        self.skeleton
            .forward(obs, |cell, x, _reduction| cell.forward_t(&[x], 0.0, false))
    }

    fn feature_dim(&self) -> i64 {
        self.skeleton.embedding()
    }
}
