//! Every search strategy on the reversible transformer supernet: those it serves take a step
//! (alphas move, the derived genotype builds a network), those it refuses say why; DARTS
//! second order by finite differences gives the same hypergradient as on the plain network;
//! the search and retraining commands run end to end on a tiny budget.

use rand::SeedableRng;
use rl_darts::logging::MemorySink;
use rl_darts::nas::{AlphaInit, ArchParams};
use rl_darts::search::{
    DartsOrder, DartsParams, HessianMode, Phase, RandomParams, Sgd, SgdConfig, StrategyConfig,
    WeightStepReport, STRATEGY_NAMES,
};
use rl_darts::transformer::genotype::arch_of;
use rl_darts::transformer::net::{Mode, SeqArch, SeqNet, SeqNetConfig};
use rl_darts::transformer::objective::{check_strategy, loss_for_strategy, SeqObjective};
use rl_darts::transformer::retrain::train_arch;
use rl_darts::transformer::search::{build_supernet, op_costs, search, SeqConfig, SeqSearchConfig};
use rl_darts::transformer::tasks::{SeqTask, TaskConfig, TaskKind};
use rl_darts::transformer::TransformerError;
use tch::{nn, Device, Tensor};

fn tiny(mode: Mode, strategy: StrategyConfig) -> SeqConfig {
    SeqConfig {
        task: TaskConfig {
            kind: TaskKind::Addition,
            digits: 2,
            train_size: 64,
            val_size: 32,
            test_size: 32,
            ..TaskConfig::default()
        },
        network: SeqNetConfig {
            d_model: 12,
            heads: 2,
            encoder_layers: 2,
            decoder_layers: 2,
            mode,
            ..SeqNetConfig::default()
        },
        search: SeqSearchConfig {
            epochs: 1,
            iterations_per_epoch: 2,
            batch_size: 8,
            strategy,
            ..SeqSearchConfig::default()
        },
        ..SeqConfig::default()
    }
}

/// Every strategy name, plus the DARTS and random variants that behave differently here.
fn strategies() -> Vec<StrategyConfig> {
    let mut out: Vec<StrategyConfig> = STRATEGY_NAMES
        .iter()
        .map(|n| StrategyConfig::from_name(n).unwrap())
        .map(|c| match c {
            StrategyConfig::Random(p) => StrategyConfig::Random(RandomParams {
                weight_sharing: true,
                ..p
            }),
            // The sequence objective has no per-example losses (UNAS's default draws one
            // architecture per example); one per batch, as the RL search runs it.
            StrategyConfig::Unas(p) => StrategyConfig::Unas(rl_darts::search::UnasParams {
                same_alpha_minibatch: true,
                ..p
            }),
            c => c,
        })
        .collect();
    for hessian in [HessianMode::FiniteDifference, HessianMode::Exact] {
        out.push(StrategyConfig::Darts(DartsParams {
            order: DartsOrder::Second,
            hessian,
            ..DartsParams::default()
        }));
    }
    out
}

fn needs_second_derivatives(c: &StrategyConfig) -> bool {
    match c {
        StrategyConfig::Idarts(_) => true,
        StrategyConfig::Darts(p) => {
            p.order == DartsOrder::Second && p.hessian == HessianMode::Exact
        }
        _ => false,
    }
}

struct Built {
    vs: nn::VarStore,
    net: SeqNet,
    arch: ArchParams,
    task: SeqTask,
}

fn build(config: &SeqConfig) -> Built {
    tch::manual_seed(11);
    let task = config.task.generate().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, arch) = build_supernet(&vs, config, &task).unwrap();
    Built {
        vs,
        net,
        arch,
        task,
    }
}

/// One search iteration as the loop runs it; returns the alpha-step hypergradient norm.
fn iteration(
    b: &Built,
    strategy: &mut dyn rl_darts::search::SearchStrategy,
    sgd: &mut Sgd,
    it: u64,
) -> Option<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(it);
    let train = b.task.train.sample(8, &mut rng, Device::Cpu);
    let valid = b.task.val.sample(8, &mut rng, Device::Cpu);
    let mut norm = None;
    if strategy.wants_arch_step(it) {
        let mut objective = SeqObjective {
            net: &b.net,
            sgd,
            train: &train,
            search: &valid,
        };
        norm = Some(
            strategy
                .arch_step(&b.arch, &mut objective)
                .unwrap()
                .grad_norm,
        );
    }
    let weights = strategy.op_weights(&b.arch, Phase::Weights).unwrap();
    sgd.zero_grad();
    let loss = loss_for_strategy(&b.net, &train, Some(&weights)).unwrap();
    loss.backward();
    sgd.step();
    let report = WeightStepReport {
        iteration: it,
        loss: loss.double_value(&[]),
        grad_norm_sq: 1.0,
        lr: 0.01,
    };
    strategy.after_weight_step(&b.arch, &report).unwrap();
    norm
}

fn sgd(vs: &nn::VarStore) -> Sgd {
    Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    )
}

