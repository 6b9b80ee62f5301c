//! Op weights read off the architecture parameters, shared by the strategies: the softmax
//! relaxation (DARTS, Liu et al. ICLR 2019), the argmax child, detached copies, and the
//! alphas' per-edge probabilities for logging and derivation.

use tch::{Device, Kind, Tensor};

use super::{Phase, SearchError};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype, OpWeights};

/// Detached copies of `weights` (same active lists): fixed op weights for an [`ArchSample`].
pub fn detached(weights: &CellWeights) -> CellWeights {
    let one = |w: &OpWeights| {
        let t = w.weights().detach();
        match (0..w.weights().size()[0] as usize)
            .map(|e| w.active(e).map(<[usize]>::to_vec))
            .collect::<Option<Vec<_>>>()
        {
            Some(active) => OpWeights::sparse(t, active)
                .expect("the active lists came from weights of the same shape"),
            None => OpWeights::dense(t),
        }
    };
    CellWeights {
        normal: one(&weights.normal),
        reduce: weights.reduce.as_ref().map(one),
    }
}

/// The argmax child as hard one-hot op weights, detached (one active op per edge, so the
/// supernet evaluates only that op): the deterministic `Eval` weights of the sampling
/// strategies (GDAS, SNAS, UNAS).
pub fn argmax_weights(arch: &ArchParams) -> Result<CellWeights, SearchError> {
    let one = |a: &Tensor| -> Result<OpWeights, SearchError> {
        let idx = a.argmax(-1, false);
        let index = Vec::<i64>::try_from(&idx.to_device(Device::Cpu))?;
        let w = a
            .zeros_like()
            .detach()
            .scatter_value(-1, &idx.unsqueeze(-1), 1.0);
        let index: Vec<usize> = index.into_iter().map(|i| i as usize).collect();
        Ok(OpWeights::one_hot(w, &index)?)
    };
    Ok(CellWeights {
        normal: one(arch.alpha_normal())?,
        reduce: arch.alpha_reduce().map(one).transpose()?,
    })
}

/// `softmax(alpha / temperature)` per edge in alpha's own precision (the f64 gradient checks
/// need it; [`ArchParams::softmax_weights`] computes in f32).
pub fn softmax_weights(arch: &ArchParams, temperature: f64) -> CellWeights {
    let relax = |a: &Tensor| (a / temperature).softmax(-1, a.kind());
    CellWeights::dense(relax(arch.alpha_normal()), arch.alpha_reduce().map(relax))
}

/// Bilevel relaxation's op weights: `softmax(alpha / temperature)` with its graph to alpha only
/// in the arch step. Bilevel methods never backpropagate the weight loss into alpha (the
/// official DARTS code computes those gradients and throws them away with `zero_grad`).
pub fn bilevel_softmax_weights(arch: &ArchParams, temperature: f64, phase: Phase) -> CellWeights {
    match phase {
        Phase::Arch => softmax_weights(arch, temperature),
        Phase::Weights | Phase::Eval => tch::no_grad(|| softmax_weights(arch, temperature)),
    }
}

/// The genotype `rule` reads off `softmax(alpha)` (the DARTS derivation for every strategy whose
/// alphas are logits of the op distribution).
///
/// With PC-DARTS's edge normalisation each row is scaled by its edge's `softmax(beta)` over the
/// node's inputs ([`ArchParams::derivation_weights`]).
pub fn derive_from_softmax(arch: &ArchParams, rule: DeriveRule) -> Result<Genotype, SearchError> {
    let (normal, reduce) = arch.derivation_weights(|a| a.softmax(-1, a.kind()));
    Ok(Genotype::derive(
        arch.space(),
        &normal,
        reduce.as_ref(),
        rule,
    )?)
}

/// The alphas of `arch`, normal first (the order of every gradient list here).
pub fn alphas(arch: &ArchParams) -> Vec<Tensor> {
    let mut out = vec![arch.alpha_normal().shallow_clone()];
    out.extend(arch.alpha_reduce().map(Tensor::shallow_clone));
    out
}

/// `softmax(alpha)` rows of each cell type (normal, then reduce), `[num_edges][num_ops]`.
pub fn softmax_op_weights(arch: &ArchParams) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
    let mut out = vec![alpha_probabilities(arch.alpha_normal())?];
    if let Some(reduce) = arch.alpha_reduce() {
        out.push(alpha_probabilities(reduce)?);
    }
    Ok(out)
}

/// Per-edge softmax rows as f64 (for logging and derivation), `[num_edges][num_ops]`.
pub fn alpha_probabilities(alpha: &Tensor) -> Result<Vec<Vec<f64>>, SearchError> {
    let p = tch::no_grad(|| alpha.softmax(-1, Kind::Double));
    Ok(Vec::<Vec<f64>>::try_from(&p.to_device(Device::Cpu))?)
}
