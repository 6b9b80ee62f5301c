//! MLP supernets for state-vector observations (CartPole): the RL-DARTS cell search (Miao, Song
//! et al. 2021) carried over from images to vectors, so that every search strategy can be run
//! and tested on classic control in seconds.
//!
//! A vector `[N, D]` travels through the cells as `[N, D, 1, 1]`, so the image machinery is
//! reused unchanged: [`SearchCell`] / [`FixedCell`] with one input, [`crate::nas::MixedOp`],
//! [`crate::nas::ArchParams`], the genotypes and their derivation rules. The `mlp` op set's
//! `linear_relu` / `linear_tanh` are 1x1 convolutions, i.e. linear layers (see
//! [`crate::nas::ops`]). There are no reduction cells: a vector has no resolution to halve.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::{OpCostTable, Supernet};
use crate::agents::compute;
use crate::agents::Encoder;
use crate::nas::cell::{CellInputs, CellOutput, SearchCell, SearchCellConfig};
use crate::nas::error::NasError;
use crate::nas::fixed::{FixedCell, FixedCellConfig};
use crate::nas::genotype::{CellType, Genotype};
use crate::nas::norm::NodeNorm;
use crate::nas::ops::{OpKind, OpSet};
use crate::nas::space::CellSpace;
use crate::nas::weights::CellWeights;

/// `[encoder.params.supernet]` of the `mlp_darts` encoders: a chain of normal cells over
/// vectors, then linear -> tanh. Defaults: CleanRL's CartPole MLP width (64) and activation
/// (tanh), RL-DARTS's cell (4 nodes, concat -> 1x1 conv output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpDartsConfig {
    /// Width of every node, in features. CleanRL's MLP: 64.
    pub hidden: i64,
    /// Cells in sequence (all normal cells; they share one alpha matrix). Default 2, as
    /// CleanRL's two hidden layers.
    pub cells: usize,
    /// Intermediate nodes per cell. RL-DARTS: 4.
    pub num_nodes: usize,
    /// `mlp` (linear_relu, linear_tanh, skip_connect, none); any set of vector ops builds.
    pub op_set: OpSet,
    /// RL-DARTS: concat -> 1x1 conv (a linear layer back to `hidden`); `sum`, `mean`,
    /// `last_node` also work.
    pub cell_output: CellOutput,
    /// Normalisation after each node ([`NodeNorm`]). `none` by default: on CartPole's 4
    /// features the op weights alone keep a node's scale bounded.
    pub node_norm: NodeNorm,
    /// Width of the final linear -> tanh = feature dimension. CleanRL: 64.
    pub embedding: i64,
}

impl Default for MlpDartsConfig {
    fn default() -> Self {
        Self {
            hidden: 64,
            cells: 2,
            num_nodes: 4,
            op_set: OpSet::Mlp,
            cell_output: CellOutput::ConcatConv1x1,
            node_norm: NodeNorm::None,
            embedding: 64,
        }
    }
}

impl MlpDartsConfig {
    pub fn space(&self) -> CellSpace {
        CellSpace::rl_darts(self.op_set).with_nodes(self.num_nodes)
    }

    /// Never: vectors have no resolution to reduce.
    pub fn has_reduction_cells(&self) -> bool {
        false
    }

    /// The observation width `D`, or a clear error.
    fn validate(&self, obs_shape: &[i64]) -> Result<i64, NasError> {
        let &[d] = obs_shape else {
            return Err(NasError::Config(format!(
                "the mlp_darts encoder needs vector observations [D], got {obs_shape:?} (use \
                 rl_darts for images)"
            )));
        };
        if d <= 0 || self.hidden <= 0 || self.embedding <= 0 || self.cells == 0 {
            return Err(NasError::Config(format!(
                "mlp_darts: observation width {d}, hidden {}, embedding {} and cells {} must be \
                 positive",
                self.hidden, self.embedding, self.cells
            )));
        }
        if let Some(op) = self.op_set.ops().iter().find(|k| !is_vector_op(**k)) {
            return Err(NasError::Config(format!(
                "mlp_darts: op set {} has {op}, which needs a spatial input; use op_set = \"mlp\"",
                self.op_set
            )));
        }
        self.space().validate()?;
        Ok(d)
    }
}

/// Ops that mean something on `[N, C, 1, 1]` (a 3x3 conv or pool would only see padding).
fn is_vector_op(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::LinearRelu
            | OpKind::LinearTanh
            | OpKind::SkipConnect
            | OpKind::None
            | OpKind::Relu
            | OpKind::Tanh
    )
}

