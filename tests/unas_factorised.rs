//! UNAS's factorised cell (`[search.strategy.params] cell = "factorised"`): sampled
//! architectures give every node exactly two incoming ops and never `none`; `log p(z)` is the
//! sum of the four selectors' log-softmax entries per node; REBAR on the factorised
//! parameterisation is unbiased against an enumerated expectation; a 1-epoch digits search
//! (with the latency penalty on) derives a genotype that builds and runs; two PPO iterations
//! on CoinRun move the selectors and derive a fixed encoder that runs; the selectors and
//! sampler survive a checkpoint; the logged architecture is the selectors' expected weights.

mod common;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rl_darts::config::load_config;
use rl_darts::logging::MemorySink;
use rl_darts::nas::{CellSpace, DartsEvalConfig, DartsEvalNet, Genotype, OpKind, OpSet, OpWeights};
use rl_darts::search::unas::estimate_gradient_from;
use rl_darts::search::{
    FactorisedAlphas, LatencySource, StrategyConfig, UnasCell, UnasEstimator, UnasLatencyParams,
    UnasParams,
};
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::SupervisedConfig;
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
    let mut c = common::digits::tiny_digits_config();
    c.search.epochs = 1;
    c.search.batch_size = 64;
    // With the latency penalty too: the expected latency is read off the selectors.
    c.search.strategy = StrategyConfig::Unas(UnasParams {
        cell: UnasCell::Factorised,
        same_alpha_minibatch: true,
        latency: UnasLatencyParams {
            source: LatencySource::Table,
            warmup: 1,
            repeats: 2,
            batch: 4,
            cache_dir: Some(base.path().join("cache")),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut sink = MemorySink::new();
    let summary = common::digits::search_at(&c, &base.path().join("run"), false, None, &mut sink);
    let g: Genotype = Genotype::load(&summary.genotype_path).unwrap();
    assert_eq!(g, summary.genotype);
    for cell in [&g.normal, &g.reduce] {
        assert_eq!(cell.len(), 2);
        assert!(cell
            .iter()
            .all(|genes| genes.len() == 2 && genes.iter().all(|(op, _)| *op != OpKind::None)));
    }
    assert!(!sink.scalars("strategy/f_hard").is_empty());
    let expected = sink.scalars("strategy/latency_expected_ms");
    let hard = sink.scalars("strategy/latency_hard_ms");
    assert!(!expected.is_empty() && hard.len() == expected.len());
    assert!(expected
        .iter()
        .chain(&hard)
        .all(|(_, v)| v.is_finite() && *v > 0.0));
    println!("factorised digits genotype: {g}");
    // The logged architecture is the selectors' expected op weights (the supernet's alphas are
    // unused): `none` never carries weight, and each node's two slots spread a total weight
    // of 2 over its edges (node 1 reads 3 states; softmax rows would sum to 3).
    for cell in ["normal", "reduce"] {
        let mut node_total = [0.0f64; 2];
        let mut edges = 0;
        for tag in sink.scalar_tags() {
            let Some(rest) = tag.strip_prefix(&format!("arch/{cell}/")) else {
                continue;
            };
            // Per-edge scalars are `{edge}/{op}`; the cell's entropy has no op part.
            let Some((edge, op)) = rest.split_once('/') else {
                continue;
            };
            let value = sink.last_scalar(&tag).unwrap();
            if op == "none" {
                assert_eq!(value, 0.0, "{tag}");
            }
            // Edges are named `{from}_to_{node}`, nodes counted from 0 after the inputs.
            let node: usize = edge.rsplit_once("_to_").unwrap().1.parse().unwrap();
            node_total[node] += value;
            edges += 1;
        }
        assert!(edges > 0, "no arch/{cell} scalars");
        for total in node_total {
            assert!((total - 2.0).abs() < 1e-4, "{cell}: {node_total:?}");
        }
    }

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

/// Two tiny PPO iterations on CoinRun with the factorised cell: the selectors move (their
/// checkpointed logits are no longer all zero), the genotype has two genes per node and builds
/// the fixed RL-DARTS encoder, which runs forward.
#[test]
fn coinrun_search_with_the_factorised_cell_derives_a_fixed_encoder() {
    use rl_darts::agents::preprocess_obs;
    use rl_darts::envs::make_vec_env;
    use rl_darts::train::rl::{build_fixed_encoder, EncoderConfig, RlDartsFixedConfig};

    tch::set_num_threads(1);
    let supernet = common::rl::tiny_rl_darts_supernet();
    let mut c = common::rl::tiny_coinrun_search(StrategyConfig::Unas(UnasParams {
        cell: UnasCell::Factorised,
        same_alpha_minibatch: true,
        ..Default::default()
    }));
    c.checkpoint.every = 1;
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let mut sink = MemorySink::new();
    let summary = common::rl::train_in(&c, &dir, false, &mut sink, None);
    assert_eq!(summary.iterations, 2);
    assert!(sink.scalars("strategy/arch_steps").last().unwrap().1 >= 1.0);

    // The selectors' logits are checkpointed with the strategy and moved off zero.
    fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        std::fs::read_dir(dir).ok()?.find_map(|e| {
            let p = e.ok()?.path();
            if p.file_name()? == name {
                Some(p)
            } else if p.is_dir() {
                find(&p, name)
            } else {
                None
            }
        })
    }
    let ckpt = dir.latest_checkpoint().unwrap().unwrap();
    let logits = find(&ckpt, "unas_factorised.safetensors").expect("selector logits saved");
    let moved = Tensor::read_safetensors(&logits)
        .unwrap()
        .iter()
        .map(|(_, t)| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 0.0, "the selectors did not move");

    let path = dir.root.join("genotype.json");
    let g = Genotype::load(&path).unwrap();
    assert!(g
        .normal
        .iter()
        .all(|genes| genes.len() == 2 && genes.iter().all(|(op, _)| *op != OpKind::None)));
    let env = make_vec_env(&c.env, c.ppo.num_envs, c.seed, &c.procgen).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let fixed = EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
        genotype: path,
        supernet,
    });
    let encoder = build_fixed_encoder(vs.root() / "encoder", env.spec(), &fixed).unwrap();
    let features = encoder.features(&preprocess_obs(env.observe().obs), &());
    assert_eq!(features.size(), [4, encoder.feature_dim()]);
    assert!(bool::try_from(features.isfinite().all()).unwrap());
}

