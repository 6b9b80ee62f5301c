//! UNAS's factorised cell (`[search.strategy.params] cell = "factorised"`): sampled
//! architectures give every node exactly two incoming ops and never `none`; `log p(z)` is the
//! sum of the four selectors' log-softmax entries per node; REBAR on the factorised
//! parameterisation is unbiased against an enumerated expectation; a 1-epoch digits search
//! derives a genotype that builds and runs.

use std::sync::atomic::AtomicBool;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rl_darts::config::load_config;
use rl_darts::logging::MemorySink;
use rl_darts::nas::{CellSpace, DartsEvalConfig, DartsEvalNet, Genotype, OpKind, OpSet, OpWeights};
use rl_darts::search::unas::estimate_gradient_from;
use rl_darts::search::{FactorisedAlphas, StrategyConfig, UnasCell, UnasEstimator, UnasParams};
use rl_darts::train::rl::NoProgress;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{search, SearchRun, SupervisedConfig};
use tch::{nn, Device, Kind, Tensor};

/// Sets every selector logit to a fixed pseudo-random value in [-1, 1].
fn randomise(f: &FactorisedAlphas, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for t in f.params() {
            let mut t = t;
            t.copy_(&(Tensor::rand_like(&t) * 2.0 - 1.0));
        }
    });
}

/// The op-set columns the op selectors choose from (all but `none`).
fn selectable(space: &CellSpace) -> Vec<usize> {
    (0..space.num_ops())
        .filter(|&o| Some(o) != space.op_set.none_index())
        .collect()
}

/// `log p(choice)` in closed form from the logits: per node, the two input selectors'
/// log-softmax entries plus the two op selectors'.
fn closed_form_log_p(
    f: &FactorisedAlphas,
    space: &CellSpace,
    choice: &[[(usize, usize); 2]],
) -> Tensor {
    let params = f.params();
    let n = space.num_nodes;
    let ops = selectable(space);
    let op_logits = &params[n]; // [num_nodes, 2, K], normal cell
    let mut total = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for (i, slots) in choice.iter().enumerate() {
        let lin = params[i].log_softmax(-1, Kind::Float);
        let lop = op_logits.get(i as i64).log_softmax(-1, Kind::Float);
        for (s, &(from, op)) in slots.iter().enumerate() {
            let k = ops.iter().position(|&o| o == op).unwrap();
            total = total + lin.get(s as i64).get(from as i64) + lop.get(s as i64).get(k as i64);
        }
    }
    total
}

