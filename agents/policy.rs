//! The actor-critic: an [`Encoder`] shared by a categorical policy head and a value head,
//! initialised as in the Procgen paper / CleanRL (policy std 0.01, value std 1).

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::Encoder;
use crate::envs::EnvSpec;

/// Observations as the environment gives them -> what an [`Encoder`] takes.
///
/// Images (`Uint8`, `[N, H, W, C]`) become `[N, C, H, W]` f32 in [0, 1]; f32 and f64 vectors
/// pass unchanged, anything else is cast to f32. Call it on the device that runs the encoder: moving u8 pixels is
/// four times less traffic than moving floats.
///
/// # Shapes
/// `[N, H, W, C]` u8 -> `[N, C, H, W]` f32, or `[N, D]` -> `[N, D]` f32
pub fn preprocess_obs(obs: &Tensor) -> Tensor {
    if obs.kind() == Kind::Uint8 && obs.dim() == 4 {
        obs.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0
    } else if matches!(obs.kind(), Kind::Double | Kind::Float) {
        // Kept: an f64 network (the gradient tests) takes f64 observations.
        obs.shallow_clone()
    } else {
        obs.to_kind(Kind::Float)
    }
}

/// The shape of one observation after [`preprocess_obs`] (`[C, H, W]` for images), the shape
/// encoders are built for.
pub fn encoder_input_shape(spec: &EnvSpec) -> Vec<i64> {
    match (spec.obs_kind, spec.obs_shape.as_slice()) {
        (Kind::Uint8, &[h, w, c]) => vec![c, h, w],
        _ => spec.obs_shape.clone(),
    }
}

/// Inverse-CDF categorical sampling: row `i` draws the first action whose cumulative
/// probability exceeds `uniform[i] * total`. Scaling by the row's total (1 up to rounding)
/// instead of clamping keeps zero-probability actions impossible even at `u -> 1`.
///
/// # Shapes
/// log_probs `[N, A]`, uniform `[N]` in [0, 1) -> actions `[N]` i64
pub fn sample_categorical(log_probs: &Tensor, uniform: &Tensor) -> Tensor {
    let cdf = log_probs
        .to_kind(Kind::Double)
        .exp()
        .cumsum(-1, Kind::Double); // [N, A]
    let num_actions = cdf.size()[1];
    let threshold =
        uniform.to_device(cdf.device()).to_kind(Kind::Double) * cdf.select(1, num_actions - 1);
    // Number of actions whose CDF is <= the threshold = index of the sampled action.
    cdf.le_tensor(&threshold.unsqueeze(-1))
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(num_actions - 1)
}

/// The result of [`ActorCritic::act`], all on the policy's device, without gradients.
#[derive(Debug)]
pub struct Act {
    /// `[N]` i64 sampled actions.
    pub action: Tensor,
    /// `[N]` f32 log pi(action | obs).
    pub logprob: Tensor,
    /// `[N]` f32 V(obs).
    pub value: Tensor,
}

/// The result of [`ActorCritic::evaluate`], with gradients.
#[derive(Debug)]
pub struct Evaluation {
    /// `[B]` log pi(action | obs) under the current weights.
    pub logprob: Tensor,
    /// `[B]` entropy of pi(. | obs).
    pub entropy: Tensor,
    /// `[B]` V(obs).
    pub value: Tensor,
}

/// Encoder + linear policy and value heads. `A` is the encoder's architecture argument
/// (`()` for fixed networks, op weights for supernets; see [`Encoder`]).
#[derive(Debug)]
pub struct ActorCritic<A = ()> {
    pub encoder: Box<dyn Encoder<A>>,
    actor: nn::Linear,
    critic: nn::Linear,
    num_actions: i64,
    device: Device,
}

fn head(p: nn::Path, d_in: i64, d_out: i64, gain: f64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Orthogonal { gain },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, d_in, d_out, config)
}

impl<A> ActorCritic<A> {
    /// The heads go under `p / "actor"` and `p / "critic"`; the encoder was built by the
    /// caller (into the same weight store, or any other).
    pub fn new(p: nn::Path, encoder: Box<dyn Encoder<A>>, num_actions: i64) -> Self {
        let d = encoder.feature_dim();
        // Small policy init (std 0.01) starts near uniform; value std 1 (Andrychowicz et al.
        // 2021, "What matters in on-policy RL", and CleanRL).
        let actor = head(&p / "actor", d, num_actions, 0.01);
        let critic = head(&p / "critic", d, 1, 1.0);
        Self {
            encoder,
            actor,
            critic,
            num_actions,
            device: p.device(),
        }
    }

