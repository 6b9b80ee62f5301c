//! Proximal policy optimisation (Schulman et al. 2017) with the implementation details of the
//! Procgen paper's baseline (Cobbe et al. 2020): clipped surrogate, clipped value loss,
//! entropy bonus, per-minibatch advantage normalisation, global gradient-norm clip. The update
//! reads top to bottom like CleanRL's `ppo_procgen.py`.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::arch::{Heartbeat, IterationArch, IterationPhase, WeightStep};
use super::compute::LossScaler;
use super::optim::{clip_grad_norm, Adam, NormArithmetic};
use super::policy::{ActorCritic, Evaluation};
use super::rollout_async::AsyncEnvs;
use super::storage::Batch;
use super::AgentError;

/// PPO hyper-parameters, with CleanRL's key names. Defaults are the Procgen paper's (its
/// table of hyper-parameters, also CleanRL `ppo_procgen.py`); [`PpoConfig::cartpole`] is
/// CleanRL `ppo.py`'s CartPole setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Training budget in environment steps (summed over envs); sets the number of iterations
    /// and the learning-rate annealing horizon. Procgen paper, easy mode: 25M.
    pub total_timesteps: u64,
    /// Parallel environments per rollout. Procgen paper: 64.
    pub num_envs: usize,
    /// Steps per environment per rollout (T). Procgen paper: 256, so a batch of 16384.
    pub num_steps: usize,
    /// Minibatches per epoch; must divide `num_envs * num_steps`. Procgen paper: 8 (2048 each).
    pub num_minibatches: usize,
    /// Passes over the rollout per update (K epochs). Procgen paper: 3.
    pub update_epochs: usize,
    /// Adam step size. Procgen paper: 5e-4.
    pub learning_rate: f64,
    /// Adam epsilon. Procgen paper / CleanRL: 1e-5 (PyTorch's default 1e-8 is less stable here).
    pub adam_eps: f64,
    /// Decay the learning rate linearly to 0 over `total_timesteps`. Procgen paper: off.
    pub anneal_lr: bool,
    /// Discount factor. Procgen paper: 0.999.
    pub gamma: f64,
    /// GAE lambda. Procgen paper: 0.95.
    pub gae_lambda: f64,
    /// Normalise advantages to zero mean, unit std within each minibatch. Procgen paper: on.
    pub norm_adv: bool,
    /// Surrogate clipping epsilon (ratio kept in [1 - clip, 1 + clip]); also the value clip
    /// range. Procgen paper: 0.2.
    pub clip_coef: f64,
    /// Clip the value update around the rollout's values (PPO2's value clipping). Procgen
    /// paper: on.
    pub clip_vloss: bool,
    /// Entropy bonus coefficient. Procgen paper: 0.01.
    pub ent_coef: f64,
    /// Value loss coefficient. Procgen paper: 0.5.
    pub vf_coef: f64,
    /// Global L2 norm the weights' gradient is clipped to per minibatch. Procgen paper: 0.5.
    pub max_grad_norm: f64,
    /// Stop an update early after an epoch whose last minibatch's approx. KL exceeds this
    /// (CleanRL's rule). None (the default) never stops early.
    pub target_kl: Option<f64>,
    /// Scale rewards by the running std of the discounted return (gym's `NormalizeReward`
    /// with `gamma`). Procgen paper: on.
    pub norm_reward: bool,
    /// Normalised rewards are clipped to [-reward_clip, reward_clip]. Procgen paper / CleanRL: 10.
    pub reward_clip: f64,
    /// Step half of the envs while the policy runs on the other half (EnvPool's async mode):
    /// `off`, `on` or `auto` ([`AsyncEnvs`]). Does not change the run's results.
    pub async_envs: AsyncEnvs,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            total_timesteps: 25_000_000,
            num_envs: 64,
            num_steps: 256,
            num_minibatches: 8,
            update_epochs: 3,
            learning_rate: 5e-4,
            adam_eps: 1e-5,
            anneal_lr: false,
            gamma: 0.999,
            gae_lambda: 0.95,
            norm_adv: true,
            clip_coef: 0.2,
            clip_vloss: true,
            ent_coef: 0.01,
            vf_coef: 0.5,
            max_grad_norm: 0.5,
            target_kl: None,
            norm_reward: true,
            reward_clip: 10.0,
            async_envs: AsyncEnvs::default(),
        }
    }
}

