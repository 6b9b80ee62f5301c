//! Rollout collection and the PPO training iteration (collect `num_steps` x `num_envs`, GAE,
//! update), with checkpoints that resume the learner exactly.

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::arch::{Heartbeat, IterationArch, IterationPhase};
use super::normalize::RewardNormalizer;
use super::optim::{Adam, AdamConfig};
use super::policy::ActorCritic;
use super::ppo::{ppo_update, DataParallel, PpoConfig, PpoStats, UpdateDriver};
use super::storage::Batch;
use super::storage::RolloutStorage;
use super::AgentError;
use crate::envs::{EnvSpec, EpisodeStats, VecEnv};

/// Steps `env` for `storage.num_steps` steps with actions sampled from `policy`, filling
/// `storage` (observations, first flags, actions, log-probabilities, values, rewards scaled by
/// `normalizer` when given, and the observation after the last step). Continues from the
/// environment's current state, so consecutive rollouts join up. Returns the episodes that
/// finished during the rollout, with their raw returns. Actions are sampled with uniforms
/// drawn from `rng` (see [`ActorCritic::act_with_uniform`]); the encoder runs architecture
/// `arch` throughout. `progress` hears of every step and may stop the rollout. An env held as
/// two halves ([`VecEnv::halves`], `ppo.async_envs`) is stepped one half at a time, each half
/// stepping while the policy acts for the other ([`super::rollout_async`]), with the same
/// result env by env.
pub fn collect_rollout<A, R: Rng + ?Sized>(
    env: &mut dyn VecEnv,
    policy: &ActorCritic<A>,
    storage: &mut RolloutStorage,
    mut normalizer: Option<&mut RewardNormalizer>,
    rng: &mut R,
    arch: &A,
    progress: &mut dyn Heartbeat,
) -> Result<Vec<EpisodeStats>, AgentError> {
    let n = storage.num_envs;
    let spec = env.spec();
    let stored_shape = &storage.obs.size()[2..];
    if spec.num_envs != n || spec.obs_shape != stored_shape || spec.obs_kind != storage.obs.kind() {
        return Err(AgentError::Config(format!(
            "environment '{}' gives {} x {:?} {:?} observations, the rollout storage holds {n} x {stored_shape:?} {:?}",
            spec.name,
            spec.num_envs,
            spec.obs_shape,
            spec.obs_kind,
            storage.obs.kind()
        )));
    }
    let device = storage.obs.device();
    // On CUDA the env writes its frames straight into pinned memory, from which set_obs's
    // copies are DMAs that do not block the host (idempotent; a no-op for envs that cannot).
    if device.is_cuda() {
        env.pin_observations(device)?;
    }
    if env.halves().is_some() {
        return super::rollout_async::collect_rollout_async(
            env, policy, storage, normalizer, rng, arch, progress,
        );
    }
    let view = env.observe();
    storage.set_obs(0, view.obs, view.first)?;
    let mut finished = Vec::new();
    for t in 0..storage.num_steps {
        let step = t as i64;
        let uniform: Vec<f64> = (0..n).map(|_| rng.gen()).collect();
        let uniform = to_device_async(Tensor::from_slice(&uniform), device)?; // [N]
        let obs = storage.obs.f_get(step)?;
        let act = policy.act_with_uniform(&obs, &uniform, arch);
        storage.actions.f_get(step)?.f_copy_(&act.action)?;
        storage.logprobs.f_get(step)?.f_copy_(&act.logprob)?;
        storage.values.f_get(step)?.f_copy_(&act.value)?;
        // The one wait per step: the env needs the actions. It also orders this step's
        // observation upload (queued earlier on the same stream) before the env overwrites
        // the buffer in `step`.
        let actions = Vec::<i64>::try_from(act.action.to_device(Device::Cpu))?;

        let view = env.step(&actions)?;
        let rewards = &mut storage.rewards[t * n..(t + 1) * n];
        rewards.copy_from_slice(view.reward);
        if let Some(norm) = normalizer.as_deref_mut() {
            norm.normalize(rewards, view.first);
        }
        finished.extend_from_slice(view.finished);
        storage.set_obs(t + 1, view.obs, view.first)?;
        if !progress.beat(IterationPhase::Rollout, t + 1, storage.num_steps) {
            return Err(AgentError::Interrupted);
        }
    }
    Ok(finished)
}

