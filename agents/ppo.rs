//! Proximal policy optimisation (Schulman et al. 2017) with the implementation details of the
//! Procgen paper's baseline (Cobbe et al. 2020): clipped surrogate, clipped value loss,
//! entropy bonus, per-minibatch advantage normalisation, global gradient-norm clip. The update
//! reads top to bottom like CleanRL's `ppo_procgen.py`.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::arch::{IterationArch, WeightStep};
use super::policy::{ActorCritic, Evaluation};
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

/// The PPO loss terms for a minibatch, as a pure function of the new evaluation and the
/// stored rollout values (CleanRL `ppo_procgen.py`, lines "policy loss" to "loss =").
///
/// # Shapes
/// every tensor in `new` and the used ones in `mb` are `[M]`; the outputs are scalars
pub fn ppo_loss(new: &Evaluation, mb: &Batch, config: &PpoConfig) -> PpoLoss {
    let clip = config.clip_coef;
    let logratio = &new.logprob - &mb.logprobs; // [M]
    let ratio = logratio.exp();
    let (old_approx_kl, approx_kl, clipfrac) = tch::no_grad(|| {
        (
            (-&logratio).mean(Kind::Float),
            ((&ratio - 1.0) - &logratio).mean(Kind::Float),
            (&ratio - 1.0)
                .abs()
                .gt(clip)
                .to_kind(Kind::Float)
                .mean(Kind::Float),
        )
    });

    let advantages = if config.norm_adv {
        // torch's std is the unbiased one; 1e-8 keeps a constant minibatch finite.
        (&mb.advantages - mb.advantages.mean(Kind::Float)) / (mb.advantages.std(true) + 1e-8)
    } else {
        mb.advantages.shallow_clone()
    };

    // Maximising min(r A, clip(r) A) == minimising max(-r A, -clip(r) A).
    let pg_loss1 = -&advantages * &ratio;
    let pg_loss2 = -&advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    let policy = pg_loss1.max_other(&pg_loss2).mean(Kind::Float);

    let value = if config.clip_vloss {
        // The value may move at most `clip` away from the rollout's value unless that
        // increases the error (pessimistic max, as PPO2).
        let v_loss_unclipped = (&new.value - &mb.returns).square();
        let v_clipped = &mb.values + (&new.value - &mb.values).clamp(-clip, clip);
        let v_loss_clipped = (v_clipped - &mb.returns).square();
        v_loss_unclipped
            .max_other(&v_loss_clipped)
            .mean(Kind::Float)
            * 0.5
    } else {
        (&new.value - &mb.returns).square().mean(Kind::Float) * 0.5
    };

    let entropy = new.entropy.mean(Kind::Float);
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

/// Scales the gradients of `params` in place so that their global L2 norm (all gradients
/// concatenated, as `torch.nn.utils.clip_grad_norm_`) is at most `max_norm`; returns the norm
/// before clipping as a scalar tensor. No host sync: the scale is computed on the device.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Tensor {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        let Some(first) = grads.first() else {
            return Tensor::zeros([], (Kind::Float, Device::Cpu));
        };
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0).norm().to_device(first.device()); // []
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_(&coef.to_kind(g.kind()));
        }
        total
    })
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