impl PpoConfig {
    /// CleanRL `ppo.py` for CartPole-v1 (4 envs x 128 steps, 4 minibatches, 4 epochs, lr
    /// annealed, gamma 0.99), over 500k steps, with two departures. CleanRL gives the actor and
    /// the critic separate networks; ours share the encoder, so raw CartPole returns (~100s)
    /// make the value gradient dominate the shared trunk and the global norm clip shrinks the
    /// policy's share of every step to almost nothing (measured: return ~80 after 100k steps).
    /// Reward normalisation keeps the value scale near 1, and lr 1e-3 (instead of 2.5e-4)
    /// speeds it up. Env steps until the last 20 episodes average >= 475, seeds 1-6 (the
    /// `tune` harness in tests/ppo_cartpole.rs): this preset 32k-46k; lr 2.5e-4 with reward
    /// normalisation 77k (seed 1), 104k (seed 2); CleanRL's exact values: not within 200k.
    pub fn cartpole() -> Self {
        Self {
            total_timesteps: 500_000,
            num_envs: 4,
            num_steps: 128,
            num_minibatches: 4,
            update_epochs: 4,
            learning_rate: 1e-3,
            adam_eps: 1e-5,
            anneal_lr: true,
            gamma: 0.99,
            gae_lambda: 0.95,
            norm_adv: true,
            clip_coef: 0.2,
            clip_vloss: true,
            ent_coef: 0.01,
            vf_coef: 0.5,
            max_grad_norm: 0.5,
            target_kl: None,
            norm_reward: true,
            reward_clip: 10.0,
            async_envs: AsyncEnvs::default(),
        }
    }

    /// Transitions per rollout, `num_envs * num_steps`.
    pub fn batch_size(&self) -> usize {
        self.num_envs * self.num_steps
    }

    pub fn minibatch_size(&self) -> usize {
        self.batch_size() / self.num_minibatches.max(1)
    }

    /// Rollout + update iterations in `total_timesteps` (rounded down, as CleanRL).
    pub fn num_iterations(&self) -> u64 {
        self.total_timesteps / self.batch_size().max(1) as u64
    }

    /// Checks ranges and divisibility; every error names the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        let err = |msg: String| Err(AgentError::Config(msg));
        for (key, v) in [
            ("num_envs", self.num_envs),
            ("num_steps", self.num_steps),
            ("num_minibatches", self.num_minibatches),
            ("update_epochs", self.update_epochs),
        ] {
            if v == 0 {
                return err(format!("{key} must be at least 1"));
            }
        }
        if !self.batch_size().is_multiple_of(self.num_minibatches) {
            return err(format!(
                "num_minibatches = {} must divide num_envs * num_steps = {}",
                self.num_minibatches,
                self.batch_size()
            ));
        }
        for (key, v) in [("gamma", self.gamma), ("gae_lambda", self.gae_lambda)] {
            if !(0.0..=1.0).contains(&v) {
                return err(format!("{key} = {v} must lie in [0, 1]"));
            }
        }
        for (key, v) in [
            ("learning_rate", self.learning_rate),
            ("adam_eps", self.adam_eps),
            ("clip_coef", self.clip_coef),
            ("max_grad_norm", self.max_grad_norm),
            ("reward_clip", self.reward_clip),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return err(format!("{key} = {v} must be positive and finite"));
            }
        }
        for (key, v) in [("ent_coef", self.ent_coef), ("vf_coef", self.vf_coef)] {
            if !(v >= 0.0 && v.is_finite()) {
                return err(format!("{key} = {v} must be non-negative and finite"));
            }
        }
        if let Some(kl) = self.target_kl {
            if !(kl > 0.0 && kl.is_finite()) {
                return err(format!("target_kl = {kl} must be positive (or absent)"));
            }
        }
        Ok(())
    }
}