/// How a skeleton builds one cell: `(path, c_prev, c) -> (cell, out_channels)`.
type MakeCell<'a, C> = dyn FnMut(nn::Path, i64, i64) -> Result<(C, i64), NasError> + 'a;

/// Cells then `fc -> tanh`, generic over the cell type (search or fixed).
#[derive(Debug)]
struct MlpSkeleton<C> {
    cells: Vec<C>,
    fc: nn::Linear,
    embedding: i64,
}

impl<C> MlpSkeleton<C> {
    /// Variables under `p`: `cell{i}`, `fc`. `make_cell(path, c_prev, c) -> (cell, c_out)`.
    fn new(
        p: &nn::Path,
        config: &MlpDartsConfig,
        obs_shape: &[i64],
        make_cell: &mut MakeCell<'_, C>,
    ) -> Result<Self, NasError> {
        let mut c_prev = config.validate(obs_shape)?;
        let mut cells = Vec::with_capacity(config.cells);
        for i in 0..config.cells {
            let (cell, c_out) = make_cell(p / format!("cell{i}"), c_prev, config.hidden)?;
            c_prev = c_out;
            cells.push(cell);
        }
        // Orthogonal sqrt(2), zero bias: CleanRL's layer_init for the hidden layers.
        let fc_config = nn::LinearConfig {
            ws_init: nn::Init::Orthogonal { gain: 2f64.sqrt() },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let fc = nn::linear(p / "fc", c_prev, config.embedding, fc_config);
        Ok(Self {
            cells,
            fc,
            embedding: config.embedding,
        })
    }

    /// # Shapes
    /// `[N, D]` -> `[N, embedding]`
    fn forward(&self, obs: &Tensor, mut run: impl FnMut(&C, &Tensor) -> Tensor) -> Tensor {
        let n = obs.size()[0];
        let mut x = obs.view([n, -1, 1, 1]); // [N, D, 1, 1]
        for cell in &self.cells {
            x = run(cell, &x);
        }
        compute::linear_layer(&self.fc, &x.flatten(1, -1)).tanh()
    }
}

/// The searched MLP encoder: its architecture argument is the forward's op weights, as for
/// [`crate::nas::RlDartsSupernet`].
#[derive(Debug)]
pub struct MlpSupernet {
    config: MlpDartsConfig,
    skeleton: MlpSkeleton<SearchCell>,
}

impl MlpSupernet {
    /// `obs_shape`: one observation's `[D]`.
    pub fn new(p: nn::Path, config: &MlpDartsConfig, obs_shape: &[i64]) -> Result<Self, NasError> {
        let space = config.space();
        let mut make = |cp: nn::Path, c_prev: i64, c: i64| {
            let cell_config = SearchCellConfig {
                space,
                c,
                reduction: false,
                inputs: CellInputs::One { c_prev },
                output: config.cell_output,
                node_norm: config.node_norm,
                affine: false,
                pool_bn: false,
                partial: crate::nas::PartialChannels::default(),
            };
            Ok((
                SearchCell::new(cp, cell_config)?,
                cell_config.out_channels(),
            ))
        };
        let skeleton = MlpSkeleton::new(&p, config, obs_shape, &mut make)?;
        Ok(Self {
            config: config.clone(),
            skeleton,
        })
    }

    pub fn config(&self) -> &MlpDartsConfig {
        &self.config
    }
}

impl Supernet for MlpSupernet {
    /// # Shapes
    /// `x: [N, D]` -> features `[N, embedding]`
    fn forward_with(&self, x: &Tensor, weights: &CellWeights, train: bool) -> Tensor {
        self.skeleton
            .forward(x, |cell, h| cell.forward_t(&[h], &weights.normal, train))
    }

    fn space(&self) -> CellSpace {
        self.config.space()
    }

    fn has_reduction_cells(&self) -> bool {
        false
    }

    /// `input_chw` is `[D, 1, 1]` for vectors `[D]`.
    fn op_costs(&self, input_chw: [i64; 3]) -> OpCostTable {
        let space = self.space();
        let mut normal = vec![vec![super::OpCost::default(); space.num_ops()]; space.num_edges()];
        let mut shape = input_chw;
        for cell in &self.skeleton.cells {
            let (costs, out) = cell.op_costs(&[shape]);
            for (row, add) in normal.iter_mut().zip(&costs) {
                for (c, &a) in row.iter_mut().zip(add) {
                    *c += a;
                }
            }
            shape = out;
        }
        OpCostTable {
            normal,
            reduce: None,
        }
    }
}

impl Encoder<CellWeights> for MlpSupernet {
    /// # Shapes
    /// `[N, D]` f32 -> `[N, embedding]`
    fn features(&self, obs: &Tensor, weights: &CellWeights) -> Tensor {
        self.forward_with(obs, weights, false)
    }