/// `host` on `device` without blocking the host: a small host tensor goes through pinned memory
/// (libtorch's caching host allocator keeps the block until the copy has run). On the CPU,
/// `host` itself.
fn to_device_async(host: Tensor, device: Device) -> Result<Tensor, AgentError> {
    if !device.is_cuda() {
        return Ok(host);
    }
    Ok(host
        .f_pin_memory(device)?
        .f_to_device_(device, host.kind(), true, false)?)
}

/// What one [`PpoTrainer::iteration`] did.
#[derive(Debug, Clone)]
pub struct IterationStats {
    /// 1-based number of this iteration.
    pub iteration: u64,
    /// Environment steps so far, all envs together, including this iteration's.
    pub global_step: u64,
    /// Learning rate used by this iteration's update.
    pub learning_rate: f64,
    /// Episodes that ended during the rollout (raw, unnormalised returns).
    pub episodes: Vec<EpisodeStats>,
    pub ppo: PpoStats,
    /// Wall-clock seconds collecting the rollout (env steps + policy forward passes).
    pub rollout_secs: f64,
    /// Wall-clock seconds in GAE and the PPO update.
    pub update_secs: f64,
}

impl IterationStats {
    /// Environment steps per wall-clock second over the whole iteration.
    pub fn steps_per_sec(&self, batch_size: usize) -> f64 {
        batch_size as f64 / (self.rollout_secs + self.update_secs).max(1e-9)
    }
}

/// The learner state that is not a tensor, written as `trainer.json` in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    config: PpoConfig,
    seed: u64,
    iterations_done: u64,
    global_step: u64,
    normalizer: Option<RewardNormalizer>,
    /// Sampling/shuffling generator, mid-stream.
    rng: ChaCha8Rng,
}

const WEIGHTS_FILE: &str = "weights.safetensors";
const ADAM_FILE: &str = "adam.safetensors";
const STATE_FILE: &str = "trainer.json";

/// Owns everything PPO learns with: the policy and its weight store, Adam, the rollout
/// storage, the reward normaliser, and the step counters. The training loop calls
/// [`PpoTrainer::iteration`] until [`PpoTrainer::is_done`], logging what it returns.
///
/// Randomness: action sampling and minibatch shuffling draw from the trainer's own ChaCha8
/// generator (seeded with `seed`, saved in checkpoints), never from libtorch's global one, so
/// a run resumed from a checkpoint (with the environment's `save_state` restored by the
/// caller) continues exactly as one that never stopped. Only the weight initialisation, done
/// by the caller before `new`, uses libtorch's generator.
#[derive(Debug)]
pub struct PpoTrainer<A = ()> {
    pub config: PpoConfig,
    pub policy: ActorCritic<A>,
    /// The weights (encoder + heads); what `optimizer` trains.
    pub vs: nn::VarStore,
    pub optimizer: Adam,
    pub storage: RolloutStorage,
    /// None when `config.norm_reward` is off.
    pub normalizer: Option<RewardNormalizer>,
    /// The last iteration's training batch (GAE done), for what runs after the update (a
    /// bilevel search's alpha steps).
    last_batch: Option<Batch>,
    /// Samples per forward/backward pass of the update (None: whole minibatches).
    micro_batch: Option<usize>,
    seed: u64,
    rng: ChaCha8Rng,
    iterations_done: u64,
    global_step: u64,
    /// The other processes of a data-parallel run (see [`PpoTrainer::set_data_parallel`]).
    data_parallel: Option<std::rc::Rc<dyn DataParallel>>,
    /// fp16 runs only (created at their first update).
    loss_scaler: Option<super::compute::LossScaler>,
}

