//! GDAS (Dong & Yang, CVPR 2019, "Searching for a Robust Neural Architecture in Four GPU
//! Hours"; ../shared/REFERENCE.md section 10): per edge one op is sampled with the Gumbel-max
//! trick, the forward uses the hard one-hot `h` and the backward the straight-through
//! estimator `h - sg(p) + p` with `p = softmax((log_softmax(alpha) + g) / tau)`, so only the
//! sampled op of each edge is computed ([`OpWeights::one_hot`]). Bilevel like DARTS first
//! order: the alphas step on the search batch with a fresh sample; tau anneals linearly from
//! `tau_max` to `tau_min` over the search (official: 10 -> 0.1).
//!
//! The genotype is the official `genotype()` (`search_model_gdas_nasnet.py`): per node every
//! (op, input) pair except `none` ranked by `softmax(alpha)`, the top 2 pairs kept, so both may
//! read the same input ([`DeriveRule::Gdas`], the default `derive`).
//!
//! Departures from the official code (D-X-Y/AutoDL-Projects, `search_model_gdas_nasnet.py`,
//! `exps/NAS-Bench-201-algos/GDAS.py`):
//! - The Gumbel noise is drawn through `rand_distr` ([`super::sampling`]) from the strategy's
//!   own seeded ChaCha RNG (checkpointed) instead of libtorch's global generator
//!   (`-log(Exp(1))` there, the same law), so a resumed search draws the same samples; a
//!   non-finite draw is redrawn, as the official retry loop does.
//! - The order within an iteration (the official code steps the weights, then the alphas) is
//!   the search loop's; this strategy takes either.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_strategy, save_strategy};
use super::op_weights::argmax_weights;
use super::optim::ordered_variables;
use super::perturb::{grad, norm};
use super::sampling;
use super::{
    Adam, ArchAdamConfig, ArchSample, ArchStepStats, Objective, Phase, SearchError, SearchStrategy,
};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype, OpWeights};

/// `[search.strategy.params]` of `kind = "gdas"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GdasParams {
    /// Gumbel-softmax temperature at the first epoch. GDAS: 10.
    pub tau_max: f64,
    /// Temperature at the last epoch. GDAS: 0.1.
    pub tau_min: f64,
    /// Whether the weight step also uses a hard sample (GDAS: yes, the weights are trained
    /// on sampled sub-networks, which is where the speed comes from). With `false` the weight
    /// step uses the dense `softmax(alpha)` (DARTS-like, every op computed).
    pub sample_weights_phase: bool,
    /// How the genotype is read off `softmax(alpha)`. GDAS: `gdas` (per node the top-2
    /// (op, input) pairs, `none` excluded, both may read the same input; the official
    /// `genotype()`). `darts` keeps the top-2 *edges* instead.
    pub derive: DeriveRule,
    /// Adam over the alphas. GDAS: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (as DARTS).
    pub optimizer: ArchAdamConfig,
}

impl Default for GdasParams {
    fn default() -> Self {
        Self {
            tau_max: 10.0,
            tau_min: 0.1,
            sample_weights_phase: true,
            derive: DeriveRule::Gdas,
            optimizer: ArchAdamConfig::default(),
        }
    }
}

/// One hard sample of one cell type: the straight-through weights and what they were made of.
#[derive(Debug)]
pub struct GdasSample {
    /// `h - sg(p) + p`, exactly one-hot in value, `[num_edges, num_ops]`.
    pub hard: Tensor,
    /// The relaxed `p = softmax((log_softmax(alpha) + g) / tau)`, with graph to alpha.
    pub probs: Tensor,
    /// The sampled op per edge (`argmax p`).
    pub index: Vec<usize>,
}

/// Sampler state, checkpointed as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    rng: ChaCha8Rng,
    tau: f64,
    arch_steps: u64,
}

const STATE_FILE: &str = "gdas.json";

/// The GDAS strategy.
#[derive(Debug)]
pub struct Gdas {
    params: GdasParams,
    adam: Adam,
    state: State,
}