/// The PPO loss of one minibatch and its diagnostics (all scalars).
#[derive(Debug)]
pub struct PpoLoss {
    /// `policy - ent_coef * entropy + vf_coef * value`, with gradients.
    pub loss: Tensor,
    /// Clipped surrogate `mean(max(-A r, -A clip(r, 1 - c, 1 + c)))`, with gradients.
    pub policy: Tensor,
    /// `0.5 * mean(max((V - R)^2, (V_clip - R)^2))` (or unclipped), with gradients.
    pub value: Tensor,
    /// Mean policy entropy, with gradients.
    pub entropy: Tensor,
    /// `mean(-log r)`, detached (the naive KL estimator).
    pub old_approx_kl: Tensor,
    /// `mean((r - 1) - log r)`, detached (Schulman's unbiased, non-negative estimator).
    pub approx_kl: Tensor,
    /// Fraction of samples with `|r - 1| > clip_coef`, detached.
    pub clipfrac: Tensor,
}

/// Zero mean, unit standard deviation over one minibatch (CleanRL's `norm_adv`).
pub fn normalize_advantages(advantages: &Tensor) -> Tensor {
    // torch's std is the unbiased one; 1e-8 keeps a constant minibatch finite.
    (advantages - advantages.mean(advantages.kind())) / (advantages.std(true) + 1e-8)
}

/// The other processes of a data-parallel run, as the PPO update sees them: each process holds
/// `1 / world_size` of every minibatch, and the update makes the result that of one process on
/// the whole minibatch (CleanRL's `ppo_atari_multigpu.py`, the Procgen paper's MPI Adam). The
/// engines (MPI, NCCL) live in the main crate (`rl_darts::distributed`); the update only needs these collectives.
pub trait DataParallel: std::fmt::Debug {
    /// Processes in the run (1: nothing to reduce).
    fn world_size(&self) -> usize;

    /// Replaces each tensor by its mean over the processes, in place. Every process passes the
    /// same shapes and kinds in the same order (the engines flatten them into one buffer).
    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<(), AgentError>;

    /// Replaces each value by its sum over the processes, in place.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), AgentError>;
}

/// [`normalize_advantages`] over the minibatch of all processes together: the mean and the
/// unbiased standard deviation come from the all-reduced sum, sum of squares and count (in
/// f64), so every process normalises its share by the statistics of the whole minibatch.
pub fn normalize_advantages_global(
    advantages: &Tensor,
    dp: &dyn DataParallel,
) -> Result<Tensor, AgentError> {
    let local = tch::no_grad(|| {
        Tensor::stack(
            &[
                advantages.sum(Kind::Double),
                advantages.to_kind(Kind::Double).square().sum(Kind::Double),
            ],
            0,
        )
    });
    let local = Vec::<f64>::try_from(local.to_device(Device::Cpu))?;
    let mut stats = [local[0], local[1], advantages.numel() as f64];
    dp.all_reduce_sum(&mut stats)?;
    let [sum, sum_sq, n] = stats;
    let mean = sum / n;
    // Unbiased, as torch's std(true) on one process.
    let var = ((sum_sq - sum * mean) / (n - 1.0).max(1.0)).max(0.0);
    Ok((advantages - mean) / (var.sqrt() + 1e-8))
}

