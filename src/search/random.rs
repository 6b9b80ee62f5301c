//! Random search, the honest baseline (Li & Talwalkar, UAI 2019, "Random search and
//! reproducibility for NAS"; DARTS's Table 1 baseline, Liu et al. 2019): genotypes drawn
//! uniformly from the DARTS-style space (per node two distinct predecessors, each with a
//! uniformly drawn op other than `none`).
//!
//! Two uses:
//! - through the [`SearchStrategy`] trait, *with weight sharing* (Li & Talwalkar's RSWS):
//!   every weight step trains a freshly sampled architecture of the supernet (hard one-hot op
//!   weights, only the sampled ops are evaluated), and every alpha step scores one new
//!   candidate on the search batch with the shared weights and keeps the best so far, written
//!   into the alphas as a one-hot pattern (so `derive` reads it back);
//! - from scratch (DARTS's baseline): the supervised loop draws `num_candidates` genotypes
//!   with [`RandomSearch::sample_genotype`], trains each for `epochs_per_candidate` epochs and
//!   keeps the best on the validation split.

use std::path::Path;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_strategy, save_strategy};
use super::{ArchSample, ArchStepStats, Objective, Phase, SearchError, SearchStrategy};
use crate::nas::{ArchParams, CellSpace, CellWeights, Gene, Genotype, OpWeights};

/// `[search.strategy.params]` of `kind = "random"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomParams {
    /// Genotypes trained from scratch by the supervised baseline. DARTS's baseline: 24.
    pub num_candidates: usize,
    /// Epochs of training per candidate (from scratch, at the search network's size).
    pub epochs_per_candidate: usize,
    /// Incoming edges kept per node. DARTS: 2.
    pub edges_per_node: usize,
    /// How the searches that can do either run random search. false (default): from scratch,
    /// the honest baseline: `rl-darts search` trains `num_candidates` genotypes for
    /// `epochs_per_candidate` epochs each, and the RL pipeline's search phase trains them with
    /// PPO for `pipeline.search_timesteps / num_candidates` env steps each (the search's budget,
    /// so DARTS and random compare at equal compute); the best is kept. true: random search
    /// with weight sharing (Li & Talwalkar's RSWS) through the strategy loop, one supernet.
    /// A single `train --encoder rl_darts` run is always RSWS.
    pub weight_sharing: bool,
}

impl Default for RandomParams {
    fn default() -> Self {
        Self {
            num_candidates: 8,
            epochs_per_candidate: 5,
            edges_per_node: 2,
            weight_sharing: false,
        }
    }
}

/// One sampled architecture: per edge, the op index (`none` on edges not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Candidate {
    normal: Vec<usize>,
    reduce: Option<Vec<usize>>,
}

/// Sampler and incumbent state, checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    rng: ChaCha8Rng,
    current: Option<Candidate>,
    best: Option<(f64, Candidate)>,
    scored: u64,
}

/// The random-search strategy.
#[derive(Debug)]
pub struct RandomSearch {
    params: RandomParams,
    space: CellSpace,
    with_reduce: bool,
    none: usize,
    state: State,
}

const STATE_FILE: &str = "random_search.json";

/// Value of the chosen op's logit in the alphas that encode the incumbent: softmax then puts
/// e/(e + n - 1) on it, so every derivation rule reads the incumbent back.
const ONE_HOT_LOGIT: f64 = 1.0;

