//! Discrete architectures as plain data (DARTS's `Genotype`, Liu et al., ICLR 2019,
//! `cnn/genotypes.py`): derivation from op weights (DARTS / RL-DARTS top-2, SNAS argmax on
//! every edge), JSON, the official Python text form, NAS-Bench-201 arch strings and Graphviz
//! diagrams (after DARTS's `visualize.py`).
//!
//! One concern per file: the type and its checks here, [`derive`] (op weights -> genotype),
//! [`darts_text`] (the official Python text form), [`nb201`] (NAS-Bench-201 arch strings),
//! [`dot`] (Graphviz diagrams), [`io`] (JSON, files holding either form).

use serde::{Deserialize, Serialize};

use super::error::NasError;
use super::ops::OpKind;

pub mod darts_text;
pub mod derive;
pub mod dot;
pub mod io;
pub mod nb201;

pub use dot::render_dot;

/// One chosen edge: the op and the state it reads (`0..num_inputs` are the cell inputs, then
/// the intermediate nodes in order). Serialises as `["sep_conv_3x3", 0]`.
pub type Gene = (OpKind, usize);

/// A discrete cell architecture.
///
/// Unlike the official flat lists (two pairs per node implied), genes are grouped per node, so
/// the same type also holds SNAS / NAS-Bench-201 cells where every edge is kept (node `j` has
/// `num_inputs + j` genes). The DARTS text form is printed flat whenever every node has exactly
/// two genes, as the official code does.
///
/// `reduce` is empty for networks without reduction cells (NAS-Bench-201, RL-DARTS "impala").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genotype {
    pub normal: Vec<Vec<Gene>>,
    /// States concatenated into the output; DARTS: `[2, 3, 4, 5]`.
    pub normal_concat: Vec<usize>,
    #[serde(default)]
    pub reduce: Vec<Vec<Gene>>,
    #[serde(default)]
    pub reduce_concat: Vec<usize>,
}

/// Which cell of a genotype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellType {
    Normal,
    Reduce,
}

/// How op weights become a discrete cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeriveRule {
    /// DARTS: per node keep the 2 incoming edges whose largest non-`none` weight is largest;
    /// each kept edge's op is its argmax excluding `none`. Ties go to the lower index, as with
    /// the official `sorted` (stable) and strict `>` argmax.
    Darts,
    /// RL-DARTS: drop `zero`, argmax op per edge, keep the top-2 predecessors per node. This is
    /// the DARTS rule applied to a one-input cell (where node 0 has a single predecessor and
    /// keeps it); a separate name so configs can say which paper they follow.
    RlDarts,
    /// SNAS child network / NAS-Bench-201: argmax on every edge, `none` included; `none` genes
    /// are kept (a fixed network builds them as zeros) so the cell stays a complete DAG.
    ArgmaxAll,
    /// GDAS (the official `genotype()` of `search_model_gdas_nasnet.py`): per node every
    /// (op, input) pair except `none` is ranked by its weight and the top 2 pairs are kept, so
    /// both genes may read the same input (a fixed cell then sums two ops of that input). Ties
    /// keep the lower input, then the lower op index, as the official stable `sorted` does.
    Gdas,
}

/// The published DARTS cells as data (`genotypes.py`, pairs flat, two per node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticGenotype {
    pub normal: &'static [Gene],
    pub normal_concat: &'static [usize],
    pub reduce: &'static [Gene],
    pub reduce_concat: &'static [usize],
}

impl StaticGenotype {
    pub fn to_genotype(&self) -> Genotype {
        Genotype {
            normal: self.normal.chunks(2).map(<[Gene]>::to_vec).collect(),
            normal_concat: self.normal_concat.to_vec(),
            reduce: self.reduce.chunks(2).map(<[Gene]>::to_vec).collect(),
            reduce_concat: self.reduce_concat.to_vec(),
        }
    }
}

