//! End to end on scikit-learn's digits (written by `make setup`): a CI-sized DARTS search
//! changes the alphas, derives a valid genotype, writes it, and a resumed search ends with
//! exactly the alphas of an uninterrupted one.

mod common;

use std::path::PathBuf;

use common::digits::{search_at, tiny_digits_config};
use rl_darts::logging::MemorySink;
use rl_darts::nas::Genotype;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::SupervisedConfig;

fn tiny_config() -> SupervisedConfig {
    let mut c = tiny_digits_config();
    c.search.epochs = 2;
    c.search.strategy = rl_darts::search::StrategyConfig::from_name("darts").unwrap();
    if let rl_darts::search::StrategyConfig::Darts(p) = &mut c.search.strategy {
        p.optimizer.lr = 3e-2; // visible alpha movement in two short epochs
    }
    c.checkpoint.every = 1;
    c
}

fn run(
    config: &SupervisedConfig,
    dir: &std::path::Path,
    resume: bool,
    max_epochs: Option<usize>,
    sink: &mut MemorySink,
) -> rl_darts::train::supervised::SearchSummary {
    search_at(config, dir, resume, max_epochs, sink)
}

#[test]
fn digits_search_derives_a_genotype_and_resumes_exactly() {
    let config = tiny_config();
    let base = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::new();
    let straight = run(&config, &base.path().join("a"), false, None, &mut sink);
    assert_eq!(straight.epochs_done, 2);
    let g = Genotype::load(&straight.genotype_path).unwrap();
    g.validate(2, true).unwrap();
    assert_eq!(g, straight.genotype);
    assert!(
        straight.val_accuracy > 0.2,
        "supernet val accuracy {}",
        straight.val_accuracy
    );
    // Logged: losses, accuracies, per-edge alpha probabilities, heatmaps, genotype text.
    assert_eq!(sink.scalars("search/val_accuracy").len(), 2);
    assert!(sink
        .scalar_tags()
        .iter()
        .any(|t| t.starts_with("arch/reduce/c_k-2_to_0/")));
    assert_eq!(sink.snapshot().images.len(), 4);
    assert_eq!(sink.texts("genotype").len(), 2);
    assert!(sink.snapshot().rejected.is_empty());

    // One epoch, then resume for the second: same alphas, bit for bit.
    let mut sink_b = MemorySink::new();
    let b = base.path().join("b");
    run(&config, &b, false, Some(1), &mut sink_b);
    let resumed = run(&config, &b, true, None, &mut sink_b);
    assert_eq!(resumed.epochs_done, 2);
    // safetensors files come back in no particular order: sort by name.
    let alphas = |dir: PathBuf| {
        let mut named =
            tch::Tensor::read_safetensors(dir.join("checkpoints/iter_00000002/alphas.safetensors"))
                .unwrap();
        named.sort_by(|x, y| x.0.cmp(&y.0));
        named
    };
    let (a, r) = (alphas(base.path().join("a")), alphas(b));
    for ((na, ta), (nr, tr)) in a.iter().zip(&r) {
        assert_eq!(na, nr);
        assert!(ta.equal(tr), "{na} differs after resume");
    }
    // Alphas moved away from their N(0, 1e-3) initialisation.
    assert!(a[0].1.abs().max().double_value(&[]) > 1e-2);
}

/// `[checkpoint]` is the train/ wing's one `CheckpointConfig`: in the search `every` counts
/// epochs and `every_minutes` adds a save at the end of any epoch ending that long after the
/// last save (a tiny value: after every epoch); the end of the run always saves.
#[test]
fn search_checkpoints_follow_every_and_every_minutes() {
    let base = tempfile::tempdir().unwrap();
    let saved = |every: u64, every_minutes: f64, name: &str| -> Vec<u64> {
        let mut config = tiny_config();
        config.search.epochs = 3;
        config.search.batch_size = 64;
        config.checkpoint.every = every;
        config.checkpoint.every_minutes = every_minutes;
        config.checkpoint.keep = 10;
        let dir = base.path().join(name);
        run(&config, &dir, false, None, &mut MemorySink::new());
        let run_dir = RunDir::open(&dir).unwrap();
        run_dir
            .checkpoints()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(saved(100, 0.0, "end_only"), [3]);
    assert_eq!(saved(2, 0.0, "every_2"), [2, 3]);
    assert_eq!(saved(100, 1e-9, "by_minutes"), [1, 2, 3]);
}
