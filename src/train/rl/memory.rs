//! Fitting the PPO update into the machine's memory: a probe measures the update's peak memory
//! per sample, and minibatches that would not fit are split into micro-batches whose gradients
//! accumulate ([`crate::agents::ppo_update`]: the same update, in less memory).
//!
//! A supernet keeps every candidate op's activations for the backward pass: at paper size a
//! 2048-frame minibatch needs more than the 24 GB of a small machine, and the kernel's
//! out-of-memory killer would end the run without a word.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::agents::{ppo_loss, ActorCritic, Batch, PpoConfig};
use crate::device::host_memory;
use crate::train::TrainError;

/// `[memory]`: how the update fits the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Peak resident memory the run may reach, in GiB. Unset: 90% of what the process can
    /// have (its resident size plus the kernel's available memory, within its cgroup's limit).
    pub cap_gib: Option<f64>,
    /// Samples per forward/backward pass of the PPO update, a divisor of the minibatch size.
    /// Unset: the largest divisor whose measured peak fits the cap.
    pub micro_batch_size: Option<usize>,
}

/// Share of the limit (`memory.cap_gib`, or what the process can have) the planner fills with
/// its estimate. The rest covers what the probe cannot see: the search rollout, allocator
/// slack, the optimiser's first step. Without it a micro-batch whose estimate equals a cap
/// exactly overshot that cap by ~0.5% in CI (1933 MB under a 1925 MB cap).
const PLANNED_SHARE: f64 = 0.9;
const GIB: f64 = (1u64 << 30) as f64;

/// What the planner decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    pub minibatch: usize,
    /// Samples per pass; equal to `minibatch` when nothing is split.
    pub micro_batch: usize,
    /// Resident memory before the update's first pass (weights, rollout storage, libtorch).
    pub base_bytes: f64,
    /// Measured growth of the peak per sample of a pass.
    pub per_sample_bytes: f64,
    /// Estimated peak of the run with `micro_batch`.
    pub estimated_peak_bytes: f64,
    /// What the plan keeps under.
    pub budget_bytes: f64,
    /// Where the budget comes from.
    pub budget_source: String,
}

impl MemoryPlan {
    /// The line a run prints.
    pub fn describe(&self) -> String {
        let split = if self.micro_batch < self.minibatch {
            format!(
                "minibatch {} as {} x {}",
                self.minibatch,
                self.minibatch / self.micro_batch,
                self.micro_batch
            )
        } else {
            format!("minibatch {} in one pass", self.minibatch)
        };
        format!(
            "memory: {split}: estimated peak {:.1} GB of {:.1} GB ({}; {:.2} MB per sample)",
            self.estimated_peak_bytes / 1e9,
            self.budget_bytes / 1e9,
            self.budget_source,
            self.per_sample_bytes / 1e6
        )
    }
}

/// The peak resident memory of one forward + backward pass of the PPO loss on `n` samples of
/// `obs` (taken from the rollout storage's shape), measured through the kernel's high-water
/// mark.
pub(crate) fn reset_peak_or_err() -> Result<(), TrainError> {
    if !host_memory::reset_peak() {
        return Err(TrainError::Invalid(
            "memory planning needs /proc/self/clear_refs (Linux); set memory.micro_batch_size by hand".into(),
        ));
    }
    Ok(())
}

/// The process's peak resident bytes since the last reset.
pub(crate) fn peak_or_err() -> Result<f64, TrainError> {
    host_memory::peak_rss().map(|p| p as f64).ok_or_else(|| {
        TrainError::Invalid("cannot read the peak resident size from /proc/self/status".into())
    })
}

fn probe_peak<A>(
    policy: &ActorCritic<A>,
    arch: &mut dyn FnMut() -> Result<A, TrainError>,
    obs: &Tensor,
    n: i64,
    config: &PpoConfig,
) -> Result<f64, TrainError> {
    let device = obs.device();
    let f32s = (Kind::Float, device);
    let batch = Batch {
        obs: obs.narrow(0, 0, n),
        actions: Tensor::zeros([n], (Kind::Int64, device)),
        logprobs: Tensor::zeros([n], f32s),
        values: Tensor::zeros([n], f32s),
        advantages: Tensor::ones([n], f32s),
        returns: Tensor::zeros([n], f32s),
    };
    reset_peak_or_err()?;
    let new = policy.evaluate(&batch.obs, &batch.actions, &arch()?);
    ppo_loss(&new, &batch, config).loss.f_backward()?;
    peak_or_err()
}

