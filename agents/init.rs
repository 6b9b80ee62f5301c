//! Orthogonal initialisation (Saxe et al. 2014) with the right shape for conv weights.
//!
//! tch 0.26's `nn::Init::Orthogonal` builds the orthogonal matrix on the flattened
//! `[rows, prod(rest)]` shape and returns it without reshaping, so a conv weight
//! `[C_out, C_in, k, k]` comes out 2-D and conv2d rejects it. This helper draws the same
//! matrix and writes it into the existing variable in its own shape.

use tch::{nn::Init, Tensor};

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
