//! How a cell normalises each node's sum of edge outputs (RL-DARTS, Miao, Song et al. 2021,
//! puts a normalisation after every node; ../shared/REFERENCE.md section 3 says what the
//! official code really computes there).

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Normalisation after each intermediate node of a cell.
///
/// The official RL-DARTS code writes `tf.keras.layers.BatchNormalization(trainable=False)` and
/// calls it with `training=True`. In Keras's TF2 behaviour a layer with `trainable=False` runs
/// in inference mode whatever `training` says, on moving statistics that start at mean 0 and
/// variance 1 and are never updated in that mode: the layer computes `x / sqrt(1 + 1e-3)`, in
/// effect no normalisation ([`NodeNorm::None`]; the constant factor 0.9995 is left out).
///
/// Batch statistics ([`NodeNorm::Batch`], what the code's comment intends) make one env's action
/// depend on the other envs' frames, normalise rollouts (one step of all envs) differently from
/// PPO updates (shuffled minibatches), and make evaluation depend on its number of envs. The
/// per-sample choices ([`NodeNorm::None`], [`NodeNorm::Layer`]) have none of these faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeNorm {
    /// Identity: what the official RL-DARTS code computes (up to the factor 1/sqrt(1.001)).
    #[default]
    None,
    /// Per sample, over all of a node's features (`[C, H, W]`, or `[D]` for vectors), without
    /// affine: LayerNorm / GroupNorm with one group. A frame's features never depend on the
    /// other frames of the batch.
    Layer,
    /// BatchNorm without affine and without running averages: every forward normalises each
    /// channel with the statistics of its own batch (the official code's stated intent).
    Batch,
}

/// Added to variances before the square root (PyTorch's LayerNorm / BatchNorm default).
const EPS: f64 = 1e-5;

impl NodeNorm {
    /// Every choice, for tests and help texts.
    pub const ALL: [NodeNorm; 3] = [NodeNorm::None, NodeNorm::Layer, NodeNorm::Batch];

    /// The name as written in TOML.
    pub fn name(self) -> &'static str {
        match self {
            NodeNorm::None => "none",
            NodeNorm::Layer => "layer",
            NodeNorm::Batch => "batch",
        }
    }

    /// Whether a sample's output depends on the other samples of its batch.
    pub fn mixes_the_batch(self) -> bool {
        self == NodeNorm::Batch
    }

    /// Normalises one node's sum.
    ///
    /// # Shapes
    /// `[N, C, H, W]` (either memory format; the result keeps it) or `[N, D]` -> the same
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            NodeNorm::None => x.shallow_clone(),
            NodeNorm::Layer => {
                // Written out instead of `layer_norm`, whose kernel makes channels-last inputs
                // contiguous NCHW (the rest of the cell would then run NCHW, slower on CPU).
                let dims: Vec<i64> = (1..x.dim() as i64).collect();
                let mean = x.mean_dim(dims.as_slice(), true, x.kind()); // [N, 1, ..]
                let var = x.var_dim(dims.as_slice(), false, true); // biased, as LayerNorm
                (x - mean) * (var + EPS).rsqrt()
            }
            NodeNorm::Batch => x.batch_norm(
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                None::<Tensor>,
                true,
                0.0,
                EPS,
                true,
            ),
        }
    }
}

impl std::fmt::Display for NodeNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn layer_norm_is_per_sample_and_matches_libtorch() {
        tch::manual_seed(0);
        let x = Tensor::randn([5, 3, 4, 4], (Kind::Double, Device::Cpu)) * 3.0 + 1.0;
        let ours = NodeNorm::Layer.apply(&x);
        let reference = x.layer_norm([3, 4, 4], None::<Tensor>, None::<Tensor>, EPS, false);
        assert!(ours.allclose(&reference, 1e-10, 1e-10, false));
        // Sample 0 alone gives the same features as within the batch.
        let alone = NodeNorm::Layer.apply(&x.narrow(0, 0, 1));
        assert!(alone.allclose(&ours.narrow(0, 0, 1), 1e-12, 1e-12, false));
        // Channels-last in, channels-last out, same values (the CPU's f32 layout).
        let x = x.to_kind(Kind::Float);
        let ours = ours.to_kind(Kind::Float);
        let nhwc = crate::nas::ops::to_channels_last(&x);
        assert!(crate::nas::ops::is_channels_last(&nhwc));
        let out = NodeNorm::Layer.apply(&nhwc);
        assert!(crate::nas::ops::is_channels_last(&out));
        assert!(out.allclose(&ours, 1e-5, 1e-5, false));
        // Vectors: over the feature dimension.
        let v = Tensor::randn([4, 6], (Kind::Double, Device::Cpu));
        let reference = v.layer_norm([6], None::<Tensor>, None::<Tensor>, EPS, false);
        assert!(NodeNorm::Layer
            .apply(&v)
            .allclose(&reference, 1e-10, 1e-10, false));
    }

    #[test]
    fn only_batch_norm_mixes_the_batch() {
        tch::manual_seed(1);
        let x = Tensor::randn([6, 2, 3, 3], (Kind::Double, Device::Cpu));
        for norm in NodeNorm::ALL {
            let full = norm.apply(&x).narrow(0, 0, 2);
            let part = norm.apply(&x.narrow(0, 0, 2));
            let same = full.allclose(&part, 1e-12, 1e-12, false);
            assert_eq!(same, !norm.mixes_the_batch(), "{norm}");
        }
        assert!(NodeNorm::None.apply(&x).equal(&x));
    }
}
