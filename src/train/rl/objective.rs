//! PPO as the objective of a bilevel search strategy, and the block of alpha steps a bilevel
//! strategy takes after each PPO update (DARTS's train/val split cut along environments: the
//! training rollout is the train split, the search rollout the validation split).

use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::search::{search_err, ArchSearch, StatsSum};
use crate::agents::{ppo_loss, ActorCritic, Batch, PpoConfig};
use crate::nas::CellWeights;
use crate::search::{ArchStepStats, Objective, SearchError, VirtualStep};
use crate::train::TrainError;

/// The PPO loss (clipped surrogate, value loss, entropy bonus; [`ppo_loss`]) of the current
/// policy on a minibatch of the training rollout (`train_loss`) or of the search rollout
/// (`search_loss`), for the op weights the strategy passes.
pub struct PpoObjective<'a> {
    pub policy: &'a ActorCritic<CellWeights>,
    pub config: &'a PpoConfig,
    pub train: Batch,
    pub search_batch: Batch,
    /// The weights' optimizer's parameters (every trainable weight, no alpha).
    pub parameters: Vec<Tensor>,
    /// Non-trainable state of the weight store (none in today's RL encoders; snapshotted by
    /// virtual steps all the same).
    pub buffers: Vec<Tensor>,
    /// The weights' current learning rate.
    pub lr: f64,
}

impl PpoObjective<'_> {
    fn loss(&self, batch: &Batch, weights: &CellWeights) -> Tensor {
        let new = self.policy.evaluate(&batch.obs, &batch.actions, weights);
        ppo_loss(&new, batch, self.config).loss
    }
}

impl Objective for PpoObjective<'_> {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.train, weights))
    }

    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(&self.search_batch, weights))
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.parameters.iter().map(Tensor::shallow_clone).collect()
    }

    fn buffers(&self) -> Vec<Tensor> {
        self.buffers.iter().map(Tensor::shallow_clone).collect()
    }

    /// The weights train with Adam, whose moments the PPO trainer keeps private: the DARTS
    /// virtual step is taken as plain SGD at Adam's learning rate (`w - lr grad`, no momentum,
    /// no weight decay). This understates Adam's step size (Adam moves each weight by about
    /// `lr` whatever its gradient's scale), a known gap of second-order DARTS under Adam.
    fn virtual_step(&self) -> VirtualStep {
        VirtualStep {
            lr: self.lr,
            momentum: 0.0,
            weight_decay: 0.0,
            momentum_buffers: self.parameters.iter().map(|_| None).collect(),
        }
    }
}

/// `amount` samples of `batch` drawn without replacement (all of it when smaller).
fn draw(batch: &Batch, amount: usize, rng: &mut ChaCha8Rng) -> Batch {
    let len = batch.len() as usize;
    let idx: Vec<i64> = sample(rng, len, amount.min(len))
        .into_iter()
        .map(|i| i as i64)
        .collect();
    batch.select(&Tensor::from_slice(&idx).to_device(batch.actions.device()))
}

/// What the alpha steps after one PPO update work on.
pub struct ArchPhase<'a> {
    pub policy: &'a ActorCritic<CellWeights>,
    pub ppo: &'a PpoConfig,
    /// The weights' optimizer's parameters, and the weight store's non-trainable state.
    pub parameters: Vec<Tensor>,
    pub buffers: Vec<Tensor>,
    /// The update's own training batch, and the search rollout's.
    pub train: &'a Batch,
    pub search: &'a Batch,
    /// Samples per minibatch of each alpha step.
    pub minibatch: usize,
    /// The weight steps of the update: `first..first + n` (global indices).
    pub weight_steps: (u64, u64),
}

impl ArchSearch {
    /// The alpha steps the strategy wants after the weight steps of one PPO update (see the
    /// module docs of [`super::search`]), each on a fresh minibatch of the training batch and
    /// one of the search batch. Returns the mean step statistics and the number of steps.
    pub fn arch_phase(
        &mut self,
        phase: ArchPhase<'_>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<(ArchStepStats, u32)>, TrainError> {
        let mut sum = StatsSum::default();
        let (first, n) = phase.weight_steps;
        for t in first + 1..=first + n {
            if !self.strategy.wants_arch_step(t) {
                continue;
            }
            let mut objective = PpoObjective {
                policy: phase.policy,
                config: phase.ppo,
                train: draw(phase.train, phase.minibatch, rng),
                search_batch: draw(phase.search, phase.minibatch, rng),
                parameters: phase.parameters.iter().map(Tensor::shallow_clone).collect(),
                buffers: phase.buffers.iter().map(Tensor::shallow_clone).collect(),
                lr: self.lr,
            };
            let stats = self
                .strategy
                .arch_step(&self.arch, &mut objective)
                .map_err(search_err)?;
            if !stats.loss.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "{}: the alpha step's search loss is {} at weight step {t}",
                    self.strategy.name(),
                    stats.loss
                )));
            }
            sum.add(&stats);
        }
        Ok(sum.mean())
    }
}
