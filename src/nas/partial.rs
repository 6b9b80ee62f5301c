//! Partial-channel connections and edge normalisation (PC-DARTS, Xu et al. ICLR 2020; official
//! code `yuhuixu1993/PC-DARTS`, `model_search.py`).
//!
//! - A partial-channel edge sends the first `C / K` channels of its input through the candidate
//!   ops (built at `C / K` channels) and lets the other `C - C / K` bypass them; the two parts
//!   are concatenated (ops first) and channel-shuffled with `K` groups, so that the next edge
//!   sees a different quarter of the channels. Where the ops reduce the resolution (stride-2
//!   edges of a reduction cell) the bypass goes through a 2x2 max-pool with stride 2, as the
//!   official `MixedOp` does (`self.mp = nn.MaxPool2d(2, 2)`). We pool with `ceil_mode`, which
//!   equals the official pool on even sizes and matches the ops' `ceil(H / 2)` on odd ones,
//!   where the official concatenation would fail.
//! - Edge normalisation: one scalar `beta` per edge; each node's incoming edges are weighted
//!   by `softmax` of their betas (over that node's inputs only), multiplied into the whole
//!   edge output, bypass included (`weights2[offset + j] * self._ops[offset + j](h, ...)`).
//!   The betas are architecture parameters ([`super::ArchParams`]), and the genotype is read
//!   off `softmax(alpha) * softmax_node(beta)` per edge (the official `genotype()._parse`).
//!
//! Memory and time: the ops run on `1 / K` of the channels, so their activations, which
//! dominate a supernet's memory, shrink about K-fold; the paper uses K = 4.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::error::NasError;
use super::ops::{is_channels_last, SharedInput};
use super::space::CellSpace;
use super::weights::CellWeights;

/// The partial-channel setting of a supernet: `K`, the inverse of the proportion of channels
/// that go through the candidate ops. `1` is the plain DARTS mixed op (every channel through
/// the ops, no bypass, no shuffle) and turns edge normalisation off too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartialChannels(pub i64);

impl Default for PartialChannels {
    fn default() -> Self {
        Self(1)
    }
}

impl PartialChannels {
    pub fn k(self) -> i64 {
        self.0
    }

    /// Whether PC-DARTS is on (K > 1): partial channels and edge normalisation.
    pub fn enabled(self) -> bool {
        self.0 > 1
    }

    /// `Err(Config)` unless `K >= 1`.
    pub fn validate(self) -> Result<(), NasError> {
        if self.0 < 1 {
            return Err(NasError::Config(format!(
                "partial_channels must be >= 1 (1 = off, PC-DARTS uses 4), got {}",
                self.0
            )));
        }
        Ok(())
    }

    /// Channels that go through the ops of an edge with `c` channels: `c / K`, which must be
    /// whole and at least 1 (the official code floors; an uneven split would make the shuffle's
    /// groups unequal, so it is an error here).
    pub fn op_channels(self, c: i64) -> Result<i64, NasError> {
        self.validate()?;
        if c % self.0 != 0 {
            return Err(NasError::Config(format!(
                "partial_channels = {} needs every cell's channel count to be a multiple of it; \
                 a cell has {c} channels",
                self.0
            )));
        }
        Ok(c / self.0)
    }

    /// `(through the ops, bypass)`: the first `C / K` channels and the rest (views, no copy).
    /// One `split_with_sizes` rather than two `narrow`s: backward then concatenates the two
    /// parts' gradients once, where each `narrow` would fill a zero tensor of the whole state
    /// and copy its part in, and the two would then be added.
    ///
    /// # Shapes
    /// `x: [N, C, H, W]` -> `[N, C / K, H, W]`, `[N, C - C / K, H, W]`
    pub fn split(self, x: &Tensor) -> (Tensor, Tensor) {
        let c = x.size()[1];
        let part = c / self.0;
        let mut parts = x.split_with_sizes([part, c - part], 1).into_iter();
        match (parts.next(), parts.next()) {
            (Some(through), Some(bypass)) => (through, bypass),
            _ => unreachable!("split_with_sizes into two sizes gives two parts"),
        }
    }