#[test]
fn every_supported_strategy_steps_the_reversible_supernet_and_the_others_say_why() {
    for config in strategies() {
        let name = config.name();
        eprintln!("strategy {name}: {config:?}");
        let checked = check_strategy(&config, Mode::Reversible);
        if needs_second_derivatives(&config) {
            let err = checked.expect_err(name);
            assert!(matches!(err, TransformerError::Unsupported(_)));
            assert!(err.to_string().contains("double backward"), "{err}");
            // Checkpointing frees the graph as well.
            let err = check_strategy(&config, Mode::Checkpointed).expect_err(name);
            assert!(err.to_string().contains("checkpointed"), "{err}");
            // The plain network serves them.
            check_strategy(&config, Mode::Plain).unwrap();
            continue;
        }
        checked.unwrap_or_else(|e| panic!("{name}: {e}"));
        let b = build(&tiny(Mode::Reversible, config.clone()));
        let mut strategy = config.build(&b.arch, 0).unwrap();
        strategy
            .set_op_costs(&op_costs(&b.net, b.task.train.src.size()[1]))
            .unwrap();
        strategy.begin_epoch(0, 10);
        let alphas_before = b.arch.alpha_normal().copy();
        let params: Vec<Tensor> = b.net.parameters();
        let weights_before: Vec<Tensor> = params.iter().map(Tensor::copy).collect();
        let mut opt = sgd(&b.vs);
        for it in 0..2 {
            iteration(&b, strategy.as_mut(), &mut opt, it);
        }
        assert!(
            !b.arch.alpha_normal().equal(&alphas_before),
            "{name}: alphas did not move"
        );
        assert!(
            params.iter().zip(&weights_before).any(|(p, q)| !p.equal(q)),
            "{name}: weights did not move"
        );
        let genotype = strategy.derive(&b.arch).unwrap();
        let arch = arch_of(&genotype, true).unwrap();
        assert!(matches!(arch, SeqArch::Derived { .. }));
        let vs = nn::VarStore::new(Device::Cpu);
        SeqNet::new(
            &vs.root(),
            &b.net.config,
            b.task.src_vocab,
            b.task.tgt_vocab,
            &arch,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// DARTS second order with the finite-difference Hessian term: the reversible supernet's
/// hypergradient equals the plain one's (same weights, batches and alphas), in f64.
#[test]
fn darts_second_order_finite_difference_matches_plain() {
    let config = StrategyConfig::Darts(DartsParams {
        order: DartsOrder::Second,
        ..DartsParams::default()
    });
    let mut norms = Vec::new();
    for mode in [Mode::Plain, Mode::Reversible] {
        let mut c = tiny(mode, config.clone());
        c.search.alpha_init = AlphaInit {
            mean: 0.0,
            std: 0.5,
        };
        let mut b = build(&c);
        b.vs.double();
        b.arch.var_store_mut().double();
        let mut strategy = config.build(&b.arch, 0).unwrap();
        let mut opt = sgd(&b.vs);
        norms.push(iteration(&b, strategy.as_mut(), &mut opt, 0).unwrap());
    }
    let rel = (norms[0] - norms[1]).abs() / norms[0];
    assert!(norms[0] > 0.0 && rel < 1e-7, "{norms:?}: {rel:e}");
}

/// `search` derives and writes a genotype, `train_arch` retrains it and reports metrics.
#[test]
fn search_and_train_arch_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny(Mode::Reversible, StrategyConfig::default());
    config.train_arch.epochs = 1;
    config.train_arch.iterations_per_epoch = 3;
    let mut sink = MemorySink::new();
    let summary = search(&config, dir.path(), &mut sink).unwrap();
    assert!(summary.genotype_path.is_file());
    let txt = std::fs::read_to_string(dir.path().join("genotype.txt")).unwrap();
    assert!(
        txt.contains("Genotype(normal=") && txt.contains("cross_attention"),
        "{txt}"
    );
    assert!(dir.path().join("genotype.dot").is_file());
    let recorded = sink.snapshot();
    assert!(recorded
        .scalars
        .iter()
        .any(|s| s.tag == "search/val_exact_match"));
    assert!(recorded
        .scalars
        .iter()
        .any(|s| s.tag.starts_with("arch/reduce/")));
    let out = tempfile::tempdir().unwrap();
    let trained = train_arch(&config, &summary.genotype, out.path(), &mut sink).unwrap();
    assert!((0.0..=1.0).contains(&trained.test.exact_match));
    assert!(trained.parameters > 0);
    assert!(out.path().join("summary.json").is_file());

    // Random search from scratch at a tiny budget picks one of its candidates.
    config.search.strategy = StrategyConfig::Random(RandomParams {
        num_candidates: 2,
        epochs_per_candidate: 1,
        ..RandomParams::default()
    });
    let summary = search(&config, dir.path(), &mut sink).unwrap();
    assert!(summary.iterations > 0);
}

/// Every transformer preset (configs/seq-*.toml) parses with unknown keys refused, and its
/// strategy suits its network mode.
#[test]
fn every_transformer_preset_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut presets: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("seq-") && name.ends_with(".toml")
        })
        .collect();
    presets.sort();
    assert!(presets.len() >= 2, "{presets:?}");
    for path in presets {
        let config: SeqConfig =
            rl_darts::config::load_config(Some(&path), SeqConfig::default(), &[])
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(config.search.checkpoint_keep >= 1, "{}", path.display());
        check_strategy(&config.search.strategy, config.network.mode).unwrap();
    }
}
