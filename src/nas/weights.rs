//! Op weights, the interface between search strategies and supernets (NASLib's "the relaxation
//! is the plugin point"): a strategy turns architecture parameters into `[num_edges, num_ops]`
//! weights (softmax for DARTS / RL-DARTS, Gumbel-softmax for SNAS, straight-through one-hot for
//! GDAS, Dirichlet samples for DrNAS ...) and the supernet only ever sees the result. A
//! strategy that draws one architecture per example (UNAS's official default) hands
//! `[B, num_edges, num_ops]` weights instead, one matrix per example of the batch.

use tch::Tensor;

use super::error::NasError;
use super::space::CellSpace;

/// Op weights of one cell type.
///
/// `weights` is `[num_edges, num_ops]`; row `e` weighs the ops of edge `e` (edge order: see
/// [`CellSpace::edges`]). Per-example weights ([`OpWeights::per_example`]) are
/// `[B, num_edges, num_ops]`: `weights[b]` is the matrix of example `b` of the batch. PC-DARTS's edge normalisation
/// factors ride along as `edge_scale`: they scale the whole edge output, including channels that
/// bypass the ops, so they do not fold into the rows.
///
/// `active`, when present, lists per edge the ops to evaluate; every op outside the list must
/// have weight exactly 0 (a hard sample), so skipping it changes no value. Its weight still
/// enters the output as a broadcast scalar, GDAS's trick, so a straight-through estimator
/// `h - sg(p) + p` keeps a gradient path to every op's probability.
#[derive(Debug)]
pub struct OpWeights {
    weights: Tensor,
    active: Option<Vec<Vec<usize>>>,
    /// PC-DARTS's edge normalisation: `[num_edges]` factors multiplied into each edge's whole
    /// output (bypassed channels included, so not foldable into `weights` when channels are
    /// partial); `None` = 1. Attached by [`super::partial::EdgeBetas::attach`].
    edge_scale: Option<Tensor>,
}

impl OpWeights {
    /// Every op of every edge is evaluated (DARTS, SNAS, DrNAS).
    pub fn dense(weights: Tensor) -> Self {
        Self {
            weights,
            active: None,
            edge_scale: None,
        }
    }

    /// One op-weight matrix per example (UNAS's `same_alpha_minibatch = false`):
    /// `[B, num_edges, num_ops]`, every op evaluated; the mixed op weighs each example's op
    /// outputs by that example's row. Dense only: a per-example hard sample would run a
    /// different op subset per example, which needs a gather per op and example instead of one
    /// batched op call, so one-hot per-example weights go in here as dense matrices (every op
    /// runs, as the official UNAS code does).
    pub fn per_example(weights: Tensor) -> Result<Self, NasError> {
        if weights.dim() != 3 {
            return Err(NasError::Shape(format!(
                "per-example op weights must be [batch, num_edges, num_ops], got {:?}",
                weights.size()
            )));
        }
        Ok(Self {
            weights,
            active: None,
            edge_scale: None,
        })
    }

    /// Only `active[e]` is evaluated on edge `e`; checks that indices exist and that there is
    /// one list per edge.
    pub fn sparse(weights: Tensor, active: Vec<Vec<usize>>) -> Result<Self, NasError> {
        let size = weights.size();
        let (edges, ops) = match size[..] {
            [e, o] => (e as usize, o as usize),
            [_, _, _] => {
                return Err(NasError::Shape(format!(
                    "op weights {size:?} are per example; sparse (hard-sample) op weights must be \
                     one [num_edges, num_ops] matrix for the batch (per-example samples go in \
                     dense, see OpWeights::per_example)"
                )))
            }
            _ => {
                return Err(NasError::Shape(format!(
                    "op weights must be [num_edges, num_ops], got {size:?}"
                )))
            }
        };
        if active.len() != edges {
            return Err(NasError::Shape(format!(
                "{} active lists for {edges} edges",
                active.len()
            )));
        }
        if let Some((e, &o)) = active
            .iter()
            .enumerate()
            .find_map(|(e, list)| list.iter().find(|&&o| o >= ops).map(|o| (e, o)))
        {
            return Err(NasError::Shape(format!(
                "edge {e}: active op {o} out of range for {ops} ops"
            )));
        }
        Ok(Self {
            weights,
            active: Some(active),
            edge_scale: None,
        })
    }

    /// One sampled op per edge (GDAS): `index[e]` is evaluated on edge `e`.
    pub fn one_hot(weights: Tensor, index: &[usize]) -> Result<Self, NasError> {
        Self::sparse(weights, index.iter().map(|&i| vec![i]).collect())
    }