/// Plans the update's passes: measures the peak of a pass on two probe sizes (the difference
/// is the per-sample cost, free of fixed overheads) and keeps the largest divisor of the
/// minibatch whose estimated peak fits the budget. `arch` gives the architecture of each probe
/// (fresh: a backward consumes its graph), which must cost at least what learning does (a
/// supernet: dense op weights with their graph). Gradients the probe leaves are the
/// caller's to clear. Host memory only: on CUDA give `micro_batch_size` by hand.
pub fn plan_update<A>(
    policy: &ActorCritic<A>,
    arch: &mut dyn FnMut() -> Result<A, TrainError>,
    probe_obs: &Tensor,
    config: &PpoConfig,
    memory: &MemoryConfig,
) -> Result<Option<MemoryPlan>, TrainError> {
    let minibatch = config.minibatch_size();
    if let Some(m) = memory.micro_batch_size {
        if m == 0 || !minibatch.is_multiple_of(m) {
            return Err(TrainError::Invalid(format!(
                "memory.micro_batch_size = {m} must divide the minibatch of {minibatch} (ppo.num_envs x ppo.num_steps / ppo.num_minibatches)"
            )));
        }
        return Ok(None);
    }
    if probe_obs.device() != Device::Cpu {
        return Ok(None);
    }
    let available = probe_obs.size()[0] as usize;
    plan_passes(minibatch, available, memory, "PPO update", &mut |n| {
        probe_peak(policy, arch, probe_obs, n, config)
    })
}

/// The planner behind [`plan_update`], for any loop that can split its batch: `probe(n)`
/// runs one forward + backward pass on `n` samples and returns the process's peak resident
/// bytes (after [`host_memory::reset_peak`]); the plan keeps the largest divisor of `batch`
/// whose estimated peak fits the budget. `what` names the pass in the error. `None` when no
/// budget can be found (no cap and no readable limit).
pub(crate) fn plan_passes(
    batch: usize,
    available: usize,
    memory: &MemoryConfig,
    what: &str,
    probe: &mut dyn FnMut(i64) -> Result<f64, TrainError>,
) -> Result<Option<MemoryPlan>, TrainError> {
    let minibatch = batch;
    let (budget, source) = match memory.cap_gib {
        Some(cap) if cap > 0.0 && cap.is_finite() => (
            PLANNED_SHARE * cap * GIB,
            format!("{:.0}% of memory.cap_gib", PLANNED_SHARE * 100.0),
        ),
        Some(cap) => {
            return Err(TrainError::Invalid(format!(
                "memory.cap_gib = {cap} must be positive"
            )))
        }
        None => match host_memory::process_limit() {
            Some(limit) => (
                PLANNED_SHARE * limit as f64,
                format!(
                    "{:.0}% of what this process can have",
                    PLANNED_SHARE * 100.0
                ),
            ),
            None => return Ok(None),
        },
    };
    let small = (minibatch / 8).clamp(1, 16).min(available) as i64;
    let large = (4 * small).min(minibatch as i64).min(available as i64);
    // Live memory only: the heap may hold freed memory (see host_memory::reset_peak).
    host_memory::release_free_heap();
    let base = host_memory::rss().unwrap_or(0) as f64;
    let peak_small = probe(small)?;
    let peak_large = probe(large)?;
    let per_sample = if large > small {
        ((peak_large - peak_small) / (large - small) as f64).max(0.0)
    } else {
        (peak_small - base).max(0.0) / small as f64
    };
    let estimate = |m: usize| peak_large + per_sample * (m as f64 - large as f64);
    let divisors: Vec<usize> = (1..=minibatch)
        .rev()
        .filter(|d| minibatch.is_multiple_of(*d))
        .collect();
    let Some(&micro) = divisors.iter().find(|&&d| estimate(d) <= budget) else {
        return Err(TrainError::Invalid(format!(
            "the {what} does not fit in memory even one sample at a time: {:.2} GB resident before it, {:.1} MB per sample, budget {:.2} GB ({source}); raise memory.cap_gib, free memory, or use a smaller network",
            base / 1e9,
            per_sample / 1e6,
            budget / 1e9
        )));
    };
    Ok(Some(MemoryPlan {
        minibatch,
        micro_batch: micro,
        base_bytes: base,
        per_sample_bytes: per_sample,
        estimated_peak_bytes: estimate(micro).max(base),
        budget_bytes: budget,
        budget_source: source,
    }))
}