impl Gdas {
    pub fn new(arch: &ArchParams, params: GdasParams, seed: u64) -> Result<Self, SearchError> {
        if !(params.tau_min > 0.0 && params.tau_max >= params.tau_min) {
            return Err(SearchError::Invalid(format!(
                "gdas: need 0 < tau_min <= tau_max, got tau_min {} tau_max {}",
                params.tau_min, params.tau_max
            )));
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(seed),
            tau: params.tau_max,
            arch_steps: 0,
        };
        Ok(Self {
            params,
            adam,
            state,
        })
    }

    pub fn params(&self) -> &GdasParams {
        &self.params
    }

    /// Current temperature.
    pub fn tau(&self) -> f64 {
        self.state.tau
    }

    /// Standard Gumbel noise shaped like `alpha`, from the strategy's RNG
    /// ([`sampling::gumbel_tensor_like`]; the official code draws `-log(Exp(1))`, the same law).
    fn gumbel_like(&mut self, alpha: &Tensor) -> Result<Tensor, SearchError> {
        sampling::gumbel_tensor_like(&mut self.state.rng, alpha)
    }

    /// Draws one straight-through hard sample of `alpha` at the current temperature (the
    /// official `forward_gdas`).
    pub fn sample(&mut self, alpha: &Tensor) -> Result<GdasSample, SearchError> {
        let gumbel = self.gumbel_like(alpha)?;
        let logits = (alpha.log_softmax(-1, alpha.kind()) + gumbel) / self.state.tau;
        let probs = logits.softmax(-1, alpha.kind());
        let argmax = probs.argmax(-1, false);
        let index: Vec<i64> = Vec::<i64>::try_from(&argmax.to_device(tch::Device::Cpu))?;
        let one_hot = probs
            .zeros_like()
            .detach()
            .scatter_value(-1, &argmax.unsqueeze(-1), 1.0);
        let hard = one_hot - probs.detach() + &probs;
        Ok(GdasSample {
            hard,
            probs,
            index: index.into_iter().map(|i| i as usize).collect(),
        })
    }

    fn sampled_weights(&mut self, arch: &ArchParams) -> Result<CellWeights, SearchError> {
        let n = self.sample(arch.alpha_normal())?;
        let normal = OpWeights::one_hot(n.hard, &n.index)?;
        let reduce = match arch.alpha_reduce() {
            Some(a) => {
                let r = self.sample(a)?;
                Some(OpWeights::one_hot(r.hard, &r.index)?)
            }
            None => None,
        };
        Ok(CellWeights { normal, reduce })
    }
}

impl SearchStrategy for Gdas {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// Weights: a hard sample without graph to alpha (bilevel: the weight loss never reaches
    /// the alphas). Arch: a hard sample with the straight-through graph. Eval: the argmax
    /// sub-network.
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        match phase {
            Phase::Arch => self.sampled_weights(arch),
            Phase::Weights if self.params.sample_weights_phase => {
                let w = self.sampled_weights(arch)?;
                Ok(CellWeights {
                    normal: detach(&w.normal)?,
                    reduce: w.reduce.as_ref().map(detach).transpose()?,
                })
            }
            Phase::Weights => Ok(tch::no_grad(|| super::softmax_weights(arch, 1.0))),
            Phase::Eval => tch::no_grad(|| argmax_weights(arch)),
        }
    }

    /// A hard Gumbel sample per cell type at the current tau, detached: GDAS's alphas learn
    /// only in `arch_step` (on a sample of their own), so the update replays these exact
    /// one-hot weights, and only the sampled op of each edge runs, in the rollout and the update.
    fn sample_architecture(&mut self, arch: &ArchParams) -> Result<ArchSample, SearchError> {
        let w = self.sampled_weights(arch)?;
        Ok(ArchSample::Fixed(CellWeights {
            normal: detach(&w.normal)?,
            reduce: w.reduce.as_ref().map(detach).transpose()?,
        }))
    }

    /// Linear anneal `tau_max -> tau_min` over the epochs (official `search_model.set_tau(
    /// tau_max - (tau_max - tau_min) * epoch / (total_epoch - 1))`).
    fn begin_epoch(&mut self, epoch: usize, num_epochs: usize) {
        let span = num_epochs.saturating_sub(1).max(1) as f64;
        let frac = (epoch as f64 / span).min(1.0);
        self.state.tau = self.params.tau_max - (self.params.tau_max - self.params.tau_min) * frac;
    }

    /// Every iteration, as in GDAS's `search_func`.
    fn wants_arch_step(&self, _iteration: u64) -> bool {
        true
    }

    /// GDAS's `search_func` steps the weights on the train batch, then the alphas on the
    /// validation batch.
    fn arch_step_follows_weight_step(&self) -> bool {
        true
    }

    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let weights = self.sampled_weights(arch)?;
        let loss = objective.search_loss_for_alphas(&weights)?;
        let value = objective.average_value_over_processes(loss.f_double_value(&[])?)?;
        let g = grad(&loss, &arch.parameters(), false)?;
        objective.average_over_processes(&g)?;
        self.adam.step_with(&g)?;
        self.state.arch_steps += 1;
        Ok(ArchStepStats {
            loss: value,
            grad_norm: norm(&g),
        })
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("temperature", self.state.tau),
            ("arch_lr", self.adam.lr()),
            ("arch_steps", self.state.arch_steps as f64),
        ]
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_strategy(dir, Some(&self.adam), STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        self.state = load_strategy(dir, Some(&mut self.adam), STATE_FILE)?;
        Ok(())
    }

    /// First order on the validation loss, averaged over the processes; the hard sample is
    /// drawn from the strategy's generator, which has the same seed and so draws the same
    /// sample on every process.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}