    /// `[num_edges, num_ops]`, or `[B, num_edges, num_ops]` per example.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// The batch size of per-example weights; `None` for one matrix for the whole batch.
    pub fn examples(&self) -> Option<i64> {
        (self.weights.dim() == 3).then(|| self.weights.size()[0])
    }

    /// Edge `e`'s op weights: `[num_ops]`, or `[B, num_ops]` per example.
    pub fn edge(&self, e: usize) -> Tensor {
        match self.examples() {
            Some(_) => self.weights.select(1, e as i64),
            None => self.weights.get(e as i64),
        }
    }

    /// The same weights with edge-normalisation factors `scale: [num_edges]`.
    pub fn with_edge_scale(self, scale: Tensor) -> Self {
        Self {
            edge_scale: Some(scale),
            ..self
        }
    }

    /// Edge `e`'s normalisation factor (a 0-dim tensor), or `None` without edge normalisation.
    pub fn edge_scale(&self, e: usize) -> Option<Tensor> {
        self.edge_scale.as_ref().map(|s| s.get(e as i64))
    }

    /// The ops to evaluate on `edge`, or `None` for all of them.
    pub fn active(&self, edge: usize) -> Option<&[usize]> {
        self.active.as_ref().map(|a| a[edge].as_slice())
    }

    /// `Err(Shape)` unless the weights are `[num_edges, num_ops]` of `space` (after the batch
    /// dimension of per-example weights).
    pub fn check(&self, space: &CellSpace) -> Result<(), NasError> {
        let expected = [space.num_edges() as i64, space.num_ops() as i64];
        let size = self.weights.size();
        if size[size.len().saturating_sub(2)..] != expected || !(2..=3).contains(&size.len()) {
            return Err(NasError::Shape(format!(
                "op weights {:?}, the {} cell space needs {expected:?}",
                self.weights.size(),
                space.op_set
            )));
        }
        if let Some(scale) = &self.edge_scale {
            if scale.size() != [space.num_edges() as i64] {
                return Err(NasError::Shape(format!(
                    "edge normalisation factors {:?}, the cell has {} edges",
                    scale.size(),
                    space.num_edges()
                )));
            }
        }
        if let Some(active) = &self.active {
            if active.len() != space.num_edges() {
                return Err(NasError::Shape(format!(
                    "{} active lists for {} edges",
                    active.len(),
                    space.num_edges()
                )));
            }
        }
        Ok(())
    }

    /// A new `OpWeights` sharing storage (and autograd graph) with this one.
    pub fn shallow_clone(&self) -> Self {
        Self {
            weights: self.weights.shallow_clone(),
            active: self.active.clone(),
            edge_scale: self.edge_scale.as_ref().map(Tensor::shallow_clone),
        }
    }
}

/// Op weights for one forward of a supernet: normal cells, and reduction cells where the
/// network has any (NAS-Bench-201 and the RL-DARTS "impala" variant do not).
#[derive(Debug)]
pub struct CellWeights {
    pub normal: OpWeights,
    pub reduce: Option<OpWeights>,
}

impl CellWeights {
    pub fn dense(normal: Tensor, reduce: Option<Tensor>) -> Self {
        Self {
            normal: OpWeights::dense(normal),
            reduce: reduce.map(OpWeights::dense),
        }
    }

    /// `Err(Shape)` unless both matrices fit `space` and `reduce` is present when `needs_reduce`.
    pub fn check(&self, space: &CellSpace, needs_reduce: bool) -> Result<(), NasError> {
        self.normal.check(space)?;
        match (&self.reduce, needs_reduce) {
            (Some(r), _) => r.check(space),
            (None, true) => Err(NasError::Shape(
                "this network has reduction cells but no reduce weights were given".into(),
            )),
            (None, false) => Ok(()),
        }
    }

    /// The reduction-cell weights; panics with the reason if a network with reduction cells is
    /// given none (a wiring error in the caller, caught by the first forward of any test).
    pub(crate) fn reduce_or_panic(&self) -> &OpWeights {
        self.reduce.as_ref().unwrap_or_else(|| {
            panic!("supernet has reduction cells but CellWeights.reduce is None; build weights from an ArchParams with a reduce matrix")
        })
    }

    pub fn shallow_clone(&self) -> Self {
        Self {
            normal: self.normal.shallow_clone(),
            reduce: self.reduce.as_ref().map(OpWeights::shallow_clone),
        }
    }
}
