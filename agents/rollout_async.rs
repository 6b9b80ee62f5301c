//! Asynchronous env stepping in the rollout (EnvPool's async mode): the batch is held as two
//! halves ([`crate::envs::SplitVecEnv`]); while one half steps on a second thread, the policy
//! runs on the other half's frames.
//!
//! The schedule, for halves A (envs `0..k`) and B (`k..N`):
//!
//! ```text
//! act A_0
//! for t: | step A_t (thread) || act B_t  |  step B_t (thread) || act A_{t+1} |
//! ```
//!
//! Each env's trajectory is the synchronous rollout's ([`super::rollout::collect_rollout`]):
//! an env's action at step t depends only on its own frame and on its own uniform, drawn from
//! the same generator in the same order (all `N` uniforms of step t, before any of step
//! t + 1); rewards are normalised a whole row at a time, as in the synchronous rollout, once
//! both halves have stepped; episodes are reported in env order. The policy sees half
//! batches, so an encoder whose output for one frame depends on the other frames of its batch
//! (batch statistics) would act differently, and float rounding of a batched kernel may
//! differ with the batch size.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::arch::{Heartbeat, IterationPhase};
use super::normalize::RewardNormalizer;
use super::policy::ActorCritic;
use super::storage::RolloutStorage;
use super::AgentError;
use crate::envs::{EnvError, EpisodeStats, VecEnv};

/// Whether the PPO rollout steps its envs asynchronously (`ppo.async_envs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsyncEnvs {
    /// One batch, stepped after the policy has acted for all of it. The default: on the
    /// 2-core development machine, shared with other jobs, async stepping did not pay
    /// (BENCHMARKS.md, "Search overhead"): no core was free for the stepping thread, and two
    /// half-batch forwards of a supernet cost more than one whole-batch forward (its many small
    /// kernels are dispatch-bound at 4-8 frames).
    #[default]
    Off,
    /// Two halves, each stepping while the policy acts for the other (Procgen only).
    On,
    /// `on` for Procgen when the machine has a core to spare for stepping while the network
    /// runs (more cores than libtorch's intra-op threads), `off` otherwise.
    Auto,
}

impl AsyncEnvs {
    /// Whether to split the envs, for env `env_name` (`is_procgen`) with `num_envs` envs;
    /// `Err` for `on` where it cannot work.
    pub fn resolve(self, is_procgen: bool, num_envs: usize) -> Result<bool, AgentError> {
        let possible = is_procgen && num_envs >= 2;
        match self {
            AsyncEnvs::Off => Ok(false),
            AsyncEnvs::On if !possible => Err(AgentError::Config(format!(
                "ppo.async_envs = on needs a Procgen game and at least 2 envs (got {num_envs} \
                 envs{})",
                if is_procgen {
                    ""
                } else {
                    " of a non-Procgen env"
                }
            ))),
            AsyncEnvs::On => Ok(true),
            AsyncEnvs::Auto => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                Ok(possible && cores > tch::get_num_threads().max(1) as usize)
            }
        }
    }
}

/// One half's transition, copied out of the env's buffers on the stepping thread.
struct Transition {
    obs: Tensor,
    reward: Vec<f32>,
    first: Vec<u8>,
    finished: Vec<EpisodeStats>,
}

fn step_half(env: &mut dyn VecEnv, actions: &[i64]) -> Result<Transition, EnvError> {
    let view = env.step(actions)?;
    Ok(Transition {
        obs: view.obs.copy(),
        reward: view.reward.to_vec(),
        first: view.first.to_vec(),
        finished: view.finished.to_vec(),
    })
}

fn stepping_panicked() -> AgentError {
    AgentError::Config("the thread stepping half of the envs panicked".into())
}

/// The half `[start, start + len)` of a rollout: its rows of the storage.
#[derive(Clone, Copy)]
struct Half {
    start: usize,
    len: usize,
}

impl Half {
    /// Actions for this half at step `t`, written into the storage; returns them on the host.
    fn act<A>(
        &self,
        policy: &ActorCritic<A>,
        storage: &mut RolloutStorage,
        uniform: &[f64],
        arch: &A,
        t: usize,
    ) -> Result<Vec<i64>, AgentError> {
        let (start, len) = (self.start as i64, self.len as i64);
        let device = storage.obs.device();
        let obs = storage.obs.f_get(t as i64)?.f_narrow(0, start, len)?;
        let uniform = Tensor::from_slice(&uniform[self.start..self.start + self.len]);
        let act = policy.act_with_uniform(&obs, &uniform.to_device(device), arch);
        let row = |x: &Tensor| x.f_get(t as i64).and_then(|r| r.f_narrow(0, start, len));
        row(&storage.actions)?.f_copy_(&act.action)?;
        row(&storage.logprobs)?.f_copy_(&act.logprob)?;
        row(&storage.values)?.f_copy_(&act.value)?;
        Ok(Vec::<i64>::try_from(act.action.to_device(Device::Cpu))?)
    }

