//! Op weights, the interface between search strategies and supernets (NASLib's "the relaxation
//! is the plugin point"): a strategy turns architecture parameters into `[num_edges, num_ops]`
//! weights (softmax for DARTS / RL-DARTS, Gumbel-softmax for SNAS, straight-through one-hot for
//! GDAS, Dirichlet samples for DrNAS ...) and the supernet only ever sees the result.

use std::fmt;
use std::sync::{Arc, Mutex};

use tch::{Kind, Tensor};

use super::{ArchParams, CellSpace, NasError};

/// Op weights of one cell type.
///
/// `weights` is `[num_edges, num_ops]`; row `e` weighs the ops of edge `e` (edge order: see
/// [`CellSpace::edges`]). Any per-edge factor (PC-DARTS's edge normalisation beta) folds into
/// the rows, because a mixed op is linear in its weights.
///
/// `active`, when present, lists per edge the ops to evaluate; every op outside the list must
/// have weight exactly 0 (a hard sample), so skipping it changes no value. Its weight still
/// enters the output as a broadcast scalar, GDAS's trick, so a straight-through estimator
/// `h - sg(p) + p` keeps a gradient path to every op's probability.
#[derive(Debug)]
pub struct OpWeights {
    weights: Tensor,
    active: Option<Vec<Vec<usize>>>,
}

impl OpWeights {
    /// Every op of every edge is evaluated (DARTS, SNAS, DrNAS).
    pub fn dense(weights: Tensor) -> Self {
        Self {
            weights,
            active: None,
        }
    }

    /// Only `active[e]` is evaluated on edge `e`; checks that indices exist and that there is
    /// one list per edge.
    pub fn sparse(weights: Tensor, active: Vec<Vec<usize>>) -> Result<Self, NasError> {
        let size = weights.size();
        let (edges, ops) = match size[..] {
            [e, o] => (e as usize, o as usize),
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
        })
    }

    /// One sampled op per edge (GDAS): `index[e]` is evaluated on edge `e`.
    pub fn one_hot(weights: Tensor, index: &[usize]) -> Result<Self, NasError> {
        Self::sparse(weights, index.iter().map(|&i| vec![i]).collect())
    }

    /// `[num_edges, num_ops]`.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// The ops to evaluate on `edge`, or `None` for all of them.
    pub fn active(&self, edge: usize) -> Option<&[usize]> {
        self.active.as_ref().map(|a| a[edge].as_slice())
    }

    /// `Err(Shape)` unless the weights are `[num_edges, num_ops]` of `space`.
    pub fn check(&self, space: &CellSpace) -> Result<(), NasError> {
        let expected = [space.num_edges() as i64, space.num_ops() as i64];
        if self.weights.size() != expected {
            return Err(NasError::Shape(format!(
                "op weights {:?}, the {} cell space needs {expected:?}",
                self.weights.size(),
                space.op_set
            )));
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

type WeightsFn = dyn Fn(bool) -> CellWeights + Send;

/// Where an RL supernet encoder gets its op weights: a function of the `train` flag, called
/// once per forward, that a strategy may replace at any time.
///
/// # Why a function and not a tensor
///
/// [`crate::agents::Encoder::features`] takes only the observations, so the weights must reach
/// the encoder another way, and they must be *recomputed from alpha on every forward*: PPO runs
/// several minibatch backwards per rollout, and a weight tensor computed once would have its
/// softmax graph freed by the first backward (the second would fail, or with `keep_graph`
/// silently accumulate into one stale graph). A function re-derives the weights each time, so
/// the PPO loss backpropagates into alpha on every minibatch (RL-DARTS's joint first-order
/// mode), and a strategy changes the relaxation (temperature, sampling, hard one-hot) by
/// installing a new function via [`OpWeightsSlot::set`], without touching the encoder.
///
/// The slot is a cheap `Arc` handle: clone it, give one copy to the encoder and keep one in the
/// trainer/strategy. The function runs under a mutex (the encoder must be `Send`).
#[derive(Clone)]
pub struct OpWeightsSlot(Arc<Mutex<Box<WeightsFn>>>);

impl OpWeightsSlot {
    /// A slot holding `f`.
    pub fn new(f: impl Fn(bool) -> CellWeights + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(f))))
    }

    /// RL-DARTS / DARTS relaxation: `softmax(alpha / temperature)` over each edge's ops, both
    /// cell types, recomputed from `arch`'s alphas (which stay in the arch store) each forward.
    pub fn softmax(arch: &ArchParams, temperature: f64) -> Self {
        Self::new(softmax_fn(arch, temperature))
    }

    /// Installs the softmax relaxation at `temperature` (see [`OpWeightsSlot::softmax`]).
    pub fn set_softmax(&self, arch: &ArchParams, temperature: f64) {
        self.set(softmax_fn(arch, temperature));
    }

    /// Replaces the function; the next forward uses it.
    pub fn set(&self, f: impl Fn(bool) -> CellWeights + Send + 'static) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Box::new(f);
    }

    /// Calls the current function.
    pub fn weights(&self, train: bool) -> CellWeights {
        let f = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(train)
    }
}

/// `softmax(alpha / temperature)` per edge, from shallow clones of `arch`'s alphas (so the
/// result backpropagates into the arch store's variables).
fn softmax_fn(
    arch: &ArchParams,
    temperature: f64,
) -> impl Fn(bool) -> CellWeights + Send + 'static {
    let normal = arch.alpha_normal().shallow_clone();
    let reduce = arch.alpha_reduce().map(Tensor::shallow_clone);
    move |_train| {
        CellWeights::dense(
            (&normal / temperature).softmax(-1, Kind::Float),
            reduce
                .as_ref()
                .map(|r| (r / temperature).softmax(-1, Kind::Float)),
        )
    }
}

impl fmt::Debug for OpWeightsSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpWeightsSlot(..)")
    }
}