impl<A> PpoTrainer<A> {
    /// `policy`'s weights must live in `vs`; Adam is built over every trainable variable of
    /// `vs` now (architecture parameters belong in another store: the [`IterationArch`] given
    /// to [`PpoTrainer::iteration`] trains them). `spec` is the environment the trainer will
    /// step.
    pub fn new(
        vs: nn::VarStore,
        policy: ActorCritic<A>,
        spec: &EnvSpec,
        config: PpoConfig,
        seed: u64,
    ) -> Result<Self, AgentError> {
        config.validate()?;
        if spec.num_envs != config.num_envs {
            return Err(AgentError::Config(format!(
                "num_envs = {} but the environment has {} envs",
                config.num_envs, spec.num_envs
            )));
        }
        if spec.num_actions != policy.num_actions() {
            return Err(AgentError::Config(format!(
                "the policy has {} actions, environment '{}' has {}",
                policy.num_actions(),
                spec.name,
                spec.num_actions
            )));
        }
        let optimizer = Adam::new(
            &vs,
            AdamConfig {
                lr: config.learning_rate,
                eps: config.adam_eps,
                ..AdamConfig::default()
            },
        );
        let storage = RolloutStorage::new(spec, config.num_steps, vs.device())?;
        let normalizer = config
            .norm_reward
            .then(|| RewardNormalizer::new(config.num_envs, config.gamma, config.reward_clip));
        Ok(Self {
            config,
            policy,
            vs,
            optimizer,
            storage,
            normalizer,
            last_batch: None,
            micro_batch: None,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            iterations_done: 0,
            global_step: 0,
            data_parallel: None,
            loss_scaler: None,
        })
    }

    /// Makes this trainer one process of a data-parallel run: its `config` describes this
    /// process's share (its envs), every update all-reduces with the other processes
    /// ([`UpdateDriver::data_parallel`]), and `global_step` counts the env steps of all of them.
    pub fn set_data_parallel(&mut self, data_parallel: std::rc::Rc<dyn DataParallel>) {
        self.data_parallel = Some(data_parallel);
    }

    /// The other processes of a data-parallel run, if any (what a bilevel search's alpha
    /// steps average their gradients over).
    pub fn data_parallel(&self) -> Option<&dyn DataParallel> {
        self.data_parallel.as_deref()
    }

