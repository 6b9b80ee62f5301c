//! One conformance test over every name in `STRATEGY_NAMES`: after an arch step the alphas
//! changed and the network weights did not; op weights are valid in every phase (rows sum to 1
//! for relaxations, one-hot with matching active lists for hard samples); the derived genotype
//! builds a network that runs forward (the checkpoint round trip is tests/search_checkpoint.rs).
//! Plus the second-order DARTS variants, whose virtual
//! step must leave weights and BatchNorm statistics bit-identical.

use rl_darts::nas::{
    AlphaInit, ArchParams, DartsEvalConfig, DartsSearchConfig, DartsSearchNet, OpWeights, Supernet,
};
use rl_darts::search::{
    alphas, DartsOrder, DartsParams, HessianMode, Phase, SearchStrategy, Sgd, SgdConfig,
    StrategyConfig, STRATEGY_NAMES,
};
use rl_darts::train::supervised::{cross_entropy, derived_network_forward, VisionObjective};
use tch::{nn, Device, Kind, Tensor};

fn check_op_weights(name: &str, phase: Phase, w: &OpWeights) {
    let rows = Vec::<Vec<f64>>::try_from(&w.weights().detach().to_kind(Kind::Double)).unwrap();
    for (e, row) in rows.iter().enumerate() {
        let sum: f64 = row.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "{name} {phase:?}: edge {e} sums to {sum}"
        );
        assert!(
            row.iter().all(|&v| v >= 0.0),
            "{name} {phase:?}: negative weight on edge {e}"
        );
        if let Some(active) = w.active(e) {
            // A hard sample: exactly the active ops carry weight.
            for (o, &v) in row.iter().enumerate() {
                let expected = if active.contains(&o) { 1.0 } else { 0.0 };
                assert!(
                    (v - expected).abs() < 1e-6,
                    "{name} {phase:?}: edge {e} op {o} = {v}, active {active:?}"
                );
            }
        }
    }
}

fn conformance(config: &StrategyConfig) {
    let name = config.name();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net_config = DartsSearchConfig {
        c: 4,
        layers: 3,
        num_nodes: 3,
        in_channels: 1,
        stem_multiplier: 2,
        ..Default::default()
    };
    let net = DartsSearchNet::new(vs.root() / "net", &net_config).unwrap();
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let mut strategy: Box<dyn SearchStrategy> = config.build(&arch, 0).unwrap();
    assert_eq!(strategy.name(), name);
    // As the loops do: the supernet's per-op costs for the input shape (SNAS's resource term).
    strategy.set_op_costs(&net.op_costs([1, 8, 8])).unwrap();
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    let opts = (Kind::Float, Device::Cpu);
    let train = (
        Tensor::randn([8, 1, 8, 8], opts),
        Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)),
    );
    let search = (
        Tensor::randn([8, 1, 8, 8], opts),
        Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)),
    );

    // One weight step as the loop takes it, so the optimizer has momentum.
    strategy.begin_epoch(0, 2);
    let w = strategy.op_weights(&arch, Phase::Weights).unwrap();
    sgd.zero_grad();
    cross_entropy(&net.forward_with(&train.0, &w, true), &train.1).backward();
    sgd.step();

    for phase in [Phase::Weights, Phase::Arch, Phase::Eval] {
        let w = strategy.op_weights(&arch, phase).unwrap();
        w.check(&net.space(), true).unwrap();
        check_op_weights(name, phase, &w.normal);
        check_op_weights(name, phase, w.reduce.as_ref().unwrap());
    }

    let alphas_before: Vec<Tensor> = alphas(&arch).iter().map(Tensor::copy).collect();
    let params_before: Vec<Tensor> = sgd.parameters().iter().map(Tensor::copy).collect();
    let mut objective = VisionObjective {
        net: &net,
        vs: &vs,
        sgd: &sgd,
        train,
        search,
    };
    let stats = strategy.arch_step(&arch, &mut objective).unwrap();
    assert!(stats.loss.is_finite(), "{name}: arch loss {}", stats.loss);
    let changed = alphas(&arch)
        .iter()
        .zip(&alphas_before)
        .any(|(a, b)| !a.equal(b));
    assert!(changed, "{name}: alphas did not change after an arch step");
    for (p, before) in sgd.parameters().iter().zip(&params_before) {
        assert!(
            p.equal(before),
            "{name}: the arch step changed network weights"
        );
    }

    let genotype = strategy.derive(&arch).unwrap();
    genotype.validate(2, true).unwrap();
    let eval = DartsEvalConfig {
        c: 4,
        layers: 3,
        auxiliary: false,
        drop_path_prob: 0.0,
        stem_multiplier: 2,
        in_channels: 1,
        image_size: 8,
        ..Default::default()
    };
    let logits =
        derived_network_forward(&genotype, &eval, &Tensor::randn([2, 1, 8, 8], opts)).unwrap();
    assert_eq!(logits.size(), [2, 10], "{name}");

    // The checkpoint round trip (with every part of the state changed first) is
    // tests/search_checkpoint.rs.
}

#[test]
fn every_strategy_conforms() {
    for name in STRATEGY_NAMES {
        conformance(&StrategyConfig::from_name(name).unwrap());
    }
}

#[test]
fn darts_second_order_variants_conform() {
    for hessian in [HessianMode::FiniteDifference, HessianMode::Exact] {
        conformance(&StrategyConfig::Darts(DartsParams {
            order: DartsOrder::Second,
            hessian,
            ..DartsParams::default()
        }));
    }
}