    fn feature_dim(&self) -> i64 {
        self.skeleton.embedding
    }
}

/// The MLP encoder rebuilt with the discrete cell of a genotype (same [`MlpDartsConfig`] as
/// the supernet it was searched in), for retraining from scratch.
#[derive(Debug)]
pub struct MlpFixedEncoder {
    skeleton: MlpSkeleton<FixedCell>,
}

impl MlpFixedEncoder {
    /// `genotype` must be a one-input normal cell over ops of `config.op_set`.
    pub fn new(
        p: nn::Path,
        config: &MlpDartsConfig,
        genotype: &Genotype,
        obs_shape: &[i64],
    ) -> Result<Self, NasError> {
        genotype.validate(1, false)?;
        for (op, _) in genotype.normal.iter().flatten() {
            if *op != OpKind::None {
                config.op_set.check_member(*op)?;
            }
        }
        let mut make = |cp: nn::Path, c_prev: i64, c: i64| {
            let (genes, concat) = genotype.cell(CellType::Normal);
            let cell_config = FixedCellConfig {
                c,
                reduction: false,
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
            skeleton: MlpSkeleton::new(&p, config, obs_shape, &mut make)?,
        })
    }
}

impl Encoder for MlpFixedEncoder {
    /// # Shapes
    /// `[N, D]` f32 -> `[N, embedding]`
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        self.skeleton
            .forward(obs, |cell, x| cell.forward_t(&[x], 0.0, false))
    }

    fn feature_dim(&self) -> i64 {
        self.skeleton.embedding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{AlphaInit, ArchParams, DeriveRule};
    use tch::{Device, Kind};

    fn arch(config: &MlpDartsConfig) -> ArchParams {
        ArchParams::new(
            Device::Cpu,
            config.space(),
            false,
            AlphaInit {
                mean: 0.0,
                std: 1.0,
            },
        )
        .unwrap()
    }

    #[test]
    fn supernet_and_derived_encoder_run_on_vectors_and_costs_add_up() {
        tch::manual_seed(0);
        let config = MlpDartsConfig {
            hidden: 8,
            embedding: 6,
            ..MlpDartsConfig::default()
        };
        let arch = arch(&config);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MlpSupernet::new(vs.root() / "enc", &config, &[4]).unwrap();
        let obs = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let f = net.features(&obs, &arch.softmax_weights(1.0));
        assert_eq!(f.size(), [5, 6]);
        assert!(f.abs().max().double_value(&[]) <= 1.0);
        // The gradient reaches the alphas through the softmax it was given.
        f.sum(Kind::Float).backward();
        assert!(
            arch.alpha_normal()
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );

        // Cell 0 projects its 4 input features to 8 once (shared by its edges, left out of the
        // op costs), so edge 0 of both cells maps 8 -> 8: linear 8 * 8 + 8 = 72 parameters;
        // skip is the identity and none costs nothing.
        let costs = net.op_costs([4, 1, 1]);
        let lin = OpSet::Mlp.index_of(OpKind::LinearRelu).unwrap();
        let skip = OpSet::Mlp.index_of(OpKind::SkipConnect).unwrap();
        let none = OpSet::Mlp.none_index().unwrap();
        assert_eq!(costs.normal[0][lin].params, 72 + 72);
        assert_eq!(costs.normal[0][skip].params, 0);
        assert_eq!(costs.normal[0][none].params, 0);
        assert!(costs.reduce.is_none());

        let genotype = arch.derive_genotype(DeriveRule::RlDarts).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let fixed = MlpFixedEncoder::new(vs.root() / "enc", &config, &genotype, &[4]).unwrap();
        assert_eq!(fixed.features(&obs, &()).size(), [5, 6]);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.iter().all(|n| !n.contains("__")), "{names:?}");
    }

    #[test]
    fn image_observations_and_spatial_op_sets_are_clear_errors() {
        let config = MlpDartsConfig::default();
        let vs = nn::VarStore::new(Device::Cpu);
        let err = MlpSupernet::new(vs.root(), &config, &[3, 64, 64]).unwrap_err();
        assert!(err.to_string().contains("vector observations"), "{err}");
        let conv = MlpDartsConfig {
            op_set: OpSet::RlDarts,
            ..config
        };
        let err = MlpSupernet::new(vs.root() / "b", &conv, &[4]).unwrap_err();
        assert!(err.to_string().contains("conv_3x3"), "{err}");
    }
}
