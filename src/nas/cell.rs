//! Search cells: a DAG of `N` nodes over one input (RL-DARTS, Miao et al. 2021;
//! NAS-Bench-201, Dong & Yang 2020) or two (DARTS, Liu et al. 2019, `model_search.py`), where
//! node `j` sums a mixed op over every earlier state. The op weights come in as an argument.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::error::NasError;
use super::mixed::MixedOp;
use super::norm::NodeNorm;
use super::ops::{
    conv_layer, factorized_reduce_plan, input_projection_plan, is_channels_last, relu_conv_bn_plan,
    ConvGeom, OpCost, OpSpec, Sequence, SharedInput,
};
use super::partial::{PartialChannels, PartialNode, PartialState};
pub use super::space::state_label;
use super::space::CellSpace;
use super::weights::OpWeights;
use crate::agents::compute::{self, Conv2d};

/// How a cell combines its intermediate nodes into its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellOutput {
    /// Channel concat of the nodes (DARTS): `num_nodes * C` channels.
    Concat,
    /// Concat, then a 1x1 conv back to `C` channels (RL-DARTS's default).
    ConcatConv1x1,
    /// Element-wise sum of the nodes, `C` channels.
    Sum,
    /// Element-wise mean of the nodes, `C` channels.
    Mean,
    /// The last node only (NAS-Bench-201), `C` channels.
    LastNode,
}

impl CellOutput {
    /// Output channels for `nodes` concatenated (or combined) nodes of `c` channels each.
    pub fn channels(self, nodes: usize, c: i64) -> i64 {
        match self {
            CellOutput::Concat => nodes as i64 * c,
            _ => c,
        }
    }
}

/// What a cell receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellInputs {
    /// RL-DARTS / NAS-Bench-201: the previous output with `c_prev` channels. As in the official
    /// RL-DARTS cell, an input with other than `C` channels goes through one 1x1 conv (with
    /// bias, `preprocess0`) shared by every edge leaving it; one with `C` channels is fed to
    /// the ops as is.
    One { c_prev: i64 },
    /// DARTS: outputs of cells k-2 and k-1, each brought to `C` channels by relu-conv1x1-BN,
    /// or by FactorizedReduce when cell k-1 was a reduction (the k-2 output is then at twice
    /// the resolution).
    Two {
        c_prev_prev: i64,
        c_prev: i64,
        reduction_prev: bool,
    },
}

impl CellInputs {
    fn count(&self) -> usize {
        match self {
            CellInputs::One { .. } => 1,
            CellInputs::Two { .. } => 2,
        }
    }
}

/// The preprocessing of a one-input cell and the channels its edges see: the shared input
/// projection when `c_prev != c` ([`CellInputs::One`]), nothing otherwise.
pub(crate) fn one_input_preprocess(p: &nn::Path, c_prev: i64, c: i64) -> (Vec<Sequence>, i64) {
    if c_prev == c {
        (Vec::new(), c_prev)
    } else {
        (
            vec![Sequence::new(
                p / "preprocess0",
                input_projection_plan(c_prev, c),
            )],
            c,
        )
    }
}

/// Everything a search cell is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchCellConfig {
    pub space: CellSpace,
    /// Channels of every node.
    pub c: i64,
    /// Stride 2 on the edges leaving the inputs (and nowhere else).
    pub reduction: bool,
    pub inputs: CellInputs,
    pub output: CellOutput,
    /// Normalisation after each node's sum (RL-DARTS puts one there; [`NodeNorm`] says what
    /// the official code computes).
    pub node_norm: NodeNorm,
    /// BN affine inside ops and preprocessing (false in DARTS search).
    pub affine: bool,
    /// BN after pooling ops (DARTS search).
    pub pool_bn: bool,
    /// PC-DARTS: `1 / K` of each edge's channels go through its ops, the rest bypass them
    /// ([`PartialChannels`]); `1` = every channel (DARTS).
    pub partial: PartialChannels,
}

impl SearchCellConfig {
    /// Output channels of the cell.
    pub fn out_channels(&self) -> i64 {
        self.output.channels(self.space.num_nodes, self.c)
    }
}

