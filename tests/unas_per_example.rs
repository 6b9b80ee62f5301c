//! UNAS's official default, one architecture per example (`same_alpha_minibatch=False` in
//! NVlabs/unas `darts/alphas.py`): per-example op weights in the supernet, the default config,
//! and a digits search that runs with it. The estimator's unbiasedness and variance are in
//! tests/search_unas.rs.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::logging::MemorySink;
use rl_darts::nas::{CellWeights, DartsSearchConfig, DartsSearchNet, OpSet, OpWeights, Supernet};
use rl_darts::search::{Objective, Sgd, SgdConfig, StrategyConfig, UnasParams};
use rl_darts::train::rl::NoProgress;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{search, SearchRun, SupervisedConfig, VisionObjective};
use tch::{nn, Device, Kind, Tensor};

fn tiny_net(vs: &nn::VarStore) -> DartsSearchNet {
    DartsSearchNet::new(
        vs.root() / "net",
        &DartsSearchConfig {
            c: 4,
            layers: 3,
            num_nodes: 2,
            in_channels: 1,
            stem_multiplier: 1,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Random op weights, one row-stochastic `[E, O]` matrix per example: `[B, E, O]`.
fn random_rows(b: i64, e: i64, o: i64) -> Tensor {
    (Tensor::randn([b, e, o], (Kind::Double, Device::Cpu)) * 2.0).softmax(-1, Kind::Double)
}

/// With per-example weights, example b's logits equal the supernet's logits on example b
/// alone with that example's weights (f64, evaluation mode so that BatchNorm does not couple
/// the examples). The network runs channels-last on the CPU, so this covers the NHWC sum.
#[test]
fn per_example_weights_give_each_example_its_own_network() {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = tiny_net(&vs);
    vs.double();
    let space = net.space();
    let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
    let b = 4;
    let x = Tensor::randn([b, 1, 8, 8], (Kind::Double, Device::Cpu));
    let (normal, reduce) = (random_rows(b, e, o), random_rows(b, e, o));
    let weights = CellWeights {
        normal: OpWeights::per_example(normal.shallow_clone()).unwrap(),
        reduce: Some(OpWeights::per_example(reduce.shallow_clone()).unwrap()),
    };
    weights.check(&space, true).unwrap();
    let batched = tch::no_grad(|| net.forward_with(&x, &weights, false)); // [B, 10]
    let mut max_cross = 0.0f64;
    for i in 0..b {
        let alone = tch::no_grad(|| {
            net.forward_with(
                &x.narrow(0, i, 1),
                &CellWeights::dense(normal.get(i), Some(reduce.get(i))),
                false,
            )
        });
        let row = batched.narrow(0, i, 1);
        assert!(
            row.allclose(&alone, 1e-10, 1e-12, false),
            "example {i}: {row} vs {alone}"
        );
        // The weights matter: another example's matrices give another output.
        let other = (i + 1) % b;
        let crossed = tch::no_grad(|| {
            net.forward_with(
                &x.narrow(0, i, 1),
                &CellWeights::dense(normal.get(other), Some(reduce.get(other))),
                false,
            )
        });
        max_cross = max_cross.max((&crossed - &alone).abs().max().double_value(&[]));
    }
    assert!(max_cross > 1e-6, "weights do not change the output");
}

/// Sparse (hard-sample) weights cannot be per example; the error says what to use instead.
#[test]
fn per_example_weights_are_dense_only() {
    let w = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
    let err = OpWeights::sparse(w, vec![vec![0]; 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("per_example"), "{err}");
    let err = OpWeights::per_example(Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, num_edges, num_ops]"), "{err}");
}

/// `kind = "unas"` draws one architecture per example unless told otherwise, in the default
/// config and in the digits preset.
#[test]
fn the_default_unas_config_is_per_example() {
    let StrategyConfig::Unas(p) = StrategyConfig::from_name("unas").unwrap() else {
        panic!("unas is not UNAS");
    };
    assert!(!p.same_alpha_minibatch);
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/digits-unas.toml");
    let c: SupervisedConfig = load_config(Some(&preset), SupervisedConfig::default(), &[]).unwrap();
    let StrategyConfig::Unas(p) = c.search.strategy else {
        panic!("digits-unas.toml is not UNAS");
    };
    assert!(!p.same_alpha_minibatch);
}

/// The vision objective's per-example losses are the per-example cross-entropies whose mean is
/// its batch loss, and a loop without them (the default trait method) refuses by name.
#[test]
fn vision_objective_gives_per_example_losses() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny_net(&vs);
    let sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    let batch = |n: i64| {
        (
            Tensor::randn([n, 1, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
        )
    };
    // The last partial train batch (5) pairs with the first 5 of the search batch (8).
    let mut objective = VisionObjective {
        net: &net,
        vs: &vs,
        sgd: &sgd,
        train: batch(5),
        search: batch(8),
    };
    assert_eq!(objective.paired_examples().unwrap(), 5);
    let space = net.space();
    let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
    let w = random_rows(1, e, o).to_kind(Kind::Float);
    let same_rows = CellWeights {
        normal: OpWeights::per_example(w.expand([5, e, o], false)).unwrap(),
        reduce: Some(OpWeights::per_example(w.expand([5, e, o], false)).unwrap()),
    };
    let (lt, lv) = objective.per_example_losses(&same_rows).unwrap();
    assert_eq!((lt.size(), lv.size()), (vec![5], vec![5]));
    // Every example under the same matrix: the mean is the batch loss of the train batch.
    let mean = objective
        .train_loss(&CellWeights::dense(w.get(0), Some(w.get(0))))
        .unwrap();
    assert!(
        (lt.mean(Kind::Double).double_value(&[]) - mean.double_value(&[])).abs() < 1e-5,
        "{lt} vs {mean}"
    );
    let wrong = CellWeights::dense(w.get(0), Some(w.get(0)));
    assert!(objective.per_example_losses(&wrong).is_err());
}

/// A CI-sized digits search with the default UNAS (one architecture per example) takes alpha
/// steps, moves the alphas and derives a valid genotype.
#[test]
fn digits_unas_search_runs_per_example() {
    let mut c = SupervisedConfig {
        device: "cpu".into(),
        ..Default::default()
    };
    c.data.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/digits/digits.csv");
    c.network.c = 4;
    c.network.layers = 3;
    c.network.num_nodes = 2;
    c.network.stem_multiplier = 1;
    c.network.in_channels = 1;
    c.network.op_set = OpSet::Darts;
    c.search.epochs = 1;
    c.search.batch_size = 64;
    c.search.strategy = StrategyConfig::Unas(UnasParams {
        optimizer: rl_darts::search::ArchAdamConfig {
            lr: 3e-2,
            ..UnasParams::default().optimizer
        },
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::create_at(&dir.path().join("run")).unwrap();
    save_resolved_config(&c, &run_dir.root).unwrap();
    let mut sink = MemorySink::new();
    let summary = search(SearchRun {
        config: &c,
        run_dir: &run_dir,
        resume: false,
        sink: &mut sink,
        progress: &mut NoProgress,
        stop: &AtomicBool::new(false),
        max_epochs: None,
    })
    .unwrap();
    assert_eq!(summary.epochs_done, 1);
    summary.genotype.validate(2, true).unwrap();
    let steps = sink.last_scalar("strategy/arch_steps").unwrap();
    assert!(steps >= 10.0, "{steps} alpha steps");
    assert!(sink.last_scalar("search/arch_grad_norm").unwrap() > 0.0);
    // The alphas left their N(0, 1e-3^2) start.
    let moved = sink
        .scalar_tags()
        .into_iter()
        .filter(|t| t.starts_with("arch/normal/") && !t.ends_with("/entropy"))
        .filter_map(|t| sink.last_scalar(&t))
        .any(|p| (p - 1.0 / 8.0).abs() > 1e-3);
    assert!(moved, "alphas did not move");
}

/// The weight step's op weights: per example by default (one fresh relaxed sample per
/// example, no graph, rows on the simplex, different rows for different examples), one matrix
/// for the batch with `same_alpha_minibatch = true`.
#[test]
fn the_weight_step_trains_one_relaxed_architecture_per_example() {
    use rl_darts::nas::{AlphaInit, ArchParams};
    use rl_darts::search::Phase;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny_net(&vs);
    let arch = ArchParams::new(Device::Cpu, net.space(), true, AlphaInit::default()).unwrap();
    let (e, o) = (net.space().num_edges() as i64, net.space().num_ops() as i64);
    let mut s = StrategyConfig::from_name("unas")
        .unwrap()
        .build(&arch, 1)
        .unwrap();
    let w = s.op_weights_for_batch(&arch, Phase::Weights, 5).unwrap();
    for cell in [&w.normal, w.reduce.as_ref().unwrap()] {
        let t = cell.weights();
        assert_eq!(t.size(), [5, e, o]);
        assert!(!t.requires_grad());
        let rows = t.sum_dim_intlist(-1, false, Kind::Double);
        assert!(rows.allclose(&rows.ones_like(), 1e-5, 1e-5, false));
        let spread = (t.get(0) - t.get(1)).abs().max().double_value(&[]);
        assert!(spread > 1e-3, "examples 0 and 1 share a sample");
    }
    let mut per_batch = StrategyConfig::Unas(UnasParams {
        same_alpha_minibatch: true,
        ..Default::default()
    })
    .build(&arch, 1)
    .unwrap();
    let w = per_batch
        .op_weights_for_batch(&arch, Phase::Weights, 5)
        .unwrap();
    assert_eq!(w.normal.weights().size(), [e, o]);
}