    /// `channel_shuffle(cat(op_out, pool?(bypass)), K)`: the bypass is max-pooled 2x2 / 2 when
    /// the ops changed the resolution.
    ///
    /// Computed as one interleaving copy instead of a concatenation and a shuffle (two copies of
    /// every edge output, both kept for backward): the shuffle puts channel `c` of group `g`
    /// (`g = 0` the ops' output, `1..K` the bypass's blocks of `C / K`) at `c K + g`, which is
    /// `stack(groups, dim 2)` viewed as `[N, C, H, W]`. `channels_last` picks the NHWC form
    /// (the stack over the last dimension of the NHWC views), so the output keeps the cell's
    /// layout.
    ///
    /// # Shapes
    /// `op_out: [N, C / K, H', W']`, `bypass: [N, C - C / K, H, W]` -> `[N, C, H', W']`
    pub fn combine(self, op_out: &Tensor, bypass: &Tensor, channels_last: bool) -> Tensor {
        if self.0 == 1 {
            return op_out.shallow_clone();
        }
        let (h_out, h_in) = (op_out.size()[2], bypass.size()[2]);
        let bypass = if h_out == h_in {
            bypass.shallow_clone()
        } else {
            bypass.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true)
        };
        let part = op_out.size()[1];
        let mut groups = vec![op_out.shallow_clone()];
        groups.extend(bypass.split(part, 1));
        let size = op_out.size();
        let (n, c, h, w) = (size[0], part * self.0, size[2], size[3]);
        if channels_last {
            let nhwc: Vec<Tensor> = groups.iter().map(|g| g.permute([0, 2, 3, 1])).collect();
            Tensor::stack(&nhwc, 4)
                .reshape([n, h, w, c])
                .permute([0, 3, 1, 2])
        } else {
            Tensor::stack(&groups, 2).reshape([n, c, h, w])
        }
    }
}

/// A cell state as the partial-channel edges leaving it read it: the first `C / K` channels,
/// which go through the ops (shared by all those edges, see [`SharedInput`]), the other
/// channels, which bypass them, and the bypass max-pooled for the stride-2 edges (computed on
/// first use, then shared: every stride-2 edge of a reduction cell leaves the same input).
#[derive(Debug)]
pub struct PartialState {
    pub through: SharedInput,
    pub bypass: Tensor,
    pooled_bypass: std::cell::OnceCell<Tensor>,
}

impl PartialState {
    pub fn new(partial: PartialChannels, state: &Tensor) -> Self {
        let (through, bypass) = partial.split(state);
        Self {
            through: SharedInput::new(through),
            bypass,
            pooled_bypass: std::cell::OnceCell::new(),
        }
    }

    /// The bypass at the resolution `h_out` of the ops' output: as is, or max-pooled 2x2 / 2
    /// (see [`PartialChannels::combine`]).
    fn bypass_at(&self, h_out: i64) -> Tensor {
        if self.bypass.size()[2] == h_out {
            return self.bypass.shallow_clone();
        }
        self.pooled_bypass
            .get_or_init(|| self.bypass.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true))
            .shallow_clone()
    }
}

/// One node of a partial-channel cell, summed edge by edge without building each edge's
/// output: PC-DARTS computes `sum_e s_e shuffle(cat(y_e, b_e))` over the node's edges
/// (`y_e` the ops' weighted sum on `C / K` channels, `b_e` the bypass, `s_e` the edge
/// normalisation weight). The shuffle is one fixed channel permutation `P` for every edge of
/// the node, and linear, so the node is `P(cat(sum_e s_e y_e, sum_e s_e b_e))`: one running
/// sum for the ops' channels (`s_e` folded into the op weights, so each op is one fused
/// multiply-add into it), one for the bypass channels, and a single interleaving copy per
/// node instead of one per edge, plus no separate scaling or node sum of whole edge outputs.
/// Every value is the official order of operations' up to float rounding; the gradients are
/// the same functions.
#[derive(Debug, Default)]
pub struct PartialNode {
    ops: Option<Tensor>,
    bypass: Option<Tensor>,
}

impl PartialNode {
    /// Adds edge `e`: `add_ops` adds the ops' weighted sum (its weights already scaled by
    /// `scale`) to the running sum it is given and returns it; `scale` is the edge
    /// normalisation weight (`None`: 1).
    pub fn add_edge(
        &mut self,
        from: &PartialState,
        scale: Option<&Tensor>,
        add_ops: impl FnOnce(Option<Tensor>) -> Tensor,
    ) {
        let ops = add_ops(self.ops.take());
        let bypass = from.bypass_at(ops.size()[2]);
        self.bypass = Some(match (self.bypass.take(), scale) {
            // The first term is a new tensor (never the state's own channels, which the sum
            // then adds into in place).
            (None, Some(s)) => &bypass * s,
            (None, None) => &bypass * 1.0,
            (Some(mut acc), Some(s)) => {
                let _ = acc.addcmul_(&bypass, s);
                acc
            }
            (Some(mut acc), None) => {
                let _ = acc.g_add_(&bypass);
                acc
            }
        });
        self.ops = Some(ops);
    }