/// A search cell: one [`MixedOp`] per edge.
#[derive(Debug)]
pub struct SearchCell {
    config: SearchCellConfig,
    preprocess: Vec<Sequence>,
    edges: Vec<MixedOp>,
    output_proj: Option<Conv2d>,
}

impl SearchCell {
    /// Variables under `p`: `preprocess0`, `preprocess1`, `edge{e}/{op}`, `output`.
    pub fn new(p: nn::Path, config: SearchCellConfig) -> Result<Self, NasError> {
        let space = config.space;
        space.validate()?;
        if config.inputs.count() != space.num_inputs {
            return Err(NasError::Config(format!(
                "cell space has {} inputs but the cell was given {:?}",
                space.num_inputs, config.inputs
            )));
        }
        let c = config.c;
        let (preprocess, c_input) = match config.inputs {
            CellInputs::One { c_prev } => one_input_preprocess(&p, c_prev, c),
            CellInputs::Two {
                c_prev_prev,
                c_prev,
                reduction_prev,
            } => {
                let plan0 = if reduction_prev {
                    factorized_reduce_plan(c_prev_prev, c, config.affine)
                } else {
                    relu_conv_bn_plan(c_prev_prev, c, 1, 1, 0, config.affine)
                };
                let plan1 = relu_conv_bn_plan(c_prev, c, 1, 1, 0, config.affine);
                (
                    vec![
                        Sequence::new(&p / "preprocess0", plan0),
                        Sequence::new(&p / "preprocess1", plan1),
                    ],
                    c,
                )
            }
        };
        // With partial channels every edge maps c -> c (preprocessing brings the inputs to c),
        // and its ops see c / K of them.
        let c_op = config.partial.op_channels(c)?;
        if config.partial.enabled() && c_input != c {
            return Err(NasError::Config(format!(
                "partial channels need the cell's edges to map {c} -> {c} channels, but its input \
                 has {c_input}"
            )));
        }
        let edges = space
            .edges()
            .iter()
            .map(|edge| {
                let from_input = edge.from < space.num_inputs;
                let spec = OpSpec {
                    c_in: if from_input {
                        c_input / config.partial.k()
                    } else {
                        c_op
                    },
                    c_out: c_op,
                    stride: if config.reduction && from_input { 2 } else { 1 },
                    affine: config.affine,
                    pool_bn: config.pool_bn,
                    stride_style: space.op_set.stride_style(),
                };
                MixedOp::new(&p / format!("edge{}", edge.index), space.op_set, spec)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output_proj = (config.output == CellOutput::ConcatConv1x1).then(|| {
            let geom = ConvGeom {
                c_in: space.num_nodes as i64 * c,
                c_out: c,
                kernel: 1,
                stride: 1,
                padding: 0,
                dilation: 1,
                groups: 1,
                bias: true,
            };
            conv_layer(&p / "output", &geom)
        });
        Ok(Self {
            config,
            preprocess,
            edges,
            output_proj,
        })
    }

    pub fn config(&self) -> &SearchCellConfig {
        &self.config
    }

    pub fn edges(&self) -> &[MixedOp] {
        &self.edges
    }

    /// Per-sample cost of every op on every edge, `[num_edges][num_ops]`, for inputs of shape
    /// `[C, H, W]` (SNAS's resource penalty sums the chosen ops' entries), and the output shape.
    /// Preprocessing, node BN and the output projection are shared by every architecture and
    /// left out.
    pub fn op_costs(&self, input_chw: &[[i64; 3]]) -> (Vec<Vec<OpCost>>, [i64; 3]) {
        let (edge_inputs, [_, h, w]) = self.shape_walk(input_chw);
        let costs = self
            .edges
            .iter()
            .zip(&edge_inputs)
            .map(|(edge, &chw)| edge.ops().iter().map(|op| op.cost(chw)).collect())
            .collect();
        (costs, [self.config.out_channels(), h, w])
    }

    /// The `[C, H, W]` each edge's ops receive (after preprocessing), in row order, for cell
    /// inputs of shapes `input_chw`; what measured latency tables time the ops at.
    pub fn edge_input_shapes(&self, input_chw: &[[i64; 3]]) -> Vec<[i64; 3]> {
        self.shape_walk(input_chw).0
    }

    /// Propagates shapes through the cell: each edge's input `[C, H, W]` (row order) and the
    /// last node's output shape.
    fn shape_walk(&self, input_chw: &[[i64; 3]]) -> (Vec<[i64; 3]>, [i64; 3]) {
        let space = &self.config.space;
        let mut states: Vec<[i64; 3]> = if self.preprocess.is_empty() {
            input_chw.to_vec()
        } else {
            self.preprocess
                .iter()
                .zip(input_chw)
                .map(|(pre, &chw)| pre.out_shape(chw))
                .collect()
        };
        let mut edge_inputs = vec![[0; 3]; space.num_edges()];
        let k = self.config.partial.k();
        for node in 0..space.num_nodes {
            let mut node_shape = [0; 3];
            for (from, e) in space.node_edges(node).enumerate() {
                // The ops see c / K channels; the bypass restores c after them.
                let [c, h, w] = states[from];
                edge_inputs[e] = [c / k, h, w];
                let [c_op, h_out, w_out] = self.edges[e].out_shape(edge_inputs[e]);
                node_shape = [c_op * k, h_out, w_out];
            }
            states.push(node_shape);
        }
        let last = states[states.len() - 1];
        (edge_inputs, last)
    }

    /// # Shapes
    /// `inputs`: `num_inputs` tensors; DARTS `[N, C_pp, H_pp, W_pp]` (twice the resolution after
    /// a reduction) and `[N, C_p, H, W]`; RL-DARTS `[N, C_p, H, W]`.
    /// `weights`: `[num_edges, num_ops]`, or `[N, num_edges, num_ops]` per example.
    /// Returns `[N, out_channels, H', W']`, `H' = ceil(H / 2)` in reduction cells.
    pub fn forward_t(&self, inputs: &[&Tensor], weights: &OpWeights, train: bool) -> Tensor {
        let space = &self.config.space;
        assert_eq!(
            inputs.len(),
            space.num_inputs,
            "cell expects {} inputs",
            space.num_inputs
        );
        // Partial-channel cells compute in NCHW whatever the run's layout: slicing channels off
        // a channels-last tensor, and interleaving them back, leaves tensors whose innermost
        // dimension is strided, and every element-wise kernel on them (the op weights' products
        // and their gradients) then runs unvectorised. Measured at paper size, 128 frames,
        // forward + backward: 2.09 s channels-last, 1.31 s NCHW (examples/profile_search.rs).
        let _nchw = self.config.partial.enabled().then(|| {
            compute::enter(compute::Compute {
                layout: Some(compute::Layout::Nchw),
                ..compute::current()
            })
        });
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|x| match self.config.partial.enabled() {
                true => x.contiguous(),
                false => x.shallow_clone(),
            })
            .collect();
        // Each state feeds several edges; the parameter-free layers their ops start with (ReLU,
        // tanh, pools) run once per state, not once per op and edge.
        let mut states: Vec<SharedInput> = if self.preprocess.is_empty() {
            inputs
                .iter()
                .map(|x| SharedInput::new(x.shallow_clone()))
                .collect()
        } else {
            self.preprocess
                .iter()
                .zip(&inputs)
                .map(|(pre, x)| SharedInput::new(pre.forward_t(x, train)))
                .collect()
        };
        let edges = space.edges();
        let partial = self.config.partial;
        let channels_last = is_channels_last(states[0].tensor());
        // With partial channels, what the edges leaving a state read: its first c / K channels
        // (the same slice for every edge, so the parameter-free prefixes and the fused convs
        // are still shared) and the channels that bypass the ops.
        let op_input = |state: &SharedInput| -> Option<PartialState> {
            partial
                .enabled()
                .then(|| PartialState::new(partial, state.tensor()))
        };
        // Each edge's op weights, with the edge-normalisation factor of partial channels
        // folded in.
        let edge_weights: Vec<Tensor> = (0..space.num_edges())
            .map(|e| match weights.edge_scale(e) {
                Some(s) => weights.edge(e) * s,
                None => weights.edge(e),
            })
            .collect();
        // Each state's outgoing edges run their convs as one (SharedInput::fuse_convs), with
        // the op weight of a lone conv op (RL-DARTS's conv_3x3) folded into its kernel; an edge
        // with a hard sample (GDAS, SNAS) brings only its sampled ops' convs.
        let fuse_outgoing = |state: usize, input: &SharedInput| {
            let convs: Vec<_> = edges
                .iter()
                .filter(|edge| edge.from == state)
                .flat_map(|edge| {
                    self.edges[edge.index]
                        .leading_convs(Some(&edge_weights[edge.index]), weights.active(edge.index))
                })
                .collect();
            input.fuse_convs(&convs);
        };
        let mut partial_states: Vec<Option<PartialState>> = states.iter().map(op_input).collect();
        for (state, input) in states.iter().enumerate() {
            match &partial_states[state] {
                Some(p) => fuse_outgoing(state, &p.through),
                None => fuse_outgoing(state, input),
            }
        }
        for node in 0..space.num_nodes {
            // The node's edges add into one running sum (MixedOp::accumulate_shared), with the
            // edge-normalisation weight folded into each edge's op weights; with partial
            // channels the bypass channels have their own sum (PartialNode).
            let mut sum: Option<Tensor> = None;
            let mut pc_node = PartialNode::default();
            // GDAS's broadcast scalars of the ops left out, added once per node.
            let mut left_out: Vec<Tensor> = Vec::new();
            for (from, e) in space.node_edges(node).enumerate() {
                let scale = weights.edge_scale(e);
                let w = &edge_weights[e];
                let mut add_ops = |acc: Option<Tensor>, read: &SharedInput| {
                    let (acc, inactive) =
                        self.edges[e].accumulate_shared(acc, read, w, weights.active(e), train);
                    left_out.extend(inactive);
                    acc
                };
                match &partial_states[from] {
                    Some(p) => pc_node.add_edge(p, scale.as_ref(), |acc| add_ops(acc, &p.through)),
                    None => sum = Some(add_ops(sum.take(), &states[from])),
                }
            }
            let left_out =
                (!left_out.is_empty()).then(|| Tensor::stack(&left_out, 0).sum(left_out[0].kind()));
            if let Some(c) = &left_out {
                // With partial channels, to the op channels only, as each edge added its own
                // to its op output before the interleave.
                pc_node.add_to_ops(c);
            }
            let mut s = match pc_node.finish(partial, channels_last) {
                Some(combined) => combined,
                // num_inputs >= 1, so every node has at least one incoming edge.
                None => {
                    let s = sum.expect("every node has an incoming edge");
                    match left_out {
                        None => s,
                        Some(c) => s + c,
                    }
                }
            };
            s = self.config.node_norm.apply(&s);
            let state = SharedInput::new(s);
            let partial_state = op_input(&state);
            match &partial_state {
                Some(p) => fuse_outgoing(states.len(), &p.through),
                None => fuse_outgoing(states.len(), &state),
            }
            partial_states.push(partial_state);
            states.push(state);
        }
        let nodes: Vec<Tensor> = states
            .into_iter()
            .skip(space.num_inputs)
            .map(SharedInput::into_tensor)
            .collect();
        combine_nodes(&nodes, self.config.output, self.output_proj.as_ref())
    }
}

/// Combines node outputs (all `[N, C, H, W]`) into the cell output.
pub(crate) fn combine_nodes(nodes: &[Tensor], output: CellOutput, proj: Option<&Conv2d>) -> Tensor {
    match output {
        CellOutput::Concat => Tensor::cat(nodes, 1),
        CellOutput::ConcatConv1x1 => {
            let proj = proj.expect("ConcatConv1x1 cells build their projection");
            proj.forward(&Tensor::cat(nodes, 1))
        }
        CellOutput::Sum => Tensor::stack(nodes, 0).sum_dim_intlist(0, false, nodes[0].kind()),
        CellOutput::Mean => Tensor::stack(nodes, 0).mean_dim(0, false, nodes[0].kind()),
        CellOutput::LastNode => nodes[nodes.len() - 1].shallow_clone(),
    }
}

#[cfg(test)]
#[path = "cell_tests.rs"]
mod tests;
