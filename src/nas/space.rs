//! The search space of a cell: its inputs, nodes and op set ([`CellSpace`]), which fix the
//! shape of the architecture parameters, `[num_edges, num_ops]`, and the order of its edges
//! (DARTS's: node by node, each node's edges from the earliest state).

use serde::{Deserialize, Serialize};

use super::error::NasError;
use super::ops::OpSet;

/// The topology every cell of a search space shares; it fixes the shape of the architecture
/// parameters, `[num_edges, num_ops]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpace {
    /// States the cell receives: 2 in DARTS (cells k-2 and k-1), 1 in RL-DARTS and
    /// NAS-Bench-201.
    pub num_inputs: usize,
    /// Intermediate nodes: 4 in DARTS and RL-DARTS, 3 in NAS-Bench-201 (whose `max_nodes = 4`
    /// counts the input node).
    pub num_nodes: usize,
    pub op_set: OpSet,
}

/// One edge of a cell: from state `from` (inputs first, then nodes) into node `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Row of the op-weight matrix.
    pub index: usize,
    /// State index: `0..num_inputs` are the inputs, `num_inputs + j` is node `j`.
    pub from: usize,
    /// Intermediate node `0..num_nodes` (state `num_inputs + node`).
    pub node: usize,
}

impl Edge {
    /// The edge by its endpoints, `c_{k-1} -> 0` or `0 -> 2`, as heatmaps name their rows.
    pub fn label(&self, num_inputs: usize) -> String {
        format!("{} -> {}", state_label(self.from, num_inputs), self.node)
    }

    /// [`Edge::label`] as a TensorBoard tag segment: `c_k-1_to_0`, `0_to_2`.
    pub fn tag(&self, num_inputs: usize) -> String {
        let from = state_label(self.from, num_inputs).replace(['{', '}'], "");
        format!("{from}_to_{}", self.node)
    }
}

/// State `s` of a cell: its inputs are the outputs of the previous cells (`c_{k-2}`,
/// `c_{k-1}`), then intermediate node `s - num_inputs`.
pub fn state_label(s: usize, num_inputs: usize) -> String {
    if s < num_inputs {
        format!("c_{{k-{}}}", num_inputs - s)
    } else {
        (s - num_inputs).to_string()
    }
}

impl CellSpace {
    /// DARTS CNN space: 2 inputs, 4 nodes, 14 edges, the 8 DARTS ops.
    pub fn darts() -> Self {
        Self {
            num_inputs: 2,
            num_nodes: 4,
            op_set: OpSet::Darts,
        }
    }

    /// RL-DARTS: 1 input, 4 nodes, 10 edges.
    pub fn rl_darts(op_set: OpSet) -> Self {
        Self {
            num_inputs: 1,
            num_nodes: 4,
            op_set,
        }
    }

    /// NAS-Bench-201: 1 input, 3 nodes, 6 edges, 5 ops.
    pub fn nas_bench_201() -> Self {
        Self {
            num_inputs: 1,
            num_nodes: 3,
            op_set: OpSet::NasBench201,
        }
    }

    /// The transformer search space of `crate::transformer` (Zhao et al. 2021): one layer of
    /// two searchable splits seen as a cell with 2 inputs and 1 node, so that edge `k` (from
    /// state `k`) is split `k`, 2 edges x the 10 [`OpSet::Transformer`] ops. `alpha_normal`
    /// holds the encoder layer, `alpha_reduce` the decoder layer's two searchable splits.
    pub fn transformer() -> Self {
        Self {
            num_inputs: 2,
            num_nodes: 1,
            op_set: OpSet::Transformer,
        }
    }

    /// The same space with `num_nodes` intermediate nodes.
    pub fn with_nodes(self, num_nodes: usize) -> Self {
        Self { num_nodes, ..self }
    }

    /// `sum_{j < N} (num_inputs + j)`.
    pub fn num_edges(&self) -> usize {
        (0..self.num_nodes).map(|j| self.num_inputs + j).sum()
    }

    pub fn num_ops(&self) -> usize {
        self.op_set.len()
    }

    /// Rows of node `node`'s incoming edges: contiguous, ordered by source state (the DARTS
    /// and NAS-Bench-201 order).
    pub fn node_edges(&self, node: usize) -> std::ops::Range<usize> {
        let start: usize = (0..node).map(|j| self.num_inputs + j).sum();
        start..start + self.num_inputs + node
    }

    /// Every edge, in row order.
    pub fn edges(&self) -> Vec<Edge> {
        (0..self.num_nodes)
            .flat_map(|node| {
                self.node_edges(node)
                    .enumerate()
                    .map(move |(from, index)| Edge { index, from, node })
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), NasError> {
        if !(1..=2).contains(&self.num_inputs) || self.num_nodes == 0 {
            return Err(NasError::Config(format!(
                "a cell needs 1 or 2 inputs and at least one node, got {} inputs and {} nodes",
                self.num_inputs, self.num_nodes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_counts_and_order_follow_darts() {
        assert_eq!(CellSpace::darts().num_edges(), 14);
        assert_eq!(CellSpace::rl_darts(OpSet::RlDarts).num_edges(), 10);
        assert_eq!(CellSpace::nas_bench_201().num_edges(), 6);
        let edges = CellSpace::darts().edges();
        // Node 1 (third edge onwards): from states 0, 1, 2.
        assert_eq!((edges[2].from, edges[2].node), (0, 1));
        assert_eq!((edges[4].from, edges[4].node), (2, 1));
        assert_eq!(CellSpace::darts().node_edges(3), 9..14);
        let nb = CellSpace::nas_bench_201().edges();
        // NAS-Bench-201 edge keys 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2.
        let keys: Vec<(usize, usize)> = nb.iter().map(|e| (e.node + 1, e.from)).collect();
        assert_eq!(keys, [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]);
    }

    #[test]
    fn edges_are_named_by_their_endpoints() {
        let darts = CellSpace::darts();
        let names: Vec<String> = darts.edges().iter().map(|e| e.label(2)).collect();
        assert_eq!(
            names[..5],
            [
                "c_{k-2} -> 0",
                "c_{k-1} -> 0",
                "c_{k-2} -> 1",
                "c_{k-1} -> 1",
                "0 -> 1"
            ]
        );
        assert_eq!(darts.edges()[4].tag(2), "0_to_1");
        let rl = CellSpace::rl_darts(OpSet::RlDarts);
        let names: Vec<String> = rl.edges().iter().map(|e| e.label(1)).collect();
        assert_eq!(names[..3], ["c_{k-1} -> 0", "c_{k-1} -> 1", "0 -> 1"]);
        assert_eq!(rl.edges()[0].tag(1), "c_k-1_to_0");
    }
}