use OpKind::{AvgPool3x3, DilConv3x3, MaxPool3x3, SepConv3x3, SkipConnect};

/// DARTS (first order), `genotypes.py` `DARTS_V1`: CIFAR-10 3.00% test error.
pub const DARTS_V1: StaticGenotype = StaticGenotype {
    normal: &[
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SkipConnect, 0),
        (SepConv3x3, 1),
        (SkipConnect, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SkipConnect, 2),
    ],
    normal_concat: &[2, 3, 4, 5],
    reduce: &[
        (MaxPool3x3, 0),
        (MaxPool3x3, 1),
        (SkipConnect, 2),
        (MaxPool3x3, 0),
        (MaxPool3x3, 0),
        (SkipConnect, 2),
        (SkipConnect, 2),
        (AvgPool3x3, 0),
    ],
    reduce_concat: &[2, 3, 4, 5],
};

/// DARTS (second order), `genotypes.py` `DARTS_V2` (= `DARTS`): CIFAR-10 2.76% test error,
/// 3.3M parameters at C = 36, 20 cells.
pub const DARTS_V2: StaticGenotype = StaticGenotype {
    normal: &[
        (SepConv3x3, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 0),
        (SepConv3x3, 1),
        (SepConv3x3, 1),
        (SkipConnect, 0),
        (SkipConnect, 0),
        (DilConv3x3, 2),
    ],
    normal_concat: &[2, 3, 4, 5],
    reduce: &[
        (MaxPool3x3, 0),
        (MaxPool3x3, 1),
        (SkipConnect, 2),
        (MaxPool3x3, 1),
        (MaxPool3x3, 0),
        (SkipConnect, 2),
        (SkipConnect, 2),
        (MaxPool3x3, 1),
    ],
    reduce_concat: &[2, 3, 4, 5],
};

impl Genotype {
    /// The genes of one cell type.
    pub fn cell(&self, cell: CellType) -> (&[Vec<Gene>], &[usize]) {
        match cell {
            CellType::Normal => (&self.normal, &self.normal_concat),
            CellType::Reduce => (&self.reduce, &self.reduce_concat),
        }
    }

    /// Checks indices for a cell with `num_inputs` inputs; `needs_reduce` requires a reduce cell.
    pub fn validate(&self, num_inputs: usize, needs_reduce: bool) -> Result<(), NasError> {
        if needs_reduce && self.reduce.is_empty() {
            return Err(NasError::InvalidGenotype(
                "the network has reduction cells but the genotype has no reduce cell".into(),
            ));
        }
        for cell in [CellType::Normal, CellType::Reduce] {
            let (nodes, concat) = self.cell(cell);
            if cell == CellType::Reduce && nodes.is_empty() && concat.is_empty() {
                continue;
            }
            let name = match cell {
                CellType::Normal => "normal",
                CellType::Reduce => "reduce",
            };
            let bad = |msg: String| Err(NasError::InvalidGenotype(format!("{name} cell: {msg}")));
            if nodes.is_empty() {
                return bad("no nodes".into());
            }
            for (j, genes) in nodes.iter().enumerate() {
                if genes.is_empty() {
                    return bad(format!("node {j} has no incoming edge"));
                }
                if let Some(&(op, input)) = genes.iter().find(|(_, input)| *input >= num_inputs + j)
                {
                    return bad(format!(
                        "node {j} (state {}) reads state {input} via {op}; it may read states 0..{}",
                        num_inputs + j,
                        num_inputs + j
                    ));
                }
            }
            let states = num_inputs + nodes.len();
            if concat.is_empty() {
                return bad("empty concat list".into());
            }
            if let Some(&s) = concat.iter().find(|&&s| s >= states) {
                return bad(format!(
                    "concat names state {s}, the cell has states 0..{states}"
                ));
            }
            let mut sorted = concat.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != concat.len() {
                return bad(format!("concat {concat:?} repeats a state"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
