//! `rl-darts search --resume` for the transformer search: a search stopped after every epoch
//! and resumed from its checkpoint each time ends bit for bit where the uninterrupted search
//! ends (weights, alphas, genotype, validation metrics, iteration count); so does a random
//! search from scratch stopped after every candidate, and a retraining (`train-arch --resume`)
//! stopped after every epoch.

use std::sync::atomic::AtomicBool;

use rl_darts::logging::MemorySink;
use rl_darts::search::{GdasParams, RandomParams, StrategyConfig};
use rl_darts::train::run_dir::RunDir;
use rl_darts::transformer::net::{Mode, SeqNetConfig};
use rl_darts::transformer::retrain::{train_arch_run, SeqTrainArchRun};
use rl_darts::transformer::search::{
    search_run, SeqConfig, SeqSearchConfig, SeqSearchRun, SeqSearchSummary,
};
use rl_darts::transformer::tasks::{TaskConfig, TaskKind};
use tch::Tensor;

fn tiny(strategy: StrategyConfig) -> SeqConfig {
    let mut config = SeqConfig {
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
            decoder_layers: 1,
            mode: Mode::Reversible,
            ..SeqNetConfig::default()
        },
        search: SeqSearchConfig {
            epochs: 3,
            iterations_per_epoch: 2,
            batch_size: 8,
            strategy,
            ..SeqSearchConfig::default()
        },
        ..SeqConfig::default()
    };
    config.train_arch.iterations_per_epoch = 2;
    config
}

fn run(
    config: &SeqConfig,
    dir: &RunDir,
    resume: bool,
    max_epochs: Option<usize>,
) -> SeqSearchSummary {
    let mut sink = MemorySink::new();
    search_run(SeqSearchRun {
        config,
        run_dir: dir,
        resume,
        sink: &mut sink,
        stop: &AtomicBool::new(false),
        max_epochs,
    })
    .unwrap()
}

/// The tensors of a safetensors file, by name.
fn tensors(path: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn assert_same_files(a: &RunDir, b: &RunDir, files: &[&str]) {
    let (a, b) = (
        a.latest_checkpoint().unwrap().unwrap(),
        b.latest_checkpoint().unwrap().unwrap(),
    );
    assert_eq!(a.file_name(), b.file_name());
    for file in files {
        let (ta, tb) = (tensors(&a.join(file)), tensors(&b.join(file)));
        assert_eq!(ta.len(), tb.len(), "{file}");
        for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
            assert_eq!(na, nb, "{file}");
            assert!(xa.equal(xb), "{file}: {na} differs after resume");
        }
    }
}

/// Stops after every epoch (candidate) and resumes until done; returns the last summary and
/// how many calls it took.
fn stop_and_resume(config: &SeqConfig, dir: &RunDir) -> (SeqSearchSummary, usize) {
    let mut summary = run(config, dir, false, Some(1));
    let mut calls = 1;
    while summary.interrupted {
        assert!(calls < 10, "no progress");
        summary = run(config, dir, true, Some(1));
        calls += 1;
    }
    (summary, calls)
}

#[test]
fn resumed_supernet_search_reproduces_the_uninterrupted_one() {
    // DARTS (Adam state of the alphas) and GDAS (its own Gumbel sampler RNG and temperature).
    for strategy in [
        StrategyConfig::default(),
        StrategyConfig::Gdas(GdasParams::default()),
    ] {
        let name = strategy.name();
        let config = tiny(strategy);
        let base = tempfile::tempdir().unwrap();
        let whole = RunDir::create_at(&base.path().join("whole")).unwrap();
        let expected = run(&config, &whole, false, None);
        assert!(!expected.interrupted);
        let parts = RunDir::create_at(&base.path().join("parts")).unwrap();
        let (got, calls) = stop_and_resume(&config, &parts);
        assert_eq!(calls, 3, "{name}: one call per epoch");
        assert_eq!(got.epochs_done, 3, "{name}");
        assert_eq!(got.iterations, expected.iterations, "{name}");
        assert_eq!(got.genotype, expected.genotype, "{name}");
        assert_eq!(got.val, expected.val, "{name}: validation metrics");
        assert_same_files(
            &whole,
            &parts,
            &[
                "weights.safetensors",
                "alphas.safetensors",
                "sgd.safetensors",
            ],
        );
        // Only the newest `checkpoint_keep` checkpoints stay.
        assert_eq!(parts.checkpoints().unwrap().len(), 2, "{name}");
        // Resuming a finished search changes nothing.
        let again = run(&config, &parts, true, None);
        assert_eq!(again.genotype, expected.genotype);
        assert_eq!(again.iterations, expected.iterations);
    }
}