impl RandomSearch {
    pub fn new(arch: &ArchParams, params: RandomParams, seed: u64) -> Result<Self, SearchError> {
        let space = *arch.space();
        let none = space.op_set.none_index().ok_or_else(|| {
            SearchError::Invalid(format!(
                "random search marks dropped edges with `none`, which op set {} lacks",
                space.op_set
            ))
        })?;
        if space.num_ops() < 2 || params.edges_per_node == 0 {
            return Err(SearchError::Invalid(format!(
                "random search needs an op besides none and edges_per_node >= 1 (got {})",
                params.edges_per_node
            )));
        }
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(seed),
            current: None,
            best: None,
            scored: 0,
        };
        Ok(Self {
            params,
            space,
            with_reduce: arch.alpha_reduce().is_some(),
            none,
            state,
        })
    }

    pub fn params(&self) -> &RandomParams {
        &self.params
    }

    fn sample_cell(&mut self) -> Vec<usize> {
        let mut ops = vec![self.none; self.space.num_edges()];
        for node in 0..self.space.num_nodes {
            let edges = self.space.node_edges(node);
            let k = self.params.edges_per_node.min(edges.len());
            for from in sample(&mut self.state.rng, edges.len(), k).into_vec() {
                // Uniform over the ops other than `none`.
                let mut op = self.state.rng.gen_range(0..self.space.num_ops() - 1);
                if op >= self.none {
                    op += 1;
                }
                ops[edges.start + from] = op;
            }
        }
        ops
    }

    fn sample(&mut self) -> Candidate {
        let normal = self.sample_cell();
        let reduce = self.with_reduce.then(|| self.sample_cell());
        Candidate { normal, reduce }
    }

    fn genes(&self, ops: &[usize]) -> Vec<Vec<Gene>> {
        let kinds = self.space.op_set.ops();
        (0..self.space.num_nodes)
            .map(|node| {
                self.space
                    .node_edges(node)
                    .enumerate()
                    .filter(|&(_, e)| ops[e] != self.none)
                    .map(|(from, e)| (kinds[ops[e]], from))
                    .collect()
            })
            .collect()
    }

    fn genotype(&self, c: &Candidate) -> Genotype {
        let concat: Vec<usize> =
            (self.space.num_inputs..self.space.num_inputs + self.space.num_nodes).collect();
        Genotype {
            normal: self.genes(&c.normal),
            normal_concat: concat.clone(),
            reduce: c.reduce.as_ref().map(|r| self.genes(r)).unwrap_or_default(),
            reduce_concat: if c.reduce.is_some() {
                concat
            } else {
                Vec::new()
            },
        }
    }

    /// A uniformly drawn genotype (the from-scratch baseline's candidates).
    pub fn sample_genotype(&mut self) -> Genotype {
        let c = self.sample();
        self.genotype(&c)
    }

    /// Hard one-hot op weights for `c`, evaluating only the chosen op per edge.
    fn weights(&self, arch: &ArchParams, c: &Candidate) -> Result<CellWeights, SearchError> {
        let one_hot = |alpha: &Tensor, ops: &[usize]| -> Result<OpWeights, SearchError> {
            let w = alpha.zeros_like().detach();
            let index = Tensor::from_slice(&ops.iter().map(|&o| o as i64).collect::<Vec<_>>())
                .to_device(w.device());
            let w = w.scatter_value(1, &index.unsqueeze(1), 1.0);
            Ok(OpWeights::one_hot(w, ops)?)
        };
        let normal = one_hot(arch.alpha_normal(), &c.normal)?;
        let reduce = match (arch.alpha_reduce(), &c.reduce) {
            (Some(a), Some(ops)) => Some(one_hot(a, ops)?),
            _ => None,
        };
        Ok(CellWeights { normal, reduce })
    }

    /// The incumbent as alphas: `ONE_HOT_LOGIT` on each edge's op (`none` on dropped edges).
    fn write_alphas(&self, arch: &ArchParams, c: &Candidate) {
        tch::no_grad(|| {
            let write = |alpha: &Tensor, ops: &[usize]| {
                let index = Tensor::from_slice(&ops.iter().map(|&o| o as i64).collect::<Vec<_>>())
                    .to_device(alpha.device());
                let pattern =
                    alpha
                        .zeros_like()
                        .scatter_value(1, &index.unsqueeze(1), ONE_HOT_LOGIT);
                let mut live = alpha.shallow_clone();
                live.copy_(&pattern);
            };
            write(arch.alpha_normal(), &c.normal);
            if let (Some(a), Some(ops)) = (arch.alpha_reduce(), &c.reduce) {
                write(a, ops);
            }
        });
    }
}

