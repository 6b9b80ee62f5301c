//! How an encoder's hidden layers start ([`HiddenInit`]), and orthogonal initialisation
//! (Saxe et al. 2014) with the right shape for conv weights.
//!
//! tch 0.26's `nn::Init::Orthogonal` builds the orthogonal matrix on the flattened
//! `[rows, prod(rest)]` shape and returns it without reshaping, so a conv weight
//! `[C_out, C_in, k, k]` comes out 2-D and conv2d rejects it. This helper draws the same
//! matrix and writes it into the existing variable in its own shape.

use serde::{Deserialize, Serialize};
use tch::{nn::Init, Tensor};

/// How an encoder's hidden layers start (its convs and final linear layer; the policy and value
/// heads are always orthogonal with gains 0.01 and 1, as in every Procgen PPO baseline).
///
/// The Procgen recipe keeps the framework's defaults on the hidden layers
/// (../shared/REFERENCE.md section 2): PyTorch's in CleanRL's `ppo_procgen.py` (its
/// `layer_init` wraps the two heads only), Glorot uniform in openai baselines' `impala_cnn`
/// (tf.layers defaults). Orthogonal sqrt(2) on hidden layers is the Atari (nature_cnn) recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenInit {
    /// PyTorch's layer defaults, CleanRL's: weights and biases from
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)). They start the network with small features, so the
    /// first value estimates are near 0 instead of about +-20 (IMPALA-CNN, Procgen frames). On
    /// CoinRun with a narrow IMPALA-CNN this decided whether PPO learned at all in 164k steps
    /// (BENCHMARKS.md).
    #[default]
    TorchDefault,
    /// openai baselines' (tf.layers defaults): weights from
    /// U(-sqrt(6 / (fan_in + fan_out)), +sqrt(6 / (fan_in + fan_out))), biases 0, where a conv's
    /// fans count its receptive field (`fan_out = C_out * k * k`).
    GlorotUniform,
    /// Orthogonal with the ReLU gain sqrt(2), bias 0: the Atari recipe, kept as an option.
    Orthogonal,
}

impl HiddenInit {
    /// Re-draws a layer that was built with the orthogonal scheme (weight `[out, in, ..]`)
    /// when `self` asks for another one. Layers are built orthogonal first and then re-drawn so
    /// that the orthogonal scheme's random draws, and with them seeded runs that ask for it,
    /// stay as they were.
    pub fn apply(self, weight: &Tensor, bias: Option<&Tensor>) {
        let size = weight.size();
        let receptive: i64 = size[2..].iter().product();
        let fan_in = size[1] * receptive;
        let fan_out = size[0] * receptive;
        tch::no_grad(|| match self {
            HiddenInit::Orthogonal => {}
            HiddenInit::TorchDefault => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                for t in std::iter::once(weight).chain(bias) {
                    let _ = t.shallow_clone().uniform_(-bound, bound);
                }
            }
            HiddenInit::GlorotUniform => {
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                let _ = weight.shallow_clone().uniform_(-bound, bound);
                if let Some(b) = bias {
                    let _ = b.shallow_clone().zero_();
                }
            }
        });
    }
}

/// Overwrites `weight` (any shape with >= 2 dims) with an orthogonal matrix times `gain`,
/// as `torch.nn.init.orthogonal_` does (rows of the flattened weight orthonormal).
pub fn orthogonal_(weight: &Tensor, gain: f64) {
    let q = tch::nn::init::f_init(
        Init::Orthogonal { gain },
        &weight.size(),
        weight.device(),
        weight.kind(),
    )
    .expect("orthogonal init of a variable created with >= 2 dims");
    tch::no_grad(|| {
        let mut w = weight.shallow_clone();
        w.copy_(&q.view(weight.size().as_slice()));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn torch_default_draws_weights_and_biases_within_the_fan_in_bound() {
        tch::manual_seed(0);
        let w = Tensor::zeros([16, 8, 3, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([16], (Kind::Float, Device::Cpu));
        HiddenInit::Orthogonal.apply(&w, Some(&b));
        assert_eq!(
            w.abs().max().double_value(&[]),
            0.0,
            "orthogonal leaves the layer as built"
        );
        HiddenInit::TorchDefault.apply(&w, Some(&b));
        let bound = 1.0 / 72f64.sqrt();
        for t in [&w, &b] {
            let max = t.abs().max().double_value(&[]);
            assert!(max <= bound && max > 0.5 * bound, "{max} vs bound {bound}");
        }
        // U(-a, a) has standard deviation a / sqrt(3).
        let std = w.std(true).double_value(&[]);
        assert!((std - bound / 3f64.sqrt()).abs() < 0.1 * bound, "{std}");
    }

    #[test]
    fn glorot_uniform_counts_the_receptive_field_in_both_fans() {
        tch::manual_seed(1);
        let w = Tensor::zeros([16, 8, 3, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([16], (Kind::Float, Device::Cpu));
        HiddenInit::GlorotUniform.apply(&w, Some(&b));
        // fan_in 8 * 9 = 72, fan_out 16 * 9 = 144: bound sqrt(6 / 216).
        let bound = (6.0f64 / 216.0).sqrt();
        let max = w.abs().max().double_value(&[]);
        assert!(max <= bound && max > 0.9 * bound, "{max} vs {bound}");
        let std = w.std(true).double_value(&[]);
        assert!((std - bound / 3f64.sqrt()).abs() < 0.1 * bound, "{std}");
        assert_eq!(b.abs().max().double_value(&[]), 0.0, "biases start at 0");
        assert_eq!(HiddenInit::default(), HiddenInit::TorchDefault);
    }

    #[test]
    fn conv_weight_keeps_its_shape_and_has_orthogonal_rows() {
        let w = Tensor::zeros([8, 3, 3, 3], (Kind::Float, Device::Cpu));
        orthogonal_(&w, 2f64.sqrt());
        assert_eq!(w.size(), [8, 3, 3, 3]);
        let m = w.view([8, 27]);
        // Rows orthogonal with norm sqrt(2): M M^T = 2 I.
        let gram = m.matmul(&m.tr());
        let expected = Tensor::eye(8, (Kind::Float, Device::Cpu)) * 2.0;
        assert!(gram.allclose(&expected, 1e-4, 1e-5, false), "{gram}");
    }
}
