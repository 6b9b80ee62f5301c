//! PPO as the objective of a bilevel search strategy, and the block of alpha steps a bilevel
//! strategy takes after each PPO update (DARTS's train/val split cut along environments: the
//! training rollout is the train split, the search rollout the validation split).

use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::search::{ArchSearch, StatsSum};
use crate::agents::{
    normalize_advantages, normalize_advantages_global, ppo_loss, ActorCritic, Batch, DataParallel,
    PpoConfig,
};
use crate::nas::CellWeights;
use crate::search::{ArchStepStats, Objective, SearchError, VirtualStep};
use crate::train::TrainError;

/// The PPO loss (clipped surrogate, value loss, entropy bonus; [`ppo_loss`]) of the current
/// policy on a minibatch of the training rollout (`train_loss`) or of the search rollout
/// (`search_loss`), for the op weights the strategy passes.
pub struct PpoObjective<'a> {
    pub policy: &'a ActorCritic<CellWeights>,
    pub config: PpoConfig,
    pub train: Batch,
    pub search_batch: Batch,
    /// The weights' optimizer's parameters (every trainable weight, no alpha).
    pub parameters: Vec<Tensor>,
    /// Non-trainable state of the weight store (none in today's RL encoders; snapshotted by
    /// virtual steps all the same).
    pub buffers: Vec<Tensor>,
    /// The weights' current learning rate.
    pub lr: f64,
    /// The other processes of a data-parallel run: the strategy's gradients and loss values
    /// are averaged over them ([`Objective::average_over_processes`]).
    pub data_parallel: Option<&'a dyn DataParallel>,
}

impl PpoObjective<'_> {
    fn loss(&self, batch: &Batch, weights: &CellWeights) -> Tensor {
        let new = self.policy.evaluate(&batch.obs, &batch.actions, weights);
        ppo_loss(&new, batch, &self.config).loss
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

    fn average_over_processes(&self, tensors: &[Tensor]) -> Result<(), SearchError> {
        match self.data_parallel {
            Some(dp) => dp
                .all_reduce_mean(tensors)
                .map_err(|e| SearchError::Objective(e.to_string())),
            None => Ok(()),
        }
    }

    fn average_value_over_processes(&self, value: f64) -> Result<f64, SearchError> {
        let Some(dp) = self.data_parallel else {
            return Ok(value);
        };
        let mut v = [value];
        dp.all_reduce_sum(&mut v)
            .map_err(|e| SearchError::Objective(e.to_string()))?;
        Ok(v[0] / dp.world_size() as f64)
    }
}

impl PpoObjective<'_> {
    /// Normalises the advantages of both minibatches once, here, when `config.norm_adv` asks
    /// for it (then the loss leaves them as they are): over the whole minibatch of every
    /// process when data-parallel, as the PPO update normalises its minibatches, so that the
    /// loss each process differentiates is its share of the whole minibatch's loss.
    pub fn normalise_advantages(mut self) -> Result<Self, TrainError> {
        if self.config.norm_adv {
            let dp = self.data_parallel.filter(|dp| dp.world_size() > 1);
            for batch in [&mut self.train, &mut self.search_batch] {
                batch.advantages = match dp {
                    Some(dp) => normalize_advantages_global(&batch.advantages, dp)?,
                    None => normalize_advantages(&batch.advantages),
                };
            }
            self.config.norm_adv = false;
        }
        Ok(self)
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
    /// The other processes of a data-parallel run (None: this process alone).
    pub data_parallel: Option<&'a dyn DataParallel>,
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
        let dp = phase.data_parallel.filter(|dp| dp.world_size() > 1);
        for t in first + 1..=first + n {
            if !self.strategy.wants_arch_step(t) {
                continue;
            }
            let mut objective = PpoObjective {
                policy: phase.policy,
                config: phase.ppo.clone(),
                train: draw(phase.train, phase.minibatch, rng),
                search_batch: draw(phase.search, phase.minibatch, rng),
                parameters: phase.parameters.iter().map(Tensor::shallow_clone).collect(),
                buffers: phase.buffers.iter().map(Tensor::shallow_clone).collect(),
                lr: self.lr,
                data_parallel: dp,
            }
            .normalise_advantages()?;
            let stats = self.strategy.arch_step(&self.arch, &mut objective)?;
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