#[test]
fn sampled_architectures_have_two_ops_per_node_and_never_none() {
    let space = CellSpace::darts().with_nodes(4);
    let none = space.op_set.none_index().unwrap();
    let f = FactorisedAlphas::new(&space, true, Device::Cpu).unwrap();
    randomise(&f, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..200 {
        for cell in 0..2 {
            let s = f.sample(&mut rng, cell, 0.4, true).unwrap();
            let hard = s.hard.weights();
            for (i, slots) in s.choice.iter().enumerate() {
                let edges = space.node_edges(i);
                let block = hard.narrow(0, edges.start as i64, edges.len() as i64);
                // Two unit weights per node, none of them on `none`.
                assert_eq!(block.sum(Kind::Float).double_value(&[]), 2.0);
                assert_eq!(
                    block
                        .select(1, none as i64)
                        .abs()
                        .sum(Kind::Float)
                        .double_value(&[]),
                    0.0
                );
                let active: usize = edges.clone().map(|e| s.hard.active(e).unwrap().len()).sum();
                let distinct = if slots[0] == slots[1] { 1 } else { 2 };
                assert_eq!(active, distinct, "{slots:?}");
                for &(from, op) in slots {
                    assert!(from < space.num_inputs + i && op != none);
                    assert!(s.hard.active(edges.start + from).unwrap().contains(&op));
                }
                // The relaxed samples also put mass 2 on each node and none on `none`.
                for relaxed in [&s.relaxed, s.conditional.as_ref().unwrap()] {
                    let block = relaxed.narrow(0, edges.start as i64, edges.len() as i64);
                    assert!((block.sum(Kind::Float).double_value(&[]) - 2.0).abs() < 1e-4);
                    assert!(
                        block
                            .select(1, none as i64)
                            .abs()
                            .sum(Kind::Float)
                            .double_value(&[])
                            < 1e-7
                    );
                }
            }
        }
    }
    // The derived genotype: two genes per node, no `none`, inputs in range.
    let g = f.derive().unwrap();
    for cell in [&g.normal, &g.reduce] {
        assert_eq!(cell.len(), 4);
        for (i, genes) in cell.iter().enumerate() {
            assert_eq!(genes.len(), 2);
            assert!(genes
                .iter()
                .all(|&(op, from)| op != OpKind::None && from < 2 + i));
        }
    }
}

#[test]
fn log_p_is_the_sum_of_the_selectors_log_softmax_entries() {
    let space = CellSpace::rl_darts(OpSet::RlDarts).with_nodes(3);
    let f = FactorisedAlphas::new(&space, false, Device::Cpu).unwrap();
    randomise(&f, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for _ in 0..50 {
        let s = f.sample(&mut rng, 0, 0.4, false).unwrap();
        let closed = closed_form_log_p(&f, &space, &s.choice).double_value(&[]);
        let got = s.log_p.double_value(&[]);
        assert!((got - closed).abs() < 1e-5, "{got} vs {closed}");
    }
}

/// `f(W) = 1.5 + (<W, A> - 0.5)^2 + 0.3 sin(<W, B>)` with fixed pseudo-random `A`, `B`.
fn objective(w: &Tensor) -> Tensor {
    let shape = w.size();
    let n = shape[0] * shape[1];
    let a = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 1.7)
        .sin()
        .view([shape[0], shape[1]]);
    let b = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.9 + 0.3)
        .cos()
        .view([shape[0], shape[1]]);
    ((w * &a).sum(Kind::Float) * 0.5 - 0.5).square() + (w * &b).sum(Kind::Float).sin() * 0.3 + 1.5
}

#[test]
fn rebar_on_the_factorised_cell_is_unbiased() {
    // 1 input, 2 nodes, NAS-Bench-201 ops without `none` (4): node 0 has 1 input, node 1 has
    // 2; 16 * 64 = 1024 architectures.
    let space = CellSpace::nas_bench_201().with_nodes(2);
    let f = FactorisedAlphas::new(&space, false, Device::Cpu).unwrap();
    randomise(&f, 7);
    let params = f.params();
    let k = selectable(&space);

    // Exact gradient of sum_z p(z) f(W(z)) by enumeration.
    let mut expectation = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let mut mass = 0.0;
    for c in 0..(k.len().pow(4) * 4) {
        let mut r = c;
        let mut take = |m: usize| {
            let d = r % m;
            r /= m;
            d
        };
        let choice = [
            [(0, k[take(k.len())]), (0, k[take(k.len())])],
            [(take(2), k[take(k.len())]), (take(2), k[take(k.len())])],
        ];
        let p = closed_form_log_p(&f, &space, &choice).exp();
        mass += p.double_value(&[]);
        let w = f.hard_weights(&choice).unwrap();
        expectation += p * objective(w.weights());
    }
    assert!((mass - 1.0).abs() < 1e-4, "probabilities sum to {mass}");
    let exact: Vec<f64> = Tensor::run_backward(&[expectation], &params, false, false)
        .iter()
        .flat_map(|g| Vec::<f64>::try_from(&g.to_kind(Kind::Double).flatten(0, -1)).unwrap())
        .collect();
    assert!(exact.iter().any(|g| g.abs() > 0.02), "{exact:?}");

    let n = 6000;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut sum = vec![0.0f64; exact.len()];
    let mut sum_sq = vec![0.0f64; exact.len()];
    for _ in 0..n {
        let s = f.sample(&mut rng, 0, 0.4, true).unwrap();
        let (g, _) = estimate_gradient_from(
            &params,
            s.log_p,
            vec![s.hard],
            vec![s.relaxed],
            vec![s.conditional],
            UnasEstimator::Rebar,
            |cells: Vec<OpWeights>| Ok(objective(cells[0].weights())),
        )
        .unwrap();
        let g: Vec<f64> = g
            .iter()
            .flat_map(|g| Vec::<f64>::try_from(&g.to_kind(Kind::Double).flatten(0, -1)).unwrap())
            .collect();
        for (j, x) in g.iter().enumerate() {
            sum[j] += x;
            sum_sq[j] += x * x;
        }
    }
    let nf = n as f64;
    let mut worst = (0.0f64, 0.0f64);
    for (j, e) in exact.iter().enumerate() {
        let mean = sum[j] / nf;
        let var = (sum_sq[j] / nf - mean * mean) * nf / (nf - 1.0);
        let se = (var / nf).sqrt().max(1e-6);
        let z = (mean - e) / se;
        worst = (worst.0.max(z.abs()), worst.1.max(se));
        // A false alarm per coordinate has probability ~7e-6 under the CLT.
        assert!(
            z.abs() < 4.5,
            "coordinate {j}: mean {mean} exact {e} ({z:.2} standard errors)"
        );
    }
    let largest = exact.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    println!(
        "factorised REBAR: {} coordinates, {n} estimates, largest |exact| {largest:.4}, \
         largest standard error {:.4}, largest |z| {:.2}",
        exact.len(),
        worst.1,
        worst.0
    );
}