impl SearchStrategy for RandomSearch {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// Weight phase: a fresh uniform sample per call (RSWS trains the supernet on random
    /// paths). Arch phase: the candidate being scored. Eval: the incumbent.
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        let c = match phase {
            Phase::Weights => self.sample(),
            Phase::Arch => match &self.state.current {
                Some(c) => c.clone(),
                None => {
                    let c = self.sample();
                    self.state.current = Some(c.clone());
                    c
                }
            },
            Phase::Eval => match &self.state.best {
                Some((_, c)) => c.clone(),
                None => self.sample(),
            },
        };
        self.weights(arch, &c)
    }

    /// RSWS: a uniformly drawn candidate trains the shared weights for one rollout and update.
    fn sample_architecture(&mut self, arch: &ArchParams) -> Result<ArchSample, SearchError> {
        let c = self.sample();
        Ok(ArchSample::Fixed(self.weights(arch, &c)?))
    }

    fn wants_arch_step(&self, _iteration: u64) -> bool {
        true
    }

    /// Scores one new candidate on the search batch with the shared weights; a better one
    /// becomes the incumbent and is written into the alphas.
    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let c = self.sample();
        self.state.current = Some(c.clone());
        let weights = self.weights(arch, &c)?;
        let loss = tch::no_grad(|| objective.search_loss(&weights))?.f_double_value(&[])?;
        // The whole batch's loss, so that every process keeps the same incumbent.
        let loss = objective.average_value_over_processes(loss)?;
        self.state.scored += 1;
        if loss.is_finite()
            && self
                .state
                .best
                .as_ref()
                .is_none_or(|(best, _)| loss < *best)
        {
            self.write_alphas(arch, &c);
            self.state.best = Some((loss, c));
        }
        Ok(ArchStepStats {
            loss,
            grad_norm: 0.0,
        })
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        match &self.state.best {
            Some((_, c)) => Ok(self.genotype(c)),
            // Nothing scored yet: whatever the alphas say, by the DARTS rule.
            None => Ok(arch.derive_genotype(crate::nas::DeriveRule::Darts)?),
        }
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![("candidates_scored", self.state.scored as f64)];
        if let Some((best, _)) = &self.state.best {
            out.push(("best_search_loss", *best));
        }
        out
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_strategy(dir, None, STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        self.state = load_strategy(dir, None, STATE_FILE)?;
        Ok(())
    }

    /// Candidates come from the strategy's seeded generator (the same on every process) and
    /// are scored by the whole batch's loss, averaged over the processes.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{AlphaInit, OpKind};
    use tch::Device;

    #[test]
    fn samples_are_valid_darts_genotypes_and_cover_the_ops() {
        let arch =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        let mut rs = RandomSearch::new(&arch, RandomParams::default(), 3).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let g = rs.sample_genotype();
            g.validate(2, true).unwrap();
            assert!(g.normal.iter().all(|genes| genes.len() == 2));
            assert!(g.normal.iter().flatten().all(|(op, _)| *op != OpKind::None));
            // Two distinct predecessors per node.
            assert!(g.reduce.iter().all(|genes| genes[0].1 != genes[1].1));
            seen.extend(g.normal.iter().flatten().map(|(op, _)| *op));
        }
        assert_eq!(seen.len(), 7, "{seen:?}");
        // Same seed, same draws.
        let mut a = RandomSearch::new(&arch, RandomParams::default(), 9).unwrap();
        let mut b = RandomSearch::new(&arch, RandomParams::default(), 9).unwrap();
        assert_eq!(a.sample_genotype(), b.sample_genotype());
    }

    #[test]
    fn alphas_written_for_a_candidate_derive_back_to_it() {
        let arch =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        let mut rs = RandomSearch::new(&arch, RandomParams::default(), 5).unwrap();
        let c = rs.sample();
        rs.write_alphas(&arch, &c);
        assert_eq!(
            arch.derive_genotype(crate::nas::DeriveRule::Darts).unwrap(),
            rs.genotype(&c)
        );
    }
}