/// The PPO loss terms for a minibatch, as a pure function of the new evaluation and the
/// stored rollout values (CleanRL `ppo_procgen.py`, lines "policy loss" to "loss =").
///
/// # Shapes
/// every tensor in `new` and the used ones in `mb` are `[M]`; the outputs are scalars
pub fn ppo_loss(new: &Evaluation, mb: &Batch, config: &PpoConfig) -> PpoLoss {
    let clip = config.clip_coef;
    let logratio = &new.logprob - &mb.logprobs; // [M]
                                                // Means in the network's precision (f32 in training, f64 in the equivalence tests).
    let kind = logratio.kind();
    let ratio = logratio.exp();
    let (old_approx_kl, approx_kl, clipfrac) = tch::no_grad(|| {
        (
            (-&logratio).mean(kind),
            ((&ratio - 1.0) - &logratio).mean(kind),
            (&ratio - 1.0).abs().gt(clip).to_kind(kind).mean(kind),
        )
    });

    let advantages = if config.norm_adv {
        normalize_advantages(&mb.advantages)
    } else {
        mb.advantages.shallow_clone()
    };

    // Maximising min(r A, clip(r) A) == minimising max(-r A, -clip(r) A).
    let pg_loss1 = -&advantages * &ratio;
    let pg_loss2 = -&advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    let policy = pg_loss1.max_other(&pg_loss2).mean(kind);

    let value = if config.clip_vloss {
        // The value may move at most `clip` away from the rollout's value unless that
        // increases the error (pessimistic max, as PPO2).
        let v_loss_unclipped = (&new.value - &mb.returns).square();
        let v_clipped = &mb.values + (&new.value - &mb.values).clamp(-clip, clip);
        let v_loss_clipped = (v_clipped - &mb.returns).square();
        v_loss_unclipped.max_other(&v_loss_clipped).mean(kind) * 0.5
    } else {
        (&new.value - &mb.returns).square().mean(kind) * 0.5
    };

    let entropy = new.entropy.mean(kind);
    let loss = &policy - &entropy * config.ent_coef + &value * config.vf_coef;
    PpoLoss {
        loss,
        policy,
        value,
        entropy,
        old_approx_kl,
        approx_kl,
        clipfrac,
    }
}

/// What one update did, averaged over its minibatches (CleanRL logs the last minibatch's
/// losses; the mean is less noisy and says the same).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PpoStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub entropy: f64,
    pub old_approx_kl: f64,
    pub approx_kl: f64,
    pub clipfrac: f64,
    /// `1 - Var(returns - values) / Var(returns)` over the rollout: how much of the return the
    /// old value function explained (NaN when the returns are constant).
    pub explained_variance: f64,
    /// Mean global gradient norm before clipping.
    pub grad_norm: f64,
    /// Epochs completed (fewer than `update_epochs` after a `target_kl` stop).
    pub epochs: usize,
    pub minibatches: usize,
}

/// What drives one [`ppo_update`] besides the data: where the architecture comes from, how a
/// minibatch is split to fit in memory, and who hears of its progress.
pub struct UpdateDriver<'a, A> {
    /// The architecture that learns (see [`IterationArch`]); [`super::FixedArch`] for a fixed
    /// network.
    pub arch: &'a mut dyn IterationArch<A>,
    /// Samples per forward/backward pass: a divisor of the minibatch size. A smaller value
    /// accumulates the minibatch's gradient over several passes (the same update, in less
    /// memory); `None` runs the whole minibatch at once.
    pub micro_batch: Option<usize>,
    pub progress: &'a mut dyn Heartbeat,
    /// The other processes of a data-parallel run (None: this process alone). Each minibatch's
    /// gradients (weights and [`IterationArch::gradients`]) and loss terms are all-reduced to
    /// their mean before the gradient-norm clip, and the advantages are normalised over the
    /// whole minibatch ([`normalize_advantages_global`]).
    pub data_parallel: Option<&'a dyn DataParallel>,
    /// fp16 only: the loss is scaled before backward and the gradients unscaled before the
    /// clip; a minibatch whose gradients overflowed is skipped ([`LossScaler`]).
    pub loss_scale: Option<&'a mut LossScaler>,
}