#[test]
fn digits_search_with_the_factorised_cell_derives_a_genotype_that_runs() {
    let base = tempfile::tempdir().unwrap();
    let mut c = SupervisedConfig {
        device: "cpu".into(),
        ..Default::default()
    };
    c.data.path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/digits/digits.csv");
    c.network.c = 4;
    c.network.layers = 3;
    c.network.num_nodes = 2;
    c.network.stem_multiplier = 1;
    c.network.in_channels = 1;
    c.search.epochs = 1;
    c.search.batch_size = 64;
    c.search.strategy = StrategyConfig::Unas(UnasParams {
        cell: UnasCell::Factorised,
        ..Default::default()
    });
    let run_dir = RunDir::create_at(&base.path().join("run")).unwrap();
    let mut sink = MemorySink::new();
    let stop = AtomicBool::new(false);
    let summary = search(SearchRun {
        config: &c,
        run_dir: &run_dir,
        resume: false,
        sink: &mut sink,
        progress: &mut NoProgress,
        stop: &stop,
        max_epochs: None,
    })
    .unwrap();
    let g: Genotype = Genotype::load(&summary.genotype_path).unwrap();
    assert_eq!(g, summary.genotype);
    for cell in [&g.normal, &g.reduce] {
        assert_eq!(cell.len(), 2);
        assert!(cell
            .iter()
            .all(|genes| genes.len() == 2 && genes.iter().all(|(op, _)| *op != OpKind::None)));
    }
    assert!(!sink.scalars("strategy/f_hard").is_empty());
    println!("factorised digits genotype: {g}");

    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsEvalNet::new(
        vs.root() / "net",
        &DartsEvalConfig {
            c: 4,
            layers: 3,
            num_classes: 10,
            auxiliary: false,
            drop_path_prob: 0.0,
            stem_multiplier: 1,
            in_channels: 1,
            image_size: 8,
        },
        &g,
    )
    .unwrap();
    let (logits, _) = tch::no_grad(|| {
        net.forward_t(
            &Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu)),
            false,
        )
    });
    assert_eq!(logits.size(), [4, 10]);
    assert!(bool::try_from(logits.isfinite().all()).unwrap());
}

#[test]
fn the_digits_factorised_preset_selects_the_factorised_cell() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("configs/digits-unas-factorised.toml");
    let c: SupervisedConfig = load_config(Some(&path), SupervisedConfig::default(), &[]).unwrap();
    let StrategyConfig::Unas(p) = &c.search.strategy else {
        panic!("{:?}", c.search.strategy)
    };
    assert_eq!(p.cell, UnasCell::Factorised);
    assert_eq!(UnasParams::default().cell, UnasCell::Darts);
    let bad = "[strategy]\nkind = \"unas\"\n[strategy.params]\ncell = \"factorized\"\n";
    #[derive(serde::Deserialize)]
    struct Search {
        #[allow(dead_code)]
        strategy: StrategyConfig,
    }
    assert!(toml::from_str::<Search>(bad).is_err());
}
