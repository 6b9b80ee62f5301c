//! Search health: the dominant eigenvalue of the alpha Hessian that the loops log
//! (RobustDARTS) equals the dense Hessian's, on a tiny DARTS supernet in f64.

mod common;

use rl_darts::nas::{AlphaInit, ArchParams, DartsSearchConfig, DartsSearchNet, Supernet};
use rl_darts::search::health::{alpha_hessian_eigenvalue, HealthLoss};
use rl_darts::search::{alphas, softmax_weights, Objective, Sgd, SgdConfig};
use rl_darts::train::supervised::VisionObjective;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn the_logged_eigenvalue_is_the_dense_hessians_dominant_one() {
    tch::manual_seed(3);
    let opts = (Kind::Double, Device::Cpu);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = DartsSearchConfig {
        // Three cells: a normal one, then two reductions, so both alpha matrices matter.
        layers: 3,
        ..common::nets::tiny_search_net_config()
    };
    let net = DartsSearchNet::new(vs.root() / "net", &config).unwrap();
    vs.set_kind(Kind::Double);
    let init = AlphaInit {
        mean: 0.0,
        std: 0.5,
    };
    let mut arch = ArchParams::new(Device::Cpu, net.space(), true, init).unwrap();
    arch.var_store_mut().set_kind(Kind::Double);
    let sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    let batch = |labels: &[i64]| {
        (
            Tensor::randn([6, 1, 6, 6], opts),
            Tensor::from_slice(labels),
        )
    };
    let mut objective = VisionObjective {
        net: &net,
        vs: &vs,
        sgd: &sgd,
        train: batch(&[0, 1, 2, 0, 1, 2]),
        search: batch(&[2, 1, 0, 2, 1, 0]),
    };

    // The dense Hessian of the search loss in alpha, row by row from the gradient's graph.
    let params = alphas(&arch);
    let loss = objective.search_loss(&softmax_weights(&arch, 1.0)).unwrap();
    let g = Tensor::run_backward(&[&loss], &params, true, true);
    let flat_g = Tensor::cat(&g.iter().map(|t| t.flatten(0, -1)).collect::<Vec<_>>(), 0);
    let n = flat_g.size()[0];
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            let row = Tensor::run_backward(&[&flat_g.get(i)], &params, true, false);
            // A gradient entry that does not reach an alpha tensor leaves its row block
            // undefined: zeros.
            let parts: Vec<Tensor> = row
                .iter()
                .zip(&params)
                .map(|(t, p)| {
                    if t.defined() {
                        t.flatten(0, -1)
                    } else {
                        p.zeros_like().flatten(0, -1)
                    }
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
        .collect();
    let hessian = Tensor::stack(&rows, 0);
    let asymmetry = (&hessian - hessian.transpose(0, 1))
        .abs()
        .max()
        .double_value(&[]);
    assert!(asymmetry < 1e-10, "Hessian asymmetry {asymmetry}");
    let eigen = Vec::<f64>::try_from(hessian.linalg_eigvalsh("L")).unwrap();
    let dominant = eigen
        .iter()
        .copied()
        .max_by(|a, b| a.abs().total_cmp(&b.abs()))
        .unwrap();
    assert!(dominant.abs() > 1e-6, "a degenerate fixture: {eigen:?}");

    let logged =
        alpha_hessian_eigenvalue(&mut objective, &arch, 1.0, HealthLoss::Search, 200).unwrap();
    assert!(
        (logged - dominant).abs() <= 1e-6 * dominant.abs(),
        "power iteration {logged} vs dense {dominant} (spectrum {eigen:?})"
    );
    // Another batch has another curvature: the function reads the loss it is given.
    let other =
        alpha_hessian_eigenvalue(&mut objective, &arch, 1.0, HealthLoss::Train, 50).unwrap();
    assert!(
        (other - logged).abs() > 1e-9 * logged.abs(),
        "{other} vs {logged}"
    );
}