    pub fn num_actions(&self) -> i64 {
        self.num_actions
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Logits and values for raw observations (moved to the policy's device here), with the
    /// encoder running architecture `arch`.
    ///
    /// # Shapes
    /// obs `[N, ..obs_shape]` (u8 HWC or f32) -> logits `[N, A]`, value `[N]`
    pub fn forward(&self, obs: &Tensor, arch: &A) -> (Tensor, Tensor) {
        let xs = preprocess_obs(&obs.to_device(self.device));
        let features = self.encoder.features(&xs, arch);
        (
            self.actor.forward(&features),
            self.critic.forward(&features).squeeze_dim(-1),
        )
    }

    /// Samples actions from pi(. | obs), without gradients, with uniforms from libtorch's
    /// global generator (`tch::manual_seed`). Training uses [`ActorCritic::act_with_uniform`]
    /// with its own generator.
    ///
    /// # Shapes
    /// obs `[N, ..obs_shape]` -> action, logprob, value `[N]`
    pub fn act(&self, obs: &Tensor, arch: &A) -> Act {
        let uniform = Tensor::rand([obs.size()[0]], (Kind::Double, self.device));
        self.act_with_uniform(obs, &uniform, arch)
    }

    /// Samples actions from pi(. | obs) by inverting the CDF at the given uniforms in [0, 1):
    /// action = the first `a` with `u * sum(p) < cdf[a]`, one categorical draw per row, with the
    /// randomness supplied by the caller so that a run's samples depend on its own seeded
    /// generator only (libtorch has one global generator per device, shared by every thread).
    ///
    /// # Shapes
    /// obs `[N, ..obs_shape]`, uniform `[N]` -> action, logprob, value `[N]`
    pub fn act_with_uniform(&self, obs: &Tensor, uniform: &Tensor, arch: &A) -> Act {
        tch::no_grad(|| {
            let (logits, value) = self.forward(obs, arch);
            let log_probs = logits.log_softmax(-1, logits.kind()); // [N, A]
            let action = sample_categorical(&log_probs, uniform); // [N]
            let logprob = log_probs
                .gather(-1, &action.unsqueeze(-1), false)
                .squeeze_dim(-1);
            Act {
                action,
                logprob,
                value,
            }
        })
    }

    /// Log-probabilities of given actions, entropies and values, with gradients, as the
    /// PPO loss needs them, with the encoder running architecture `arch`.
    ///
    /// # Shapes
    /// obs `[B, ..obs_shape]`, actions `[B]` i64 -> logprob, entropy, value `[B]`
    pub fn evaluate(&self, obs: &Tensor, actions: &Tensor, arch: &A) -> Evaluation {
        let (logits, value) = self.forward(obs, arch);
        let log_probs = logits.log_softmax(-1, logits.kind()); // [B, A]
        let logprob = log_probs
            .gather(-1, &actions.to_device(self.device).unsqueeze(-1), false)
            .squeeze_dim(-1);
        let entropy = -(log_probs.exp() * &log_probs).sum_dim_intlist(-1, false, log_probs.kind());
        Evaluation {
            logprob,
            entropy,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImpalaCnn, ImpalaConfig, Mlp, MlpConfig};

    #[test]
    fn preprocess_permutes_and_scales_images() {
        // [1, 2, 2, 3] HWC: pixel (h, w) channel c holds 10 * c + 2 * h + w.
        let data: Vec<u8> = (0..2)
            .flat_map(|h| (0..2).flat_map(move |w| (0..3).map(move |c| (10 * c + 2 * h + w) as u8)))
            .collect();
        let obs = Tensor::from_slice(&data).reshape([1, 2, 2, 3]);
        let x = preprocess_obs(&obs);
        assert_eq!(x.size(), [1, 3, 2, 2]);
        assert_eq!(x.kind(), Kind::Float);
        // channel 2, h 1, w 0: 10 * 2 + 2 = 22
        let v = x.double_value(&[0, 2, 1, 0]);
        assert!((v - 22.0 / 255.0).abs() < 1e-7);
        let spec = EnvSpec {
            name: "coinrun".into(),
            num_envs: 1,
            obs_shape: vec![64, 64, 3],
            obs_kind: Kind::Uint8,
            num_actions: 15,
        };
        assert_eq!(encoder_input_shape(&spec), [3, 64, 64]);
    }

    #[test]
    fn impala_agent_parameter_count_and_outputs() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = ImpalaCnn::new(
            vs.root() / "encoder",
            &[3, 64, 64],
            &ImpalaConfig::default(),
        )
        .unwrap();
        let agent = ActorCritic::new(vs.root() / "policy", Box::new(enc), 15);
        // 622_144 encoder (see impala.rs) + 256 * 15 + 15 + 256 + 1
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(count, 626_256);
        let obs = Tensor::randint(256, [6, 64, 64, 3], (Kind::Uint8, Device::Cpu));
        let act = agent.act(&obs, &());
        assert_eq!(act.action.size(), [6]);
        assert_eq!(act.action.kind(), Kind::Int64);
        assert_eq!(act.value.size(), [6]);
        // With policy std 0.01 the initial policy is close to uniform over 15 actions.
        let lp_uniform = -(15f64).ln();
        // Uniform-noise images drive the IMPALA features hard (feature norm ~30), so logits
        // of std-0.01 heads still spread by a few tenths; real frames give far less.
        let max_dev = f64::try_from((act.logprob - lp_uniform).abs().max()).unwrap();
        assert!(max_dev < 0.5, "{max_dev}");
        let ev = agent.evaluate(&obs, &act.action, &());
        assert_eq!(ev.logprob.size(), [6]);
        assert!(ev.logprob.requires_grad());
        let ent = f64::try_from(ev.entropy.mean(Kind::Float)).unwrap();
        // Within 2% of the maximum entropy ln 15 = 2.708 (measured: 2.687).
        assert!((ent - 15f64.ln()).abs() < 0.05, "{ent}");
    }

    #[test]
    fn act_and_evaluate_agree() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let agent = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
        let obs = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
        let act = agent.act(&obs, &());
        let ev = agent.evaluate(&obs, &act.action, &());
        assert!(ev.logprob.allclose(&act.logprob, 1e-6, 1e-6, false));
        assert!(ev.value.allclose(&act.value, 1e-6, 1e-6, false));
    }

    #[test]
    fn sampling_follows_the_policy() {
        // Logits (0, ln 3): P(action 1) = 3/4. The heads are overwritten to make pi independent
        // of the observation.
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let mut agent = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
        tch::no_grad(|| {
            let _ = agent.actor.ws.zero_();
            agent
                .actor
                .bs
                .as_mut()
                .unwrap()
                .copy_(&Tensor::from_slice(&[0.0f32, 3f32.ln()]));
        });
        let act = agent.act(&Tensor::randn([20_000, 4], (Kind::Float, Device::Cpu)), &());
        let frac = f64::try_from(act.action.to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
    }

    #[test]
    fn inverse_cdf_sampling_picks_the_interval_holding_u() {
        // p = [0.2, 0, 0.5, 0.3]: CDF [0.2, 0.2, 0.7, 1.0].
        let p = Tensor::from_slice(&[0.2f64, 0.0, 0.5, 0.3])
            .reshape([1, 4])
            .repeat([7, 1]);
        let log_probs = p.log().to_kind(Kind::Float);
        let u = Tensor::from_slice(&[
            0.0f64,
            0.1999,
            0.2001,
            0.6999,
            0.7001,
            0.99999,
            0.9999999999,
        ]);
        let a = Vec::<i64>::try_from(sample_categorical(&log_probs, &u)).unwrap();
        assert_eq!(a, [0, 0, 2, 2, 3, 3, 3]);
        // Action 1 has no mass: not drawn even for u exactly on its empty interval, wherever
        // rounding puts the CDF (computed here as the sampler does).
        let cdf = log_probs
            .to_kind(Kind::Double)
            .exp()
            .cumsum(-1, Kind::Double);
        let at_boundary = cdf.select(1, 0) / cdf.select(1, 3);
        let a = Vec::<i64>::try_from(sample_categorical(&log_probs, &at_boundary)).unwrap();
        assert!(a.iter().all(|&x| x != 1), "{a:?}");
    }
}
