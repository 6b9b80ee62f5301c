//! Unit tests of [`super`] (the PPO loss, the gradient clip, the update with its
//! architecture hook, micro-batches and non-finite stops), kept apart from the update.

use super::*;
use crate::agents::{AdamConfig, FixedArch, Mlp, MlpConfig, NoHeartbeat};
use tch::nn;

fn rng() -> rand_chacha::ChaCha8Rng {
    rand::SeedableRng::seed_from_u64(0)
}

/// A fixed network's update driver, unsplit, without progress reports (the arch and the
/// heartbeat are zero-sized, so leaking them costs nothing).
fn fixed() -> UpdateDriver<'static, ()> {
    UpdateDriver {
        arch: Box::leak(Box::new(FixedArch)),
        micro_batch: None,
        progress: Box::leak(Box::new(NoHeartbeat)),
        data_parallel: None,
        loss_scale: None,
    }
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
    let reported = clip_grad_norm(
        &[a.shallow_clone(), b.shallow_clone()],
        0.5,
        NormArithmetic::Device,
    )
    .into_tensor();
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
    let _ = clip_grad_norm(&[c.shallow_clone()], 10.0, NormArithmetic::Device);
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
    let driver = UpdateDriver {
        arch: &mut arch,
        micro_batch: None,
        progress: &mut NoHeartbeat,
        data_parallel: None,
        loss_scale: None,
    };
    let stats = ppo_update(&policy, &mut opt, driver, &batch, &cfg, &mut rng()).unwrap();
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

/// One update of a small f64 network, its minibatches of 16 split into micro-batches of
/// `micro` (None: whole); the weights after it.
fn update_in_f64(micro: Option<usize>) -> Vec<Tensor> {
    tch::manual_seed(9);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(enc), 3);
    vs.double();
    let mut opt = Adam::new(
        &vs,
        AdamConfig {
            lr: 1e-2,
            eps: 1e-5,
            ..Default::default()
        },
    );
    let f64s = (Kind::Double, Device::Cpu);
    let obs = Tensor::randn([64, 4], f64s);
    let act = policy.act(&obs, &());
    let batch = Batch {
        obs,
        actions: act.action,
        logprobs: act.logprob + Tensor::randn([64], f64s) * 0.1,
        values: act.value.shallow_clone(),
        advantages: Tensor::randn([64], f64s) * 3.0 + 1.0,
        returns: act.value + Tensor::randn([64], f64s),
    };
    let cfg = PpoConfig {
        num_envs: 8,
        num_steps: 8,
        num_minibatches: 4,
        update_epochs: 2,
        ..PpoConfig::default()
    };
    let driver = UpdateDriver {
        arch: &mut FixedArch,
        micro_batch: micro,
        progress: &mut NoHeartbeat,
        data_parallel: None,
        loss_scale: None,
    };
    ppo_update(&policy, &mut opt, driver, &batch, &cfg, &mut rng()).unwrap();
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// Micro-batches are the same update: advantages normalised over the whole minibatch, each
/// pass weighted by its share. In f64 the weights after 8 Adam steps agree to 1e-12; a
/// split that normalised per micro-batch, or averaged unweighted sums, would differ by
/// orders of magnitude more (the loss terms are means).
#[test]
fn micro_batches_give_the_unsplit_update() {
    let whole = update_in_f64(None);
    assert!(whole.iter().all(|w| w.kind() == Kind::Double));
    for micro in [Some(8), Some(4), Some(1)] {
        let split = update_in_f64(micro);
        for (a, b) in whole.iter().zip(&split) {
            let gap = (a - b).abs().max().double_value(&[]);
            assert!(
                gap < 1e-12,
                "micro-batch {micro:?}: weights differ by {gap}"
            );
        }
    }
    // The update itself moved the weights (so the equality says something).
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
    let _ = ActorCritic::new(vs.root() / "policy", Box::new(enc), 3);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let moved = named
        .iter()
        .zip(&whole)
        .map(|((_, a), b)| (a.to_kind(Kind::Double) - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "{moved}");
    // A micro-batch that does not divide the minibatch is refused.
    let mut opt = Adam::new(&vs, AdamConfig::default());
    let enc = Mlp::new(vs.root() / "other", &[4], &MlpConfig::default()).unwrap();
    let policy = ActorCritic::new(vs.root() / "p2", Box::new(enc), 3);
    let obs = Tensor::randn([64, 4], (Kind::Float, Device::Cpu));
    let act = policy.act(&obs, &());
    let batch = Batch {
        obs,
        actions: act.action,
        logprobs: act.logprob,
        values: act.value.shallow_clone(),
        advantages: act.value.zeros_like(),
        returns: act.value,
    };
    let cfg = PpoConfig {
        num_envs: 8,
        num_steps: 8,
        num_minibatches: 4,
        update_epochs: 1,
        ..PpoConfig::default()
    };
    let driver = UpdateDriver {
        arch: &mut FixedArch,
        micro_batch: Some(5),
        progress: &mut NoHeartbeat,
        data_parallel: None,
        loss_scale: None,
    };
    let err = ppo_update(&policy, &mut opt, driver, &batch, &cfg, &mut rng()).unwrap_err();
    assert!(err.to_string().contains("does not divide"), "{err}");
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
    let err = ppo_update(&policy, &mut opt, fixed(), &batch, &cfg, &mut rng()).unwrap_err();
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
    let stats = ppo_update(&policy, &mut opt, fixed(), &batch, &cfg, &mut rng()).unwrap();
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
    assert!(matches!(bad.validate(), Err(AgentError::Config(m)) if m.contains("num_minibatches")));
}

/// A stand-in for the other processes of a data-parallel run: it adds the advantage
/// statistics of a second process's share, given up front.
#[derive(Debug)]
struct OtherShare {
    stats: [f64; 3],
}

impl DataParallel for OtherShare {
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_mean(&self, _tensors: &[Tensor]) -> Result<(), AgentError> {
        unreachable!("only the advantage statistics are reduced here")
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), AgentError> {
        for (v, o) in values.iter_mut().zip(self.stats) {
            *v += o;
        }
        Ok(())
    }
}

/// Each process normalises its share by the statistics of the whole minibatch: the first
/// share, normalised with the second share's sum, sum of squares and count added, is the
/// first part of the whole minibatch normalised at once (torch's mean and unbiased std). A
/// per-share normalisation would differ by far more: the shares have other means.
#[test]
fn global_advantage_normalisation_is_the_whole_minibatch_s() {
    let f64s = (Kind::Double, Device::Cpu);
    let whole = Tensor::linspace(-3.0, 9.0, 10, f64s).square() * 0.1; // [10]
    let (first, second) = (whole.narrow(0, 0, 6), whole.narrow(0, 6, 4));
    let other = OtherShare {
        stats: [
            second.sum(Kind::Double).double_value(&[]),
            second.square().sum(Kind::Double).double_value(&[]),
            4.0,
        ],
    };
    let global = normalize_advantages_global(&first, &other).unwrap();
    let want = normalize_advantages(&whole).narrow(0, 0, 6);
    let gap = (&global - &want).abs().max().double_value(&[]);
    assert!(gap < 1e-12, "{gap}");
    let local = normalize_advantages(&first);
    assert!((&local - &want).abs().max().double_value(&[]) > 0.1);
}