/// The selectors' logits and the sampler are checkpointed with the strategy: a strategy
/// loaded from a save derives the same genotype and draws the same next sample.
#[test]
fn factorised_selectors_survive_a_checkpoint() {
    use rl_darts::nas::{AlphaInit, ArchParams};
    use rl_darts::search::{Phase, SearchStrategy, Unas};

    let space = CellSpace::darts().with_nodes(3);
    let arch = ArchParams::new(Device::Cpu, space, true, AlphaInit::default()).unwrap();
    let params = UnasParams {
        cell: UnasCell::Factorised,
        same_alpha_minibatch: true,
        ..Default::default()
    };
    let mut a = Unas::new(&arch, params.clone(), 4).unwrap();
    randomise(a.factorised().unwrap(), 21);
    let _ = a.op_weights(&arch, Phase::Weights).unwrap();
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let mut b = Unas::new(&arch, params, 99).unwrap();
    b.load(dir.path()).unwrap();
    for (x, y) in a
        .factorised()
        .unwrap()
        .params()
        .iter()
        .zip(b.factorised().unwrap().params())
    {
        assert!(x.equal(&y));
    }
    assert_eq!(a.derive(&arch).unwrap(), b.derive(&arch).unwrap());
    let wa = a.op_weights(&arch, Phase::Weights).unwrap();
    let wb = b.op_weights(&arch, Phase::Weights).unwrap();
    assert!(wa.normal.weights().equal(wb.normal.weights()));
    assert!(wa
        .reduce
        .unwrap()
        .weights()
        .equal(wb.reduce.unwrap().weights()));
    // The DARTS cell is untouched: no selectors.
    let darts = Unas::new(&arch, UnasParams::default(), 4).unwrap();
    assert!(darts.factorised().is_none());
}
