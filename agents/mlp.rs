//! A tanh MLP encoder for state-vector environments (CleanRL `ppo.py`'s CartPole network:
//! two hidden layers of 64, tanh, orthogonal init with gain sqrt(2)).

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::compute;
use super::{AgentError, Encoder};

/// Layer widths of the MLP. Defaults are CleanRL's CartPole agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Width of each hidden layer; the last is the feature dimension. CleanRL: `[64, 64]`.
    pub hidden: Vec<i64>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: vec![64, 64],
        }
    }
}

/// `tanh(linear(...tanh(linear(x))))`.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    out_dim: i64,
}

impl Mlp {
    /// `obs_shape` is one observation's shape, `[D]`.
    pub fn new(p: nn::Path, obs_shape: &[i64], config: &MlpConfig) -> Result<Self, AgentError> {
        let &[mut d_in] = obs_shape else {
            return Err(AgentError::ObsShape {
                got: obs_shape.to_vec(),
                expected: "[D]".into(),
            });
        };
        if config.hidden.is_empty() || config.hidden.iter().any(|&h| h <= 0) {
            return Err(AgentError::Config(format!(
                "MLP hidden sizes {:?} must be positive and non-empty",
                config.hidden
            )));
        }
        let linear_config = nn::LinearConfig {
            ws_init: nn::Init::Orthogonal { gain: 2f64.sqrt() },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let mut layers = Vec::with_capacity(config.hidden.len());
        for (i, &d_out) in config.hidden.iter().enumerate() {
            layers.push(nn::linear(
                &p / format!("fc{i}"),
                d_in,
                d_out,
                linear_config,
            ));
            d_in = d_out;
        }
        Ok(Self {
            layers,
            out_dim: d_in,
        })
    }
}

impl Encoder for Mlp {
    /// # Shapes
    /// `[N, D]` f32 -> `[N, hidden.last()]`
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        let mut xs = obs.shallow_clone();
        for layer in &self.layers {
            xs = compute::linear_layer(layer, &xs).tanh();
        }
        xs
    }

    fn feature_dim(&self) -> i64 {
        self.out_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shape_and_parameter_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
        let out = mlp.features(&Tensor::randn([7, 4], (Kind::Float, Device::Cpu)), &());
        assert_eq!(out.size(), [7, 64]);
        assert_eq!(mlp.feature_dim(), 64);
        // (4 * 64 + 64) + (64 * 64 + 64) = 320 + 4160
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(count, 4480);
    }

    #[test]
    fn rejects_an_image_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(Mlp::new(vs.root(), &[64, 64, 3], &MlpConfig::default()).is_err());
    }
}
