//! Search health in the RL search ([`crate::train::health`]): measured after a PPO update on
//! the first minibatch of the batch the strategy's alpha step uses (the search rollout for
//! bilevel strategies, the update's own training batch for single-level ones), with PPO's
//! loss as the objective. Taking the first rows draws nothing from the run's random streams,
//! so turning health on leaves the run unchanged.

use tch::{Device, Kind, Tensor};

use super::objective::{ArchPhase, PpoObjective};
use super::search::ArchSearch;
use crate::agents::Batch;
use crate::logging::MetricsSink;
use crate::search::health::HealthLoss;
use crate::train::TrainError;

/// The first `n` transitions of `batch`.
fn head(batch: &Batch, n: usize) -> Batch {
    let n = n.min(batch.len() as usize).max(1) as i64;
    let index = Tensor::arange(n, (Kind::Int64, Device::Cpu)).to_device(batch.actions.device());
    batch.select(&index)
}

impl ArchSearch {
    /// Whether the iteration that has just made `iterations_done` PPO iterations owes a
    /// health measurement (due now, or due earlier and waiting for the strategy's batch).
    pub(super) fn health_due(&self, iterations_done: u64) -> bool {
        self.health.stopped.is_none()
            && (self.health_pending || self.config.health.due(iterations_done))
    }

    /// Measures search health on `phase`'s batches if the strategy's batch is there (a
    /// bilevel strategy's search rollout may be missing in an iteration without alpha steps:
    /// the measurement then waits for the next one). Returns whether the early stop fired.
    pub(super) fn measure_health(
        &mut self,
        phase: ArchPhase<'_>,
        has_search_batch: bool,
        sink: &mut dyn MetricsSink,
        iterations_done: u64,
        step: i64,
    ) -> Result<bool, TrainError> {
        let relaxation = self.strategy.health_relaxation(&self.arch)?;
        if relaxation.loss == HealthLoss::Search && !has_search_batch {
            self.health_pending = true;
            return Ok(false);
        }
        self.health_pending = false;
        let mut objective = PpoObjective {
            policy: phase.policy,
            config: phase.ppo.clone(),
            train: head(phase.train, phase.minibatch),
            search_batch: head(phase.search, phase.minibatch),
            parameters: phase.parameters,
            buffers: phase.buffers,
            lr: self.lr,
            // Each process measures on its own batch, with no collective: processes may reach
            // a measurement at different times (a bilevel one waits for its search rollout),
            // and the early-stop decision is shared afterwards (`run_loop`'s `any_process`).
            data_parallel: None,
        };
        let stopped = self.health.measure(
            &self.config.health,
            self.strategy.as_ref(),
            &self.arch,
            &mut objective,
            sink,
            iterations_done,
            step,
        )?;
        Ok(stopped.is_some())
    }

    /// Whether RobustDARTS's early stop ended the search.
    pub fn stopped_early(&self) -> bool {
        self.health.stopped.is_some()
    }

    /// Writes `early_stop.json` into `run_root` when the search stopped early.
    pub fn write_early_stop(&self, run_root: &std::path::Path) -> Result<(), TrainError> {
        self.health.write_stop(run_root).map_err(TrainError::from)
    }
}
