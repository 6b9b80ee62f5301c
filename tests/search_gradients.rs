//! DARTS second-order hypergradient against central differences of the unrolled objective
//! `F(alpha) = L_val(w - xi (mu buf + grad_w L_train(w, alpha) + wd w), alpha)`, in f64 on a
//! tiny supernet; the weights (and BatchNorm statistics) must come back bit-identical.
//!
//! d F / d alpha = grad_alpha L_val(w', alpha) - xi grad2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)
//! (the momentum and weight-decay terms of w' do not depend on alpha). With the exact mixed
//! product the only error left is the central difference's O(h^2); with DARTS's finite
//! difference the product itself carries O(eps^2) more.

mod common;

use rl_darts::nas::{AlphaInit, ArchParams, DartsSearchNet, Supernet};
use rl_darts::search::perturb::{grad, WeightGuard};
use rl_darts::search::{
    alphas, softmax_weights, Darts, DartsOrder, DartsParams, HessianMode, Objective, Sgd, SgdConfig,
};
use rl_darts::train::supervised::{cross_entropy, VisionObjective};
use tch::{nn, Device, Kind, Tensor};

struct Fixture {
    vs: nn::VarStore,
    net: DartsSearchNet,
    arch: ArchParams,
    sgd: Sgd,
    train: (Tensor, Tensor),
    search: (Tensor, Tensor),
}

fn fixture(device: Device) -> Fixture {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(device);
    let net =
        DartsSearchNet::new(vs.root() / "net", &common::nets::tiny_search_net_config()).unwrap();
    vs.set_kind(Kind::Double);
    let mut arch = ArchParams::new(
        device,
        net.space(),
        true,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap();
    arch.var_store_mut().set_kind(Kind::Double);
    let (train, search) = common::nets::six_image_batches(Kind::Double, device);
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    // One real step so the virtual step has momentum buffers to include.
    let w = tch::no_grad(|| softmax_weights(&arch, 1.0));
    sgd.zero_grad();
    cross_entropy(&net.forward_with(&train.0, &w, true), &train.1).backward();
    sgd.step();
    Fixture {
        vs,
        net,
        arch,
        sgd,
        train,
        search,
    }
}

impl Fixture {
    fn objective(&self) -> VisionObjective<'_> {
        VisionObjective {
            net: &self.net,
            vs: &self.vs,
            sgd: &self.sgd,
            train: (self.train.0.shallow_clone(), self.train.1.shallow_clone()),
            search: (self.search.0.shallow_clone(), self.search.1.shallow_clone()),
        }
    }

    /// The unrolled objective at the current alphas, computed literally.
    fn unrolled(&self) -> f64 {
        let mut obj = self.objective();
        let w = obj.parameters();
        let mut state: Vec<Tensor> = w.iter().map(Tensor::shallow_clone).collect();
        state.extend(obj.buffers());
        let mut guard = WeightGuard::snapshot(&state);
        let vstep = obj.virtual_step();
        let weights = softmax_weights(&self.arch, 1.0);
        let g = grad(&obj.train_loss(&weights).unwrap(), &w, false).unwrap();
        let w_prime: Vec<Tensor> = tch::no_grad(|| {
            w.iter()
                .zip(&g)
                .zip(&vstep.momentum_buffers)
                .map(|((p, g), b)| {
                    p - (b.as_ref().unwrap() * vstep.momentum + g + p * vstep.weight_decay)
                        * vstep.lr
                })
                .collect()
        });
        guard.set(&w_prime).unwrap();
        let value = tch::no_grad(|| {
            obj.search_loss(&softmax_weights(&self.arch, 1.0))
                .unwrap()
                .double_value(&[])
        });
        guard.restore();
        value
    }

    fn shift_alphas(&self, direction: &[Tensor], h: f64) {
        tch::no_grad(|| {
            for (a, d) in alphas(&self.arch).iter_mut().zip(direction) {
                let _ = a.g_add_(&(d * h));
            }
        });
    }
}

fn directional_check(device: Device, hessian: HessianMode, fd_radius: f64, tolerance: f64) {
    let f = fixture(device);
    let darts = Darts::new(
        &f.arch,
        DartsParams {
            order: DartsOrder::Second,
            hessian,
            fd_radius,
            ..DartsParams::default()
        },
    )
    .unwrap();
    let before: Vec<(String, Tensor)> =
        f.vs.variables()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
    let (_, g) = darts
        .unrolled_gradient(&f.arch, &mut f.objective())
        .unwrap();
    // Bit-identical weights and BN statistics after the virtual step and both perturbations.
    let after = f.vs.variables();
    for (name, value) in &before {
        assert!(after[name].equal(value), "{name} changed");
    }
    assert!(g[0].kind() == Kind::Double && g.len() == 2);

    let h = 1e-5;
    for seed in 0..3 {
        tch::manual_seed(100 + seed);
        let d: Vec<Tensor> = g
            .iter()
            .map(|t| Tensor::randn(t.size(), (Kind::Double, device)))
            .collect();
        let analytic: f64 = g
            .iter()
            .zip(&d)
            .map(|(a, b)| (a * b).sum(Kind::Double).double_value(&[]))
            .sum();
        f.shift_alphas(&d, h);
        let plus = f.unrolled();
        f.shift_alphas(&d, -2.0 * h);
        let minus = f.unrolled();
        f.shift_alphas(&d, h);
        let numeric = (plus - minus) / (2.0 * h);
        let rel = (analytic - numeric).abs() / numeric.abs().max(1e-8);
        assert!(
            rel < tolerance,
            "{device:?} {hessian:?} direction {seed}: analytic {analytic:e}, numeric {numeric:e}, rel {rel:e}"
        );
    }
}

#[test]
fn second_order_gradient_with_exact_hvp_equals_the_unrolled_finite_difference() {
    for device in common::devices() {
        directional_check(device, HessianMode::Exact, 0.01, 1e-6);
    }
}

#[test]
fn second_order_gradient_with_finite_difference_hvp_equals_the_unrolled_finite_difference() {
    // eps = r / ||v||. The paper's r = 0.01 moves this tiny net's weights across ReLU and
    // max-pool kinks (its weights are O(0.1)), where central differences of a piecewise
    // smooth gradient are off by a few percent; r = 1e-5 stays inside one smooth piece.
    for device in common::devices() {
        directional_check(device, HessianMode::FiniteDifference, 1e-5, 1e-5);
    }
}

/// The two second-order modes agree with each other coordinate-wise.
#[test]
fn finite_difference_and_exact_second_order_gradients_agree() {
    for device in common::devices() {
        fd_and_exact_agree_on(device);
    }
}

fn fd_and_exact_agree_on(device: Device) {
    let f = fixture(device);
    let grads = |hessian| {
        let params = DartsParams {
            order: DartsOrder::Second,
            hessian,
            fd_radius: 1e-5,
            ..DartsParams::default()
        };
        let darts = Darts::new(&f.arch, params).unwrap();
        darts
            .unrolled_gradient(&f.arch, &mut f.objective())
            .unwrap()
            .1
    };
    let (fd, exact) = (
        grads(HessianMode::FiniteDifference),
        grads(HessianMode::Exact),
    );
    for (a, b) in fd.iter().zip(&exact) {
        let err = (a - b).abs().max().double_value(&[]);
        let scale = b.abs().max().double_value(&[]);
        assert!(
            err <= 1e-5 * scale,
            "{device:?}: max error {err:e}, scale {scale:e}"
        );
    }
}