/// The same hard sample without its graph.
fn detach(w: &OpWeights) -> Result<OpWeights, SearchError> {
    let index: Vec<usize> = (0..w.weights().size()[0] as usize)
        .map(|e| w.active(e).map_or(0, |a| a[0]))
        .collect();
    Ok(OpWeights::one_hot(w.weights().detach(), &index)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{AlphaInit, DartsSearchConfig, DartsSearchNet, Supernet};
    use tch::{nn, Device};

    /// Alphas of a one-cell, two-node DARTS supernet (the net itself is not needed).
    fn tiny_arch(with_reduce: bool) -> ArchParams {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = DartsSearchNet::new(
            vs.root(),
            &DartsSearchConfig {
                c: 4,
                layers: 1,
                num_nodes: 2,
                in_channels: 1,
                stem_multiplier: 1,
                ..Default::default()
            },
        )
        .unwrap();
        ArchParams::new(Device::Cpu, net.space(), with_reduce, AlphaInit::default()).unwrap()
    }

    #[test]
    fn temperature_anneals_linearly_from_ten_to_a_tenth() {
        let arch = tiny_arch(true);
        let mut g = Gdas::new(&arch, GdasParams::default(), 0).unwrap();
        g.begin_epoch(0, 5);
        assert!((g.tau() - 10.0).abs() < 1e-12);
        g.begin_epoch(2, 5);
        assert!((g.tau() - 5.05).abs() < 1e-12);
        g.begin_epoch(4, 5);
        assert!((g.tau() - 0.1).abs() < 1e-12);
        assert!(Gdas::new(
            &arch,
            GdasParams {
                tau_min: 0.0,
                ..Default::default()
            },
            0
        )
        .is_err());
    }

    #[test]
    fn samples_follow_the_softmax_distribution() {
        // Gumbel-max: argmax(log p + g) ~ Categorical(p), whatever tau.
        let arch = tiny_arch(false);
        let mut g = Gdas::new(&arch, GdasParams::default(), 3).unwrap();
        let alpha = Tensor::from_slice(&[0.0f64, 1.0, 2.0]).view([1, 3]);
        let p = [1.0, 1f64.exp(), 2f64.exp()];
        let z: f64 = p.iter().sum();
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[g.sample(&alpha).unwrap().index[0]] += 1;
        }
        for k in 0..3 {
            let expected = p[k] / z;
            let freq = counts[k] as f64 / n as f64;
            let sd = (expected * (1.0 - expected) / n as f64).sqrt();
            assert!(
                (freq - expected).abs() < 5.0 * sd,
                "op {k}: {freq} vs {expected}"
            );
        }
    }
}