#[test]
fn resumed_random_search_reproduces_the_uninterrupted_one() {
    let config = tiny(StrategyConfig::Random(RandomParams {
        num_candidates: 3,
        epochs_per_candidate: 1,
        ..RandomParams::default()
    }));
    let base = tempfile::tempdir().unwrap();
    let whole = RunDir::create_at(&base.path().join("whole")).unwrap();
    let expected = run(&config, &whole, false, None);
    let parts = RunDir::create_at(&base.path().join("parts")).unwrap();
    let (got, calls) = stop_and_resume(&config, &parts);
    assert_eq!(calls, 3);
    assert_eq!(got.epochs_done, 3);
    assert_eq!(got.genotype, expected.genotype);
    assert_eq!(got.val, expected.val);
    assert_eq!(got.iterations, expected.iterations);
    let sampler = |d: &RunDir| {
        std::fs::read_to_string(
            d.latest_checkpoint()
                .unwrap()
                .unwrap()
                .join("random_search.json"),
        )
        .unwrap()
    };
    assert_eq!(sampler(&whole), sampler(&parts));
}

#[test]
fn resume_without_a_checkpoint_says_so() {
    let config = tiny(StrategyConfig::default());
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let mut sink = MemorySink::new();
    let err = search_run(SeqSearchRun {
        config: &config,
        run_dir: &dir,
        resume: true,
        sink: &mut sink,
        stop: &AtomicBool::new(false),
        max_epochs: None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("no complete checkpoint"), "{err}");
}

/// `rl-darts train-arch --resume` for a transformer: a retraining stopped after every epoch
/// and resumed each time ends with the weights, Adam state, metrics and step count of the
/// uninterrupted one, bit for bit.
#[test]
fn resumed_retraining_reproduces_the_uninterrupted_one() {
    let mut config = tiny(StrategyConfig::default());
    config.train_arch.epochs = 3;
    config.train_arch.iterations_per_epoch = 3;
    config.train_arch.batch_size = 8;
    let genotype = rl_darts::transformer::genotype::standard(true);
    let retrain = |dir: &RunDir, resume: bool, max_epochs: Option<usize>| {
        let mut sink = MemorySink::new();
        train_arch_run(SeqTrainArchRun {
            config: &config,
            genotype: &genotype,
            run_dir: dir,
            resume,
            sink: &mut sink,
            stop: &AtomicBool::new(false),
            max_epochs,
        })
        .unwrap()
    };
    let base = tempfile::tempdir().unwrap();
    let whole = RunDir::create_at(&base.path().join("whole")).unwrap();
    let expected = retrain(&whole, false, None);
    assert!(!expected.interrupted);
    assert_eq!(expected.epochs_done, 3);
    let parts = RunDir::create_at(&base.path().join("parts")).unwrap();
    let mut got = retrain(&parts, false, Some(1));
    let mut calls = 1;
    while got.interrupted {
        assert!(calls < 10, "no progress");
        got = retrain(&parts, true, Some(1));
        calls += 1;
    }
    assert_eq!(calls, 3, "one call per epoch");
    assert_eq!(got.epochs_done, 3);
    assert_eq!(got.val, expected.val, "validation metrics");
    assert_eq!(got.test, expected.test, "test metrics");
    assert_same_files(&whole, &parts, &["weights.safetensors", "adam.safetensors"]);
    let steps = |d: &RunDir| {
        let loop_json = d.latest_checkpoint().unwrap().unwrap().join("loop.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(loop_json).unwrap()).unwrap();
        (
            v["step"].clone(),
            v["epochs_done"].clone(),
            v["rng"].clone(),
        )
    };
    assert_eq!(steps(&whole), steps(&parts));
    // A Ctrl-C (the stop flag) ends the call after the epoch it is in, with a checkpoint.
    let stopped = RunDir::create_at(&base.path().join("stopped")).unwrap();
    let mut sink = MemorySink::new();
    let t = train_arch_run(SeqTrainArchRun {
        config: &config,
        genotype: &genotype,
        run_dir: &stopped,
        resume: false,
        sink: &mut sink,
        stop: &AtomicBool::new(true),
        max_epochs: None,
    })
    .unwrap();
    assert!(t.interrupted);
    assert_eq!(t.epochs_done, 1);
    assert_eq!(stopped.checkpoints().unwrap().len(), 1);
}
