//! The IMPALA-CNN encoder (Espeholt et al. 2018, "IMPALA", the 15-layer residual network)
//! as used by the Procgen paper's PPO baseline and CleanRL's `ppo_procgen.py`.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use super::compute::{self, Conv2d};
use super::init::HiddenInit;
use super::{AgentError, Encoder};

/// Architecture of the IMPALA-CNN. Defaults are the Procgen paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpalaConfig {
    /// Output channels of each conv sequence (conv -> maxpool -> 2 residual blocks); every
    /// sequence halves the spatial size. Procgen paper / CleanRL: `[16, 32, 32]`.
    pub channels: Vec<i64>,
    /// Width of the final linear layer, i.e. the feature dimension. Procgen paper: 256.
    pub embedding: i64,
    /// Convs and final linear layer: "torch_default" (default, CleanRL's), "glorot_uniform"
    /// (openai baselines') or "orthogonal" (the Atari recipe); see [`HiddenInit`].
    pub init: HiddenInit,
}

impl Default for ImpalaConfig {
    fn default() -> Self {
        Self {
            channels: vec![16, 32, 32],
            embedding: 256,
            init: HiddenInit::default(),
        }
    }
}

/// Orthogonal with gain sqrt(2) (the ReLU gain), bias 0, unless `init` says otherwise.
fn conv3x3(p: nn::Path, c_in: i64, c_out: i64, init: HiddenInit) -> Conv2d {
    let config = nn::ConvConfig {
        padding: 1,
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let conv = Conv2d::new(p, c_in, c_out, 3, config);
    // Not `ws_init: Init::Orthogonal`: tch returns that weight flattened to 2-D (see init.rs).
    super::init::orthogonal_(&conv.ws, 2f64.sqrt());
    init.apply(&conv.ws, conv.bs.as_ref());
    conv
}

/// `x + conv1(relu(conv0(relu(x))))`.
#[derive(Debug)]
struct ResidualBlock {
    conv0: Conv2d,
    conv1: Conv2d,
}

impl ResidualBlock {
    fn new(p: nn::Path, channels: i64, init: HiddenInit) -> Self {
        Self {
            conv0: conv3x3(&p / "conv0", channels, channels, init),
            conv1: conv3x3(&p / "conv1", channels, channels, init),
        }
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H, W]`
    fn forward(&self, xs: &Tensor) -> Tensor {
        let out = self.conv1.forward(&self.conv0.forward(&xs.relu()).relu());
        out + xs
    }
}

/// conv3x3 -> maxpool 3x3 stride 2 pad 1 -> two residual blocks.
#[derive(Debug)]
struct ConvSequence {
    conv: Conv2d,
    res0: ResidualBlock,
    res1: ResidualBlock,
}

impl ConvSequence {
    fn new(p: nn::Path, c_in: i64, c_out: i64, init: HiddenInit) -> Self {
        Self {
            conv: conv3x3(&p / "conv", c_in, c_out, init),
            res0: ResidualBlock::new(&p / "res0", c_out, init),
            res1: ResidualBlock::new(&p / "res1", c_out, init),
        }
    }

    /// # Shapes
    /// `[N, C_in, H, W] -> [N, C_out, (H + 1) / 2, (W + 1) / 2]`
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = self
            .conv
            .forward(xs)
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        self.res1.forward(&self.res0.forward(&xs))
    }
}

/// Spatial size after a 3x3 / stride 2 / pad 1 max-pool: floor((h + 2 - 3) / 2) + 1.
fn pooled(h: i64) -> i64 {
    (h - 1) / 2 + 1
}

/// The IMPALA-CNN: conv sequences, then flatten -> relu -> linear(embedding) -> relu.
#[derive(Debug)]
pub struct ImpalaCnn {
    sequences: Vec<ConvSequence>,
    fc: nn::Linear,
    embedding: i64,
}

impl ImpalaCnn {
    /// `obs_chw` is one preprocessed observation's shape `[C, H, W]` (e.g. `[3, 64, 64]`).
    pub fn new(p: nn::Path, obs_chw: &[i64], config: &ImpalaConfig) -> Result<Self, AgentError> {
        let &[c, mut h, mut w] = obs_chw else {
            return Err(AgentError::ObsShape {
                got: obs_chw.to_vec(),
                expected: "[C, H, W]".into(),
            });
        };
        if config.channels.is_empty()
            || config.channels.iter().any(|&c| c <= 0)
            || config.embedding <= 0
        {
            return Err(AgentError::Config(format!(
                "IMPALA channels {:?} and embedding {} must be positive and non-empty",
                config.channels, config.embedding
            )));
        }
        let mut sequences = Vec::with_capacity(config.channels.len());
        let mut c_in = c;
        for (i, &c_out) in config.channels.iter().enumerate() {
            sequences.push(ConvSequence::new(
                &p / format!("seq{i}"),
                c_in,
                c_out,
                config.init,
            ));
            c_in = c_out;
            h = pooled(h);
            w = pooled(w);
        }
        let fc_config = nn::LinearConfig {
            ws_init: nn::Init::Orthogonal { gain: 2f64.sqrt() },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let fc = nn::linear(&p / "fc", c_in * h * w, config.embedding, fc_config);
        config.init.apply(&fc.ws, fc.bs.as_ref());
        Ok(Self {
            sequences,
            fc,
            embedding: config.embedding,
        })
    }
}

impl Encoder for ImpalaCnn {
    /// # Shapes
    /// `[N, C, H, W]` f32 in [0, 1] -> `[N, embedding]`
    fn features(&self, obs: &Tensor, _arch: &()) -> Tensor {
        // In the run's layout from the first conv on (the frames arrive channels-last from
        // `preprocess_obs`'s permute); each conv keeps it. Under bf16 the activations stay
        // bf16 from the first conv to the embedding, as under PyTorch's autocast; the heads
        // and losses get fp32 (the cast back is differentiated like the layers' own casts).
        let mut xs = compute::to_activation_kind(&compute::to_layout(obs));
        for seq in &self.sequences {
            xs = seq.forward(&xs);
        }
        compute::linear_layer(&self.fc, &xs.flatten(1, -1).relu())
            .relu()
            .to_kind(obs.kind())
    }

    fn feature_dim(&self) -> i64 {
        self.embedding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn output_shape_and_parameter_count() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ImpalaCnn::new(
            vs.root() / "encoder",
            &[3, 64, 64],
            &ImpalaConfig::default(),
        )
        .unwrap();
        let obs = Tensor::rand([5, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(net.features(&obs, &()).size(), [5, 256]);
        // Parameter count, derived by hand (conv c_in -> c_out: 9 * c_in * c_out + c_out):
        //   seq0: conv 3->16 = 448, 4 res convs 16->16 = 4 * 2320     ->   9_728
        //   seq1: conv 16->32 = 4640, 4 res convs 32->32 = 4 * 9248   ->  41_632
        //   seq2: conv 32->32 = 9248, 4 res convs 32->32 = 4 * 9248   ->  46_240
        //   64 -> 32 -> 16 -> 8 pixels, fc 32*8*8 = 2048 -> 256: 2048 * 256 + 256 = 524_544
        // total 622_144 (with the 15-action and value heads: 626_256, CleanRL's procgen agent).
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(count, 622_144);
        // Explicit paths: no `__N` renames, one entry per tensor.
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.iter().all(|n| !n.contains("__")), "{names:?}");
        assert!(names.contains(&"encoder.seq2.res1.conv1.weight".to_string()));
    }

    #[test]
    fn orthogonal_init_has_the_relu_gain() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ImpalaConfig {
            init: HiddenInit::Orthogonal,
            ..ImpalaConfig::default()
        };
        let _net = ImpalaCnn::new(vs.root() / "encoder", &[3, 64, 64], &config).unwrap();
        let vars = vs.variables();
        // Conv weight [16, 3, 3, 3] flattens to [16, 27]: rows orthogonal, each of norm sqrt(2).
        let w = vars["encoder.seq0.conv.weight"].reshape([16, 27]);
        let gram = w.matmul(&w.tr());
        let expected = Tensor::eye(16, (Kind::Float, Device::Cpu)) * 2.0;
        assert!(gram.allclose(&expected, 1e-4, 1e-4, false));
        let b = &vars["encoder.fc.bias"];
        assert_eq!(f64::try_from(b.abs().sum(Kind::Float)).unwrap(), 0.0);
    }

    /// The default is CleanRL's (PyTorch's layer defaults): conv weights within
    /// 1/sqrt(fan_in), biases drawn too (not zero), rows not orthogonal.
    #[test]
    fn default_init_is_pytorchs() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = ImpalaCnn::new(
            vs.root() / "encoder",
            &[3, 64, 64],
            &ImpalaConfig::default(),
        )
        .unwrap();
        let vars = vs.variables();
        let w = &vars["encoder.seq0.conv.weight"];
        let bound = 1.0 / 27f64.sqrt();
        let max = w.abs().max().double_value(&[]);
        assert!(max <= bound && max > 0.8 * bound, "{max} vs {bound}");
        let b = &vars["encoder.fc.bias"];
        assert!(b.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// Under bf16 the activations stay bf16 between layers (as under PyTorch's autocast): the
    /// encoder equals, exactly, a forward written out here with every conv, ReLU, pool and
    /// residual add in bf16, and differs from one that returns to fp32 after each conv.
    #[test]
    fn bf16_forward_keeps_bf16_activations_between_layers() {
        use super::super::compute::{enter, Compute, Layout, Precision};
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ImpalaConfig {
            channels: vec![4, 8],
            embedding: 16,
            ..ImpalaConfig::default()
        };
        let net = ImpalaCnn::new(vs.root() / "enc", &[3, 16, 16], &config).unwrap();
        let vars = vs.variables();
        let obs = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        // `between` is the kind the hand-written forward rounds activations to after a conv.
        let reference = |between: Kind| {
            let bf = Kind::BFloat16;
            let conv = |x: &Tensor, name: &str| {
                let w = vars[&format!("enc.{name}.weight")].to_kind(bf);
                let b = vars[&format!("enc.{name}.bias")].to_kind(bf);
                x.to_kind(bf)
                    .conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)
                    .to_kind(between)
            };
            let mut x = obs.to_kind(between);
            for s in 0..2 {
                x = conv(&x, &format!("seq{s}.conv")).max_pool2d(
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1],
                    false,
                );
                for r in 0..2 {
                    let h = conv(&x.relu(), &format!("seq{s}.res{r}.conv0"));
                    x = conv(&h.relu(), &format!("seq{s}.res{r}.conv1")) + &x;
                }
            }
            let fc_w = vars["enc.fc.weight"].to_kind(bf);
            let fc_b = vars["enc.fc.bias"].to_kind(bf);
            x.flatten(1, -1)
                .relu()
                .to_kind(bf)
                .linear(&fc_w, Some(&fc_b))
                .to_kind(between)
                .relu()
                .to_kind(Kind::Float)
        };
        let _scope = enter(Compute::new(Precision::Bf16, Layout::Nchw));
        let got = tch::no_grad(|| net.features(&obs, &()));
        assert_eq!(got.kind(), Kind::Float, "the heads get fp32 features");
        let all_bf16 = tch::no_grad(|| reference(Kind::BFloat16));
        let fp32_between = tch::no_grad(|| reference(Kind::Float));
        assert!(got.equal(&all_bf16), "bf16 activations between layers");
        assert!(!got.equal(&fp32_between), "the test can tell the two apart");
    }

    #[test]
    fn rejects_a_non_image_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(matches!(
            ImpalaCnn::new(vs.root(), &[4], &ImpalaConfig::default()),
            Err(AgentError::ObsShape { .. })
        ));
    }
}
