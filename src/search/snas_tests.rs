//! Unit tests of `snas.rs` (kept apart so the module stays one concern).
use super::*;
use crate::nas::{AlphaInit, DartsSearchConfig, DartsSearchNet, Supernet};
use tch::{nn, Kind};

/// Alphas of a one-normal-cell, two-reduce-cell, two-node DARTS supernet, f64, and its
/// per-op costs on 8x8 grey images.
fn tiny() -> (ArchParams, OpCostTable) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsSearchNet::new(
        vs.root(),
        &DartsSearchConfig {
            c: 4,
            layers: 3,
            num_nodes: 2,
            in_channels: 1,
            stem_multiplier: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut arch = ArchParams::new(
        Device::Cpu,
        net.space(),
        true,
        AlphaInit {
            mean: 1.0,
            std: 0.01,
        },
    )
    .unwrap();
    arch.var_store_mut().set_kind(Kind::Double);
    (arch, net.op_costs([1, 8, 8]))
}

#[test]
fn temperature_anneals_linearly_and_bad_settings_are_rejected() {
    let (arch, _) = tiny();
    let mut s = Snas::new(&arch, SnasParams::default(), 0).unwrap();
    assert_eq!(s.temperature(), 1.0);
    let t: Vec<f64> = (0..5)
        .map(|e| {
            s.begin_epoch(e, 5);
            s.temperature()
        })
        .collect();
    let expected = [1.0, 0.7575, 0.515, 0.2725, 0.03];
    for (got, want) in t.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{t:?}");
    }
    for bad in [
        SnasParams {
            temperature_end: 0.0,
            ..Default::default()
        },
        SnasParams {
            temperature_start: 0.01,
            ..Default::default()
        },
        SnasParams {
            eta: -1.0,
            ..Default::default()
        },
        SnasParams {
            alpha_grad_clip: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(Snas::new(&arch, bad, 0).is_err());
    }
}

#[test]
fn op_cost_is_the_mean_log_or_the_metric_in_millions() {
    let c = OpCost {
        params: 100,
        flops: 1000,
        mac: 10,
    };
    let log_all = SnasParams::default().op_cost(&c);
    assert!((log_all - 2.0 * 10f64.ln()).abs() < 1e-12, "{log_all}");
    // ln of a zero cost (none, parameter-free ops) counts 0, as the official clean-up does.
    assert_eq!(SnasParams::default().op_cost(&OpCost::default()), 0.0);
    let linear_params = SnasParams {
        cost_metric: CostMetric::Params,
        log_cost: false,
        ..Default::default()
    };
    assert!((linear_params.op_cost(&c) - 1e-4).abs() < 1e-18);
}

#[test]
fn cost_table_shape_is_checked_and_missing_costs_are_an_error_only_with_eta() {
    let (arch, table) = tiny();
    let mut s = Snas::new(&arch, SnasParams::default(), 0).unwrap();
    let mut short = table.clone();
    short.normal.pop();
    let err = s.set_op_costs(&short).unwrap_err().to_string();
    assert!(err.contains("normal cost table"), "{err}");
    let no_reduce = OpCostTable {
        normal: table.normal.clone(),
        reduce: None,
    };
    assert!(s.set_op_costs(&no_reduce).is_err());

    // eta > 0 without costs: a clear error naming the fix.
    s.op_weights(&arch, Phase::Weights).unwrap();
    let err = s.expected_cost(&arch).unwrap_err().to_string();
    assert!(
        err.contains("set_op_costs") && err.contains("eta = 0"),
        "{err}"
    );

    // eta = 0 needs none.
    let mut free = Snas::new(
        &arch,
        SnasParams {
            eta: 0.0,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    let w = free.op_weights(&arch, Phase::Weights).unwrap();
    let loss = w.normal.weights().sum(Kind::Double)
        + w.reduce
            .as_ref()
            .unwrap()
            .weights()
            .square()
            .sum(Kind::Double);
    loss.backward();
    let report = WeightStepReport {
        iteration: 0,
        loss: 0.0,
        grad_norm_sq: 0.0,
        lr: 0.0,
    };
    assert!(free.after_weight_step(&arch, &report).unwrap().is_some());

    // A non-finite loss in the report is an error that names it (never a silent step).
    free.op_weights(&arch, Phase::Weights).unwrap();
    let inf = WeightStepReport {
        loss: f64::INFINITY,
        ..report
    };
    let err = free.after_weight_step(&arch, &inf).unwrap_err().to_string();
    assert!(err.contains("snas") && err.contains("loss = inf"), "{err}");
}

/// The applied gradient is the backward's `grad_alpha L(Z)` plus `eta` times the score
/// function for the *same* sample's children; the step moves the alphas and clears their
/// gradients; a step without a sample is an error.
#[test]
fn single_level_gradient_is_loss_gradient_plus_eta_score_function() {
    let (arch, table) = tiny();
    let params = SnasParams {
        eta: 0.5,
        ..Default::default()
    };
    let mut s = Snas::new(&arch, params, 1).unwrap();
    s.set_op_costs(&table).unwrap();
    let target = Tensor::randn([5, 8], (Kind::Double, Device::Cpu));
    let w = s.op_weights(&arch, Phase::Weights).unwrap();
    let loss = (w.normal.weights() * &target).sum(Kind::Double)
        + (w.reduce.as_ref().unwrap().weights() * &target).sum(Kind::Double);
    loss.backward();
    let g_loss: Vec<Tensor> = alphas(&arch).iter().map(|a| a.grad().copy()).collect();
    assert!(g_loss
        .iter()
        .all(|g| g.abs().sum(Kind::Double).double_value(&[]) > 0.0));

    let pending = s.pending.clone().unwrap();
    let (costs_n, costs_r) = s.cost_matrices().unwrap();
    let expected = [
        &g_loss[0]
            + score_function_cost_gradient(arch.alpha_normal(), costs_n, &pending.normal, false)
                .unwrap()
                * 0.5,
        &g_loss[1]
            + score_function_cost_gradient(
                arch.alpha_reduce().unwrap(),
                costs_r.unwrap(),
                pending.reduce.as_ref().unwrap(),
                false,
            )
            .unwrap()
                * 0.5,
    ];
    let got = s.single_level_gradient(&arch).unwrap();
    for (g, e) in got.iter().zip(&expected) {
        assert!(g.allclose(e, 1e-12, 1e-12, false));
    }

    let before: Vec<Tensor> = alphas(&arch).iter().map(Tensor::copy).collect();
    let report = WeightStepReport {
        iteration: 0,
        loss: 1.0,
        grad_norm_sq: 0.0,
        lr: 0.025,
    };
    let stats = s.after_weight_step(&arch, &report).unwrap().unwrap();
    assert!(stats.grad_norm > 0.0 && stats.loss >= 1.0);
    for (a, b) in alphas(&arch).iter().zip(&before) {
        assert!(!a.equal(b), "alphas did not move");
        assert_eq!(a.grad().abs().sum(Kind::Double).double_value(&[]), 0.0);
    }
    let names: Vec<&str> = s.scalars().iter().map(|(n, _)| *n).collect();
    assert!(names.contains(&"expected_cost") && names.contains(&"penalty"));
    assert!(s.after_weight_step(&arch, &report).is_err());
}

#[test]
fn checkpoint_restores_the_sampler_and_the_schedule() {
    let (arch, _) = tiny();
    let mut s = Snas::new(&arch, SnasParams::default(), 7).unwrap();
    s.begin_epoch(3, 10);
    s.sample(arch.alpha_normal()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    s.save(dir.path()).unwrap();
    let mut fresh = Snas::new(&arch, SnasParams::default(), 99).unwrap();
    fresh.load(dir.path()).unwrap();
    assert_eq!(fresh.temperature(), s.temperature());
    for _ in 0..3 {
        let a = s.sample(arch.alpha_normal()).unwrap();
        let b = fresh.sample(arch.alpha_normal()).unwrap();
        assert_eq!(a.index, b.index);
        assert!(a.relaxed.equal(&b.relaxed));
    }
}
