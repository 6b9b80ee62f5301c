//! The actor-critic: an [`Encoder`] shared by a categorical policy head and a value head,
//! initialised as in the Procgen paper / CleanRL (policy std 0.01, value std 1).

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::Encoder;
use crate::envs::EnvSpec;

/// Observations as the environment gives them -> what an [`Encoder`] takes.
///
/// Images (`Uint8`, `[N, H, W, C]`) become `[N, C, H, W]` f32 in [0, 1]; anything else is
/// cast to f32 unchanged. Call it on the device that runs the encoder: moving u8 pixels is
/// four times less traffic than moving floats.
///
/// # Shapes
/// `[N, H, W, C]` u8 -> `[N, C, H, W]` f32, or `[N, D]` -> `[N, D]` f32
pub fn preprocess_obs(obs: &Tensor) -> Tensor {
    if obs.kind() == Kind::Uint8 && obs.dim() == 4 {
        obs.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0
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

/// Encoder + linear policy and value heads.
#[derive(Debug)]
pub struct ActorCritic {
    pub encoder: Box<dyn Encoder>,
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

impl ActorCritic {
    /// The heads go under `p / "actor"` and `p / "critic"`; the encoder was built by the
    /// caller (into the same weight store, or any other).
    pub fn new(p: nn::Path, encoder: Box<dyn Encoder>, num_actions: i64) -> Self {
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

    /// Logits and values for raw observations (moved to the policy's device here).
    ///
    /// # Shapes
    /// obs `[N, ..obs_shape]` (u8 HWC or f32) -> logits `[N, A]`, value `[N]`
    pub fn forward(&self, obs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let xs = preprocess_obs(&obs.to_device(self.device));
        let features = self.encoder.features(&xs, train);
        (
            self.actor.forward(&features),
            self.critic.forward(&features).squeeze_dim(-1),
        )
    }

    /// Samples actions from pi(. | obs), without gradients. The encoder runs with
    /// `train = false`: rollouts are inference.
    ///
    /// # Shapes
    /// obs `[N, ..obs_shape]` -> action, logprob, value `[N]`
    pub fn act(&self, obs: &Tensor) -> Act {
        tch::no_grad(|| {
            let (logits, value) = self.forward(obs, false);
            let log_probs = logits.log_softmax(-1, Kind::Float); // [N, A]
                                                                 // Categorical sampling from the normalised probabilities (torch's
                                                                 // Categorical.sample is the same multinomial draw).
            let action = log_probs.exp().multinomial(1, true); // [N, 1]
            let logprob = log_probs.gather(-1, &action, false).squeeze_dim(-1);
            Act {
                action: action.squeeze_dim(-1),
                logprob,
                value,
            }
        })
    }

    /// Log-probabilities of given actions, entropies and values, with gradients, as the
    /// PPO loss needs them. The encoder runs with `train = true`.
    ///
    /// # Shapes
    /// obs `[B, ..obs_shape]`, actions `[B]` i64 -> logprob, entropy, value `[B]`
    pub fn evaluate(&self, obs: &Tensor, actions: &Tensor) -> Evaluation {
        let (logits, value) = self.forward(obs, true);
        let log_probs = logits.log_softmax(-1, Kind::Float); // [B, A]
        let logprob = log_probs
            .gather(-1, &actions.to_device(self.device).unsqueeze(-1), false)
            .squeeze_dim(-1);
        let entropy = -(log_probs.exp() * &log_probs).sum_dim_intlist(-1, false, Kind::Float);
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
    use crate::agents::{ImpalaCnn, ImpalaConfig, Mlp, MlpConfig};

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
        let act = agent.act(&obs);
        assert_eq!(act.action.size(), [6]);
        assert_eq!(act.action.kind(), Kind::Int64);
        assert_eq!(act.value.size(), [6]);
        // With policy std 0.01 the initial policy is close to uniform over 15 actions.
        let lp_uniform = -(15f64).ln();
        let max_dev = f64::try_from((act.logprob - lp_uniform).abs().max()).unwrap();
        assert!(max_dev < 0.1, "{max_dev}");
        let ev = agent.evaluate(&obs, &act.action);
        assert_eq!(ev.logprob.size(), [6]);
        assert!(ev.logprob.requires_grad());
        let ent = f64::try_from(ev.entropy.mean(Kind::Float)).unwrap();
        assert!((ent - 15f64.ln()).abs() < 0.01, "{ent}");
    }

    #[test]
    fn act_and_evaluate_agree() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let agent = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
        let obs = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
        let act = agent.act(&obs);
        let ev = agent.evaluate(&obs, &act.action);
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
            agent.actor.ws.zero_();
            agent
                .actor
                .bs
                .as_mut()
                .unwrap()
                .copy_(&Tensor::from_slice(&[0.0f32, 3f32.ln()]));
        });
        let act = agent.act(&Tensor::randn([20_000, 4], (Kind::Float, Device::Cpu)));
        let frac = f64::try_from(act.action.to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
    }
}