    /// Adds `extra` (a 0-dim tensor, e.g. GDAS's broadcast scalar of the ops left out) to the
    /// ops' channels, as the per-edge computation adds it to each edge's op output.
    pub fn add_to_ops(&mut self, extra: &Tensor) {
        if let Some(ops) = self.ops.as_mut() {
            let _ = ops.g_add_(extra);
        }
    }

    /// The node's output `P(cat(ops, bypass))` ([`PartialChannels::combine`]), in the cell's
    /// layout.
    pub fn finish(self, partial: PartialChannels, channels_last: bool) -> Option<Tensor> {
        Some(partial.combine(&self.ops?, &self.bypass?, channels_last))
    }
}

/// ShuffleNet's channel shuffle (what PC-DARTS's `channel_shuffle` computes): view the channels
/// as `[groups, C / groups]`, transpose, flatten, so output channel `j` is input channel
/// `(j % groups) * (C / groups) + j / groups`. Channels-last inputs are shuffled in their NHWC
/// view, so the result stays channels-last (an NCHW result would turn every later kernel NCHW).
///
/// # Shapes
/// `x: [N, C, H, W]` -> `[N, C, H, W]`, `C % groups == 0`
pub fn channel_shuffle(x: &Tensor, groups: i64) -> Tensor {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    if groups == 1 {
        return x.shallow_clone();
    }
    if is_channels_last(x) {
        x.permute([0, 2, 3, 1])
            .reshape([n, h, w, groups, c / groups])
            .transpose(3, 4)
            .reshape([n, h, w, c])
            .permute([0, 3, 1, 2])
    } else {
        x.reshape([n, groups, c / groups, h, w])
            .transpose(1, 2)
            .reshape([n, c, h, w])
    }
}

/// `softmax` of the betas of each node's incoming edges, concatenated in row order: the
/// per-edge factors of edge normalisation, `[num_edges]`, with the graph to `beta`.
///
/// # Shapes
/// `beta: [num_edges]` -> `[num_edges]`
pub fn edge_normalisation_weights(space: &CellSpace, beta: &Tensor) -> Tensor {
    let parts: Vec<Tensor> = (0..space.num_nodes)
        .map(|node| {
            let range = space.node_edges(node);
            beta.narrow(0, range.start as i64, range.len() as i64)
                .softmax(0, beta.kind())
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Each row of the op probabilities `[num_edges, num_ops]` times its edge's normalisation
/// weight: what PC-DARTS ranks edges and ops by when deriving a genotype.
pub fn scale_rows(probabilities: &Tensor, edge_weights: &Tensor) -> Tensor {
    probabilities * edge_weights.to_kind(probabilities.kind()).unsqueeze(1)
}

/// Handles on the betas of an [`super::ArchParams`] (same storage and autograd identity, not
/// copies) that a supernet holds so that every forward, whoever calls it (a loop, a strategy
/// through an objective, a health check), weighs its edges by the current betas. The betas stay
/// in the architecture store: the weight optimizer never sees them.
#[derive(Debug)]
pub struct EdgeBetas {
    pub space: CellSpace,
    pub normal: Tensor,
    pub reduce: Option<Tensor>,
}

impl EdgeBetas {
    /// `weights` with each cell type's edge-normalisation factors attached, computed from the
    /// betas with their graph (so a backward through the forward reaches the betas, as it does
    /// the alphas for whichever op weights carry a graph).
    pub fn attach(&self, weights: &CellWeights) -> CellWeights {
        let scale = |beta: &Tensor| edge_normalisation_weights(&self.space, beta);
        CellWeights {
            normal: weights
                .normal
                .shallow_clone()
                .with_edge_scale(scale(&self.normal)),
            reduce: weights.reduce.as_ref().map(|r| match &self.reduce {
                Some(beta) => r.shallow_clone().with_edge_scale(scale(beta)),
                None => r.shallow_clone(),
            }),
        }
    }

    pub fn shallow_clone(&self) -> Self {
        Self {
            space: self.space,
            normal: self.normal.shallow_clone(),
            reduce: self.reduce.as_ref().map(Tensor::shallow_clone),
        }
    }
}

#[cfg(test)]
#[path = "partial_tests.rs"]
mod tests;
