//! The differentiable search space: candidate ops, mixed ops, search cells, supernets,
//! architecture parameters and genotypes, after DARTS (Liu et al., ICLR 2019), RL-DARTS
//! (Miao et al. 2021) and NAS-Bench-201 (Dong & Yang, ICLR 2020).
//!
//! The supernets never decide how the architecture parameters become op weights: every
//! forward takes a [`CellWeights`] (`[num_edges, num_ops]` per cell type, plus optional
//! per-edge active-op lists for hard samples). That is the plugin point for search strategies
//! (softmax, Gumbel-softmax, hard one-hot, Dirichlet, edge-normalised ...), NASLib's idea.
//! Architecture parameters live in their own `VarStore` ([`ArchParams`]), never in the
//! weight store.
//!
//! Layout, each module importing only those before it (no import circles): [`error`],
//! [`norm`] -> [`ops`] (registry, plans, costs, kernels) -> [`space`] (the cell topology) ->
//! [`weights`] (op weights) -> [`partial`] -> [`mixed`] -> [`cell`] (search cells) ->
//! [`genotype`] -> [`arch`] (architecture parameters) and [`fixed`] (the cell built from a
//! genotype) -> [`network`] (supernets and derived networks, by family) -> [`latency`].

pub mod arch;
pub mod cell;
pub mod error;
pub mod fixed;
pub mod genotype;
pub mod latency;
pub mod mixed;
pub mod network;
pub mod norm;
pub mod ops;
pub mod partial;
pub mod space;
pub mod weights;

pub use arch::{AlphaInit, ArchParams};
pub use cell::{CellInputs, CellOutput, SearchCell, SearchCellConfig};
pub use error::NasError;
pub use fixed::{FixedCell, FixedCellConfig};
pub use genotype::{
    render_dot, CellType, DeriveRule, Gene, Genotype, StaticGenotype, DARTS_V1, DARTS_V2,
};
pub use latency::{LatencyOptions, LatencyTable, LinearLatencyModel};
pub use mixed::MixedOp;
pub use network::{
    count_parameters, DartsEvalConfig, DartsEvalNet, DartsSearchConfig, DartsSearchNet,
    MlpDartsConfig, MlpFixedEncoder, MlpSupernet, NasBench201Config, NasBench201SearchNet,
    OpCostTable, RlDartsConfig, RlDartsFixedEncoder, RlDartsSupernet, RlDartsVariant, Supernet,
};
pub use norm::NodeNorm;
pub use ops::{Op, OpCost, OpKind, OpSet, OpSpec, StrideStyle};
pub use partial::{EdgeBetas, PartialChannels};
pub use space::{CellSpace, Edge};
pub use weights::{CellWeights, OpWeights};