    /// Restarts the action-sampling and shuffling generator from `seed`: a data-parallel
    /// process other than the first, resumed from the first one's checkpoint, must not replay
    /// the first process's random stream.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    pub fn iterations_done(&self) -> u64 {
        self.iterations_done
    }

    pub fn global_step(&self) -> u64 {
        self.global_step
    }

    /// Whether `config.total_timesteps` worth of iterations have run.
    pub fn is_done(&self) -> bool {
        self.iterations_done >= self.config.num_iterations()
    }

    /// The learning rate the next iteration will use: constant, or CleanRL's linear
    /// annealing `lr * (1 - (iteration - 1) / num_iterations)`.
    pub fn learning_rate(&self) -> f64 {
        if !self.config.anneal_lr {
            return self.config.learning_rate;
        }
        let frac = 1.0 - self.iterations_done as f64 / self.config.num_iterations().max(1) as f64;
        self.config.learning_rate * frac.max(0.0)
    }

    /// Splits each minibatch of the update into passes of `micro_batch` samples whose
    /// gradients accumulate (see [`ppo_update`]); `None` runs whole minibatches. Not part of
    /// the checkpoint: it depends on the machine, not on the run.
    pub fn set_micro_batch(&mut self, micro_batch: Option<usize>) -> Result<(), AgentError> {
        let minibatch = self.config.minibatch_size();
        if let Some(m) = micro_batch {
            if m == 0 || !minibatch.is_multiple_of(m) {
                return Err(AgentError::Config(format!(
                    "a micro-batch of {m} does not divide the minibatch of {minibatch}"
                )));
            }
        }
        self.micro_batch = micro_batch.filter(|&m| m < minibatch);
        Ok(())
    }

    /// One rollout of `num_steps` x `num_envs` and one PPO update, the encoder running the
    /// architecture `arch` gives: [`IterationArch::acting`] in the rollout (and for the value
    /// that bootstraps GAE), [`IterationArch::learning`] in the update. `progress` hears of
    /// every env step and minibatch, and may stop the iteration
    /// ([`AgentError::Interrupted`]); the trainer is then left mid-iteration, to be restored
    /// from a checkpoint.
    pub fn iteration(
        &mut self,
        env: &mut dyn VecEnv,
        arch: &mut dyn IterationArch<A>,
        progress: &mut dyn Heartbeat,
    ) -> Result<IterationStats, AgentError> {
        let learning_rate = self.learning_rate();
        self.optimizer.set_lr(learning_rate);

        let start = Instant::now();
        let acting = arch.acting()?;
        let episodes = collect_rollout(
            env,
            &self.policy,
            &mut self.storage,
            self.normalizer.as_mut(),
            &mut self.rng,
            &acting,
            progress,
        )?;
        let rollout_secs = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let (_, next_value) = tch::no_grad(|| self.policy.forward(&self.storage.next_obs, &acting));
        drop(acting);
        let batch =
            self.storage
                .compute_batch(&next_value, self.config.gamma, self.config.gae_lambda)?;
        // fp16 (the run's precision, see agents::compute) needs loss scaling; its scale
        // carries over from update to update (not checkpointed: a resume starts at 2^16).
        let fp16 = super::compute::current().precision == super::compute::Precision::Fp16;
        if fp16 && self.loss_scaler.is_none() {
            self.loss_scaler = Some(super::compute::LossScaler::default());
        }
        let driver = UpdateDriver {
            arch,
            micro_batch: self.micro_batch,
            progress,
            data_parallel: self.data_parallel.as_deref(),
            loss_scale: self.loss_scaler.as_mut().filter(|_| fp16),
        };
        let ppo = ppo_update(
            &self.policy,
            &mut self.optimizer,
            driver,
            &batch,
            &self.config,
            &mut self.rng,
        )?;
        self.last_batch = Some(batch);
        let update_secs = start.elapsed().as_secs_f64();

        self.iterations_done += 1;
        let processes = self.data_parallel.as_ref().map_or(1, |dp| dp.world_size());
        self.global_step += (self.config.batch_size() * processes) as u64;
        Ok(IterationStats {
            iteration: self.iterations_done,
            global_step: self.global_step,
            learning_rate,
            episodes,
            ppo,
            rollout_secs,
            update_secs,
        })
    }

    /// The training batch of the last iteration (its GAE advantages and the rollout's
    /// log-probabilities), taken out of the trainer.
    pub fn take_last_batch(&mut self) -> Option<Batch> {
        self.last_batch.take()
    }

    /// Writes `weights.safetensors` (the weight store), `adam.safetensors` (Adam's moments and
    /// step) and `trainer.json` (config, seed, counters, reward normaliser, generator state)
    /// into `dir`, which
    /// must exist.
    pub fn save(&self, dir: &Path) -> Result<(), AgentError> {
        self.vs.save(dir.join(WEIGHTS_FILE))?;
        self.optimizer.save(&dir.join(ADAM_FILE))?;
        let state = TrainerState {
            config: self.config.clone(),
            seed: self.seed,
            iterations_done: self.iterations_done,
            global_step: self.global_step,
            normalizer: self.normalizer.clone(),
            rng: self.rng.clone(),
        };
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_string_pretty(&state).map_err(|source| AgentError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, json).map_err(|source| AgentError::Io { path, source })
    }

    /// Restores what [`PpoTrainer::save`] wrote. The checkpoint's PPO config must equal this
    /// trainer's except for `total_timesteps` (so a finished run can be extended).
    pub fn load(&mut self, dir: &Path) -> Result<(), AgentError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| AgentError::Io {
            path: path.clone(),
            source,
        })?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|source| AgentError::Json {
                path: path.clone(),
                source,
            })?;
        // Async stepping changes no result, so a run may resume with it on or off.
        let comparable = PpoConfig {
            total_timesteps: self.config.total_timesteps,
            async_envs: self.config.async_envs,
            ..state.config.clone()
        };
        if comparable != self.config {
            return Err(AgentError::Checkpoint {
                path,
                reason: format!(
                    "written with a different PPO config:\n  checkpoint: {:?}\n  now:        {:?}",
                    state.config, self.config
                ),
            });
        }
        if state.normalizer.as_ref().map(|n| n.returns.len())
            != self.normalizer.as_ref().map(|n| n.returns.len())
        {
            return Err(AgentError::Checkpoint {
                path,
                reason: "reward normaliser state does not fit".into(),
            });
        }
        let weights = dir.join(WEIGHTS_FILE);
        self.vs.load(&weights).map_err(|e| AgentError::Checkpoint {
            path: weights,
            reason: e.to_string(),
        })?;
        self.optimizer.load(&dir.join(ADAM_FILE))?;
        self.seed = state.seed;
        self.iterations_done = state.iterations_done;
        self.global_step = state.global_step;
        self.normalizer = state.normalizer;
        self.rng = state.rng;
        Ok(())
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