/// One PPO update: `update_epochs` passes over `batch` in shuffled minibatches; each
/// minibatch's loss is backpropagated once, the weights' gradient clipped to a global norm of
/// `max_grad_norm`, and `optimizer` stepped.
///
/// The encoder runs the architecture `driver.arch` gives for learning (the one that acted in
/// the rollout, recomputed from the current architecture parameters), and the architecture
/// hears of every weight step with its loss and gradient norm (single-level search strategies
/// step the architecture parameters there, on the same backward pass). A non-finite loss or
/// gradient norm stops the update before the step.
///
/// With micro-batches, each minibatch's gradient is accumulated over `minibatch /
/// micro_batch` passes, each pass's loss weighted by its share, after the advantages were
/// normalised over the whole minibatch: the same gradient as one pass (up to float summation
/// order) for every encoder without batch statistics. (With `node_norm = "batch"` the node
/// statistics become per micro-batch.) The architecture's op weights are recomputed for each
/// pass from the same stored sample, and its hook runs once per minibatch.
///
/// Minibatches are drawn by shuffling with `rng` (on the host: a run's randomness stays in
/// its own seeded, checkpointable generator).
///
/// Data-parallel (`driver.data_parallel`): `batch` is this process's share; each process
/// shuffles its own share, so a global minibatch is the union of the processes' minibatches.
/// The reduced loss terms make the non-finite stop and the `target_kl` stop the same decision
/// on every process (a process that stopped alone would leave the others waiting).
pub fn ppo_update<A, R: Rng + ?Sized>(
    policy: &ActorCritic<A>,
    optimizer: &mut Adam,
    driver: UpdateDriver<'_, A>,
    batch: &Batch,
    config: &PpoConfig,
    rng: &mut R,
) -> Result<PpoStats, AgentError> {
    config.validate()?;
    let batch_size = batch.len();
    let minibatch_size = batch_size / config.num_minibatches as i64;
    if minibatch_size == 0 || batch_size % config.num_minibatches as i64 != 0 {
        return Err(AgentError::Config(format!(
            "a batch of {batch_size} does not split into {} minibatches",
            config.num_minibatches
        )));
    }
    let micro = driver
        .micro_batch
        .map_or(minibatch_size, |m| m as i64)
        .min(minibatch_size);
    if micro == 0 || minibatch_size % micro != 0 {
        return Err(AgentError::Config(format!(
            "a micro-batch of {micro} does not divide the minibatch of {minibatch_size}"
        )));
    }
    let UpdateDriver {
        arch,
        progress,
        data_parallel,
        mut loss_scale,
        ..
    } = driver;
    let data_parallel = data_parallel.filter(|dp| dp.world_size() > 1);
    // The passes see advantages already normalised over their whole minibatch.
    let pass_config = PpoConfig {
        norm_adv: false,
        ..config.clone()
    };
    let device = batch.actions.device();
    let params = optimizer.parameters();
    let total_minibatches = config.update_epochs * config.num_minibatches;
    // Per-minibatch diagnostics, kept on the device and read once at the end.
    let mut records: Vec<Tensor> = Vec::new();
    let mut epochs = 0;
    for _epoch in 0..config.update_epochs {
        let mut perm: Vec<i64> = (0..batch_size).collect();
        perm.shuffle(rng);
        let perm = Tensor::from_slice(&perm).to_device(device); // [B]
        let mut last_approx_kl = None;
        for start in (0..batch_size).step_by(minibatch_size as usize) {
            let mut mb = batch.select(&perm.narrow(0, start, minibatch_size));
            if config.norm_adv {
                mb.advantages = match data_parallel {
                    Some(dp) => normalize_advantages_global(&mb.advantages, dp)?,
                    None => normalize_advantages(&mb.advantages),
                };
            }
            arch.begin_minibatch()?;
            optimizer.zero_grad();
            // [policy, value, entropy, old_approx_kl, approx_kl, clipfrac, loss], share-weighted.
            let mut terms = Tensor::zeros([7], (Kind::Double, device));
            let share = micro as f64 / minibatch_size as f64;
            for offset in (0..minibatch_size).step_by(micro as usize) {
                let part = mb.narrow(offset, micro);
                let weights = arch.learning()?;
                let new = policy.evaluate(&part.obs, &part.actions, &weights);
                let loss = ppo_loss(&new, &part, &pass_config);
                let scale = loss_scale.as_ref().map_or(1.0, |s| s.scale);
                (&loss.loss * (share * scale)).f_backward()?;
                terms += tch::no_grad(|| {
                    Tensor::stack(
                        &[
                            loss.policy.detach(),
                            loss.value.detach(),
                            loss.entropy.detach(),
                            loss.old_approx_kl,
                            loss.approx_kl,
                            loss.clipfrac,
                            loss.loss.detach(),
                        ],
                        0,
                    )
                    .to_kind(Kind::Double)
                        * share
                });
            }
            if let Some(dp) = data_parallel {
                // Every gradient the step will use (the architecture's too: a single-level
                // strategy steps the alphas in its hook) and the loss terms, in one call that
                // the engines flatten into one buffer per kind. Before the clip, so that every
                // process clips the same mean gradient by the same global norm.
                let mut grads: Vec<Tensor> = params
                    .iter()
                    .chain(arch.gradients().iter())
                    .map(Tensor::grad)
                    .filter(Tensor::defined)
                    .collect();
                grads.push(terms.shallow_clone());
                dp.all_reduce_mean(&grads)?;
            }
            if let Some(scaler) = loss_scale.as_deref_mut() {
                let mut scaled: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
                scaled.extend(arch.gradients());
                if !scaler.unscale(&scaled) {
                    // fp16 overflow: this minibatch makes no step (GradScaler's rule; the
                    // scale was halved for the next) and logs a gradient norm of 0.
                    optimizer.zero_grad();
                    for g in arch.gradients().iter().map(Tensor::grad) {
                        if g.defined() {
                            let _ = g.detach().zero_();
                        }
                    }
                    records.push(Tensor::cat(
                        &[
                            terms.narrow(0, 0, 6),
                            Tensor::zeros([1], (Kind::Double, device)),
                        ],
                        0,
                    ));
                    if !progress.beat(IterationPhase::Update, records.len(), total_minibatches) {
                        return Err(AgentError::Interrupted);
                    }
                    continue;
                }
            }
            let grad_norm =
                clip_grad_norm(&params, config.max_grad_norm, NormArithmetic::Device).into_tensor();
            // Read on the host (one sync per minibatch): the architecture's hook needs the
            // values, and a diverged minibatch must stop the run before its step.
            let step = WeightStep {
                loss: terms.f_double_value(&[6])?,
                grad_norm: grad_norm.f_double_value(&[])?,
                lr: optimizer.lr(),
            };
            let minibatch = records.len();
            for (what, value) in [
                ("the loss", step.loss),
                ("the gradient norm", step.grad_norm),
            ] {
                if !value.is_finite() {
                    return Err(AgentError::NonFinite {
                        what,
                        value,
                        minibatch,
                    });
                }
            }
            optimizer.step();
            arch.after_weight_step(&step)?;

            last_approx_kl = Some(terms.get(4));
            records.push(Tensor::cat(
                &[
                    terms.narrow(0, 0, 6),
                    grad_norm
                        .to_device(device)
                        .to_kind(Kind::Double)
                        .reshape([1]),
                ],
                0,
            ));
            if !progress.beat(IterationPhase::Update, records.len(), total_minibatches) {
                return Err(AgentError::Interrupted);
            }
        }
        epochs += 1;
        if let (Some(target), Some(kl)) = (config.target_kl, last_approx_kl) {
            if kl.f_double_value(&[])? > target {
                break;
            }
        }
    }

    let means = Vec::<f64>::try_from(Tensor::stack(&records, 0).mean_dim(0, false, Kind::Double))?;
    let unexplained = tch::no_grad(|| {
        let var_y = batch.returns.var(false);
        ((&batch.returns - &batch.values).var(false) / var_y).f_double_value(&[])
    })?;
    let explained_variance = 1.0 - unexplained;
    Ok(PpoStats {
        policy_loss: means[0],
        value_loss: means[1],
        entropy: means[2],
        old_approx_kl: means[3],
        approx_kl: means[4],
        clipfrac: means[5],
        explained_variance,
        grad_norm: means[6],
        epochs,
        minibatches: records.len(),
    })
}

#[cfg(test)]
#[path = "ppo_tests.rs"]
mod tests;