    /// Writes this half's transition of step `t` into the storage (rewards raw).
    fn record(
        &self,
        storage: &mut RolloutStorage,
        tr: &Transition,
        t: usize,
    ) -> Result<(), AgentError> {
        let n = storage.num_envs;
        let (start, len) = (self.start as i64, self.len as i64);
        let row = t * n + self.start;
        storage.rewards[row..row + self.len].copy_from_slice(&tr.reward);
        let next = t + 1;
        let device = storage.obs.device();
        let obs = tr.obs.to_device(device);
        if next == storage.num_steps {
            storage.next_obs.f_narrow(0, start, len)?.f_copy_(&obs)?;
            storage.next_first[self.start..self.start + self.len].copy_from_slice(&tr.first);
        } else {
            storage
                .obs
                .f_get(next as i64)?
                .f_narrow(0, start, len)?
                .f_copy_(&obs)?;
            let row = next * n + self.start;
            storage.firsts[row..row + self.len].copy_from_slice(&tr.first);
        }
        Ok(())
    }
}

/// [`super::rollout::collect_rollout`] on an env that [`VecEnv::halves`] splits: the same
/// result, env by env, with one half's stepping overlapping the policy on the other half.
pub(super) fn collect_rollout_async<A, R: Rng + ?Sized>(
    env: &mut dyn VecEnv,
    policy: &ActorCritic<A>,
    storage: &mut RolloutStorage,
    mut normalizer: Option<&mut RewardNormalizer>,
    rng: &mut R,
    arch: &A,
    progress: &mut dyn Heartbeat,
) -> Result<Vec<EpisodeStats>, AgentError> {
    let n = storage.num_envs;
    let view = env.observe();
    storage.set_obs(0, view.obs, view.first)?;
    let Some((env_a, env_b)) = env.halves() else {
        return Err(AgentError::Config(
            "asynchronous stepping needs an env held as two halves".into(),
        ));
    };
    let a = Half {
        start: 0,
        len: env_a.spec().num_envs,
    };
    let b = Half {
        start: a.len,
        len: env_b.spec().num_envs,
    };
    let draw = |rng: &mut R| -> Vec<f64> { (0..n).map(|_| rng.gen()).collect() };
    let mut finished = Vec::new();
    let mut uniform = draw(rng);
    let mut actions_a = a.act(policy, storage, &uniform, arch, 0)?;
    for t in 0..storage.num_steps {
        // Step A while the policy acts for B.
        let (tr_a, actions_b) = std::thread::scope(|s| {
            let stepping = s.spawn(|| step_half(env_a, &actions_a));
            let actions_b = b.act(policy, storage, &uniform, arch, t);
            (stepping.join(), actions_b)
        });
        let tr_a = tr_a.map_err(|_| stepping_panicked())??;
        let actions_b = actions_b?;
        a.record(storage, &tr_a, t)?;
        // Step B while the policy acts for A at t + 1 (its uniforms come after all of t's).
        let last = t + 1 == storage.num_steps;
        if !last {
            uniform = draw(rng);
        }
        let (tr_b, next_a) = std::thread::scope(|s| {
            let stepping = s.spawn(|| step_half(env_b, &actions_b));
            let next_a = (!last).then(|| a.act(policy, storage, &uniform, arch, t + 1));
            (stepping.join(), next_a)
        });
        let tr_b = tr_b.map_err(|_| stepping_panicked())??;
        if let Some(next_a) = next_a {
            actions_a = next_a?;
        }
        b.record(storage, &tr_b, t)?;
        // The whole row, as the synchronous rollout normalises it.
        let first: Vec<u8> = [tr_a.first.as_slice(), tr_b.first.as_slice()].concat();
        if let Some(norm) = normalizer.as_deref_mut() {
            norm.normalize(&mut storage.rewards[t * n..(t + 1) * n], &first);
        }
        finished.extend(tr_a.finished.iter().copied());
        finished.extend(tr_b.finished.iter().map(|e| EpisodeStats {
            env: e.env + b.start,
            ..*e
        }));
        if !progress.beat(IterationPhase::Rollout, t + 1, storage.num_steps) {
            env.gather_halves();
            return Err(AgentError::Interrupted);
        }
    }
    env.gather_halves();
    Ok(finished)
}