/// One PPO update: `update_epochs` passes over `batch` in shuffled minibatches; each
/// minibatch's loss is backpropagated once, the weights' gradient clipped to a global norm of
/// `max_grad_norm`, and `optimizer` stepped.
///
/// The encoder runs the architecture `arch` gives for learning (the one that acted in the
/// rollout, recomputed from the current architecture parameters), and `arch` hears of every
/// weight step with its loss and gradient norm (single-level search strategies step the
/// architecture parameters there, on the same backward pass). Pass [`super::FixedArch`] for
/// a fixed network. A non-finite loss or gradient norm stops the update before the step.
///
/// Minibatches are drawn by shuffling with `rng` (on the host: a run's randomness stays in
/// its own seeded, checkpointable generator).
pub fn ppo_update<A, R: Rng + ?Sized>(
    policy: &ActorCritic<A>,
    optimizer: &mut Adam,
    arch: &mut dyn IterationArch<A>,
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
    let device = batch.actions.device();
    let params = optimizer.parameters();
    // Per-minibatch diagnostics, kept on the device and read once at the end.
    let mut records: Vec<Tensor> = Vec::new();
    let mut epochs = 0;
    for _epoch in 0..config.update_epochs {
        let mut perm: Vec<i64> = (0..batch_size).collect();
        perm.shuffle(rng);
        let perm = Tensor::from_slice(&perm).to_device(device); // [B]
        let mut last_approx_kl = None;
        for start in (0..batch_size).step_by(minibatch_size as usize) {
            let mb = batch.select(&perm.narrow(0, start, minibatch_size));
            arch.begin_minibatch()?;
            let weights = arch.learning()?;
            let new = policy.evaluate(&mb.obs, &mb.actions, &weights);
            let terms = ppo_loss(&new, &mb, config);

            optimizer.zero_grad();
            terms.loss.f_backward()?;
            let grad_norm = clip_grad_norm(&params, config.max_grad_norm);
            // Read on the host (one sync per minibatch): the architecture's hook needs the
            // values, and a diverged minibatch must stop the run before its step.
            let step = WeightStep {
                loss: terms.loss.f_double_value(&[])?,
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

            records.push(tch::no_grad(|| {
                Tensor::stack(
                    &[
                        terms.policy.detach(),
                        terms.value.detach(),
                        terms.entropy.detach(),
                        terms.old_approx_kl,
                        terms.approx_kl.shallow_clone(),
                        terms.clipfrac,
                        grad_norm.to_device(device),
                    ],
                    0,
                )
            }));
            last_approx_kl = Some(terms.approx_kl);
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
mod tests {
    use super::*;
    use crate::agents::{AdamConfig, FixedArch, Mlp, MlpConfig};
    use tch::nn;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand::SeedableRng::seed_from_u64(0)
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn close(x: &Tensor, want: f64) {
        let got = x.double_value(&[]);
        assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
    }

    /// A two-sample minibatch whose every term is worked out by hand.
    fn tiny() -> (Evaluation, Batch) {
        let new = Evaluation {
            // ratio r = exp(new - old) = [1.5, 0.9]
            logprob: t(&[1.5f32.ln(), 0.9f32.ln()]),
            entropy: t(&[1.0, 0.5]),
            value: t(&[0.5, 1.0]),
        };
        let mb = Batch {
            obs: Tensor::zeros([2, 1], (Kind::Float, Device::Cpu)),
            actions: Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
            logprobs: t(&[0.0, 0.0]),
            values: t(&[0.0, 1.0]),
            advantages: t(&[1.0, -1.0]),
            returns: t(&[1.0, 0.0]),
        };
        (new, mb)
    }

    #[test]
    fn each_loss_term_matches_the_hand_computation() {
        let (new, mb) = tiny();
        let cfg = PpoConfig {
            norm_adv: false,
            ..PpoConfig::default()
        };
        let l = ppo_loss(&new, &mb, &cfg);
        // Policy, clip 0.2, A = [1, -1], r = [1.5, 0.9]:
        //   sample 0: max(-1 * 1.5, -1 * clip(1.5) = -1.2) = -1.2
        //   sample 1: max(1 * 0.9, 1 * clip(0.9) = 0.9)    =  0.9
        //   mean -> -0.15
        close(&l.policy, -0.15);
        // Value, old V = [0, 1], new V = [0.5, 1], R = [1, 0]:
        //   unclipped (V - R)^2 = [0.25, 1]
        //   V_clip = old + clip(new - old, +-0.2) = [0.2, 1] -> (V_clip - R)^2 = [0.64, 1]
        //   0.5 * mean(max) = 0.5 * (0.64 + 1) / 2 = 0.41
        close(&l.value, 0.41);
        // Entropy mean(1, 0.5) = 0.75.
        close(&l.entropy, 0.75);
        // Total: -0.15 - 0.01 * 0.75 + 0.5 * 0.41 = 0.0475.
        close(&l.loss, 0.0475);
        // log r = [ln 1.5, ln 0.9] = [0.4054651, -0.1053605]
        //   old_approx_kl = mean(-log r) = (-0.4054651 + 0.1053605) / 2 = -0.1500523
        //   approx_kl = mean((r - 1) - log r) = (0.0945349 + 0.0053605) / 2 = 0.0499477
        close(&l.old_approx_kl, -0.1500523);
        close(&l.approx_kl, 0.0499477);
        // |r - 1| = [0.5, 0.1] > 0.2 for sample 0 only.
        close(&l.clipfrac, 0.5);

        // Without value clipping: 0.5 * (0.25 + 1) / 2 = 0.3125.
        let l = ppo_loss(
            &new,
            &mb,
            &PpoConfig {
                norm_adv: false,
                clip_vloss: false,
                ..PpoConfig::default()
            },
        );
        close(&l.value, 0.3125);
    }

    #[test]
    fn advantage_normalisation_uses_the_unbiased_std() {
        let (new, mut mb) = tiny();
        // A = [1, 3]: mean 2, unbiased std sqrt(((1 - 2)^2 + (3 - 2)^2) / 1) = sqrt(2), so
        // A_norm = [-1/sqrt(2), 1/sqrt(2)] = [-a, a] with a = 0.7071068.
        //   sample 0: max(a * 1.5, a * 1.2) = 1.5 a;  sample 1: max(-a * 0.9, -a * 0.9) = -0.9 a
        //   mean = 0.3 a = 0.2121320
        mb.advantages = t(&[1.0, 3.0]);
        let l = ppo_loss(&new, &mb, &PpoConfig::default());
        close(&l.policy, 0.3 / 2f64.sqrt());
    }

    #[test]
    fn policy_gradient_vanishes_outside_the_clip_range() {
        // Sample 0 (A > 0, r = 1.5 > 1.2) is clipped: d loss / d logprob_0 = 0. Sample 1 is
        // inside: d/d logprob_1 of (A_1 * -r_1) / 2 = -A_1 * r_1 / 2 = 0.45.
        let (mut new, mb) = tiny();
        new.logprob = new.logprob.set_requires_grad(true);
        let cfg = PpoConfig {
            norm_adv: false,
            ..PpoConfig::default()
        };
        ppo_loss(&new, &mb, &cfg).policy.backward();
        let g = new.logprob.grad();
        assert!(g.double_value(&[0]).abs() < 1e-7);
        assert!((g.double_value(&[1]) - 0.45).abs() < 1e-6);
    }

    #[test]
    fn grad_norm_clip_is_global() {
        tch::manual_seed(0);
        let a = Tensor::randn([10, 10], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::randn([7], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        ((&a * 30.0).square().sum(Kind::Float) + (&b * 5.0).sum(Kind::Float)).backward();
        let (ga, gb) = (a.grad().copy(), b.grad().copy());
        let before = (ga.square().sum(Kind::Float) + gb.square().sum(Kind::Float))
            .sqrt()
            .double_value(&[]);
        let reported = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 0.5);
        assert!((reported.double_value(&[]) - before).abs() < 1e-3 * before);
        let after = (a.grad().square().sum(Kind::Float) + b.grad().square().sum(Kind::Float))
            .sqrt()
            .double_value(&[]);
        assert!(after <= 0.5 + 1e-5, "{after}");
        assert!((after - 0.5).abs() < 1e-4, "{after}");
        // One common factor for every gradient: directions are kept.
        let ratio = &a.grad() / &ga;
        assert!(ratio.allclose(&(&b.grad() / &gb).mean(Kind::Float), 1e-4, 1e-6, false));

        // Below the threshold nothing changes.
        let c = Tensor::from_slice(&[0.1f32, 0.2]).set_requires_grad(true);
        c.sum(Kind::Float).backward();
        let _ = clip_grad_norm(&[c.shallow_clone()], 10.0);
        assert!(c.grad().equal(&Tensor::from_slice(&[1.0f32, 1.0])));
    }

    /// An encoder whose architecture argument is one parameter living in another store: the
    /// input is scaled by `exp(alpha)` before the MLP.
    #[derive(Debug)]
    struct ScaledMlp {
        inner: Mlp,
    }

    impl crate::agents::Encoder<Tensor> for ScaledMlp {
        fn features(&self, obs: &Tensor, alpha: &Tensor) -> Tensor {
            self.inner.features(&(obs * alpha.exp()), &())
        }
        fn feature_dim(&self) -> i64 {
            self.inner.feature_dim()
        }
    }

    /// The architecture side of a single-level search in miniature: `alpha` acts detached,
    /// learns with its graph, and steps its own Adam after every weight step; it records what
    /// the update reported.
    struct AlphaArch {
        alpha: Tensor,
        optimizer: Adam,
        reported: Vec<WeightStep>,
    }

    impl IterationArch<Tensor> for AlphaArch {
        fn acting(&mut self) -> Result<Tensor, AgentError> {
            Ok(self.alpha.detach())
        }
        fn begin_minibatch(&mut self) -> Result<(), AgentError> {
            self.optimizer.zero_grad();
            Ok(())
        }
        fn learning(&mut self) -> Result<Tensor, AgentError> {
            Ok(self.alpha.shallow_clone())
        }
        fn after_weight_step(&mut self, step: &WeightStep) -> Result<(), AgentError> {
            self.reported.push(*step);
            self.optimizer.step();
            Ok(())
        }
    }

    #[test]
    fn update_steps_weights_and_tells_the_architecture_each_step() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let arch_store = nn::VarStore::new(Device::Cpu);
        let alpha = arch_store.root().zeros("alpha", &[1]);
        let inner = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let policy: ActorCritic<Tensor> =
            ActorCritic::new(vs.root() / "policy", Box::new(ScaledMlp { inner }), 2);
        let mut opt = Adam::new(
            &vs,
            AdamConfig {
                lr: 1e-3,
                eps: 1e-5,
                ..Default::default()
            },
        );
        let mut arch = AlphaArch {
            alpha: alpha.shallow_clone(),
            optimizer: Adam::new(
                &arch_store,
                AdamConfig {
                    lr: 0.01,
                    ..Default::default()
                },
            ),
            reported: Vec::new(),
        };
        // The weights' optimizer never sees alpha.
        assert_eq!(opt.parameters().len(), 2 * 2 + 2 * 2);

        let b = 64i64;
        let obs = Tensor::randn([b, 4], (Kind::Float, Device::Cpu));
        let act = policy.act(&obs, &arch.acting().unwrap());
        let batch = Batch {
            obs,
            actions: act.action,
            logprobs: act.logprob,
            values: act.value.shallow_clone(),
            advantages: Tensor::randn([b], (Kind::Float, Device::Cpu)),
            returns: act.value + Tensor::randn([b], (Kind::Float, Device::Cpu)),
        };
        let before: Vec<Tensor> = opt.parameters().iter().map(|t| t.copy()).collect();
        let cfg = PpoConfig {
            num_envs: 8,
            num_steps: 8,
            num_minibatches: 4,
            update_epochs: 2,
            ..PpoConfig::default()
        };
        let stats = ppo_update(&policy, &mut opt, &mut arch, &batch, &cfg, &mut rng()).unwrap();
        assert_eq!(stats.epochs, 2);
        assert_eq!(stats.minibatches, 8);
        assert!(stats.entropy > 0.6 && stats.entropy <= 2f64.ln() + 1e-6);
        assert!(stats.approx_kl >= 0.0 && stats.approx_kl.is_finite());
        assert!(stats.explained_variance.is_finite());
        assert!(stats.grad_norm > 0.0);
        let moved = opt
            .parameters()
            .iter()
            .zip(&before)
            .any(|(a, b)| !a.equal(b));
        assert!(moved, "weights did not change");
        // alpha followed the PPO loss through its own optimizer, once per minibatch.
        assert_eq!(arch.optimizer.steps_taken(), 8);
        assert_ne!(alpha.double_value(&[0]), 0.0);
        // Every weight step was reported with its real loss and pre-clip gradient norm (their
        // mean is what the update logs), never a placeholder.
        assert_eq!(arch.reported.len(), 8);
        assert!(arch
            .reported
            .iter()
            .all(|s| s.loss.is_finite() && s.grad_norm > 0.0));
        assert!(arch.reported.iter().all(|s| s.lr == 1e-3));
        let mean_norm = arch.reported.iter().map(|s| s.grad_norm).sum::<f64>() / 8.0;
        assert!(
            (mean_norm - stats.grad_norm).abs() < 1e-6 * mean_norm,
            "{mean_norm}"
        );
    }

    #[test]
    fn a_non_finite_loss_stops_the_update_before_its_step() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let policy = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
        let mut opt = Adam::new(&vs, AdamConfig::default());
        let obs = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let act = policy.act(&obs, &());
        let batch = Batch {
            obs,
            actions: act.action,
            logprobs: act.logprob,
            values: act.value.shallow_clone(),
            advantages: Tensor::randn([8], (Kind::Float, Device::Cpu)),
            returns: act.value.full_like(f64::NAN),
        };
        let before: Vec<Tensor> = opt.parameters().iter().map(|t| t.copy()).collect();
        let cfg = PpoConfig {
            num_envs: 2,
            num_steps: 4,
            num_minibatches: 1,
            update_epochs: 1,
            ..PpoConfig::default()
        };
        let err =
            ppo_update(&policy, &mut opt, &mut FixedArch, &batch, &cfg, &mut rng()).unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::NonFinite {
                    what: "the loss",
                    minibatch: 0,
                    ..
                }
            ),
            "{err}"
        );
        let unchanged = opt
            .parameters()
            .iter()
            .zip(&before)
            .all(|(a, b)| a.equal(b));
        assert!(unchanged, "the diverged step was taken");
    }

    #[test]
    fn target_kl_stops_after_the_first_epoch() {
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let policy = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
        let mut opt = Adam::new(
            &vs,
            AdamConfig {
                lr: 0.05,
                ..Default::default()
            },
        );
        let obs = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
        let act = policy.act(&obs, &());
        let batch = Batch {
            obs,
            actions: act.action,
            logprobs: act.logprob,
            values: act.value.shallow_clone(),
            advantages: Tensor::randn([32], (Kind::Float, Device::Cpu)),
            returns: act.value.shallow_clone(),
        };
        let cfg = PpoConfig {
            num_envs: 4,
            num_steps: 8,
            num_minibatches: 2,
            update_epochs: 10,
            target_kl: Some(1e-9),
            ..PpoConfig::default()
        };
        let stats =
            ppo_update(&policy, &mut opt, &mut FixedArch, &batch, &cfg, &mut rng()).unwrap();
        assert_eq!(stats.epochs, 1);
        assert_eq!(stats.minibatches, 2);
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_keys() {
        let cfg = PpoConfig::cartpole();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<PpoConfig>(&text).unwrap(), cfg);
        let partial: PpoConfig = toml::from_str("gamma = 0.99\ntarget_kl = 0.02").unwrap();
        assert_eq!(partial.num_envs, 64);
        assert_eq!(partial.target_kl, Some(0.02));
        assert!(toml::from_str::<PpoConfig>("gama = 0.99").is_err());
        PpoConfig::default().validate().unwrap();
        PpoConfig::cartpole().validate().unwrap();
        assert_eq!(PpoConfig::default().minibatch_size(), 2048);
        let bad = PpoConfig {
            num_minibatches: 7,
            ..PpoConfig::default()
        };
        assert!(
            matches!(bad.validate(), Err(AgentError::Config(m)) if m.contains("num_minibatches"))
        );
    }
}
