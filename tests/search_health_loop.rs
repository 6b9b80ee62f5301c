//! Search health inside a real search loop (a CI-sized DARTS search on the digits): the
//! `health/` tags are logged at the configured period, and RobustDARTS's early stop, given a
//! hair-trigger rule, fires: the search ends before its budget, says why (early_stop.json and
//! the TensorBoard text), and returns the architecture derived at the stopping point.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use rl_darts::config::save_resolved_config;
use rl_darts::logging::MemorySink;
use rl_darts::nas::{Genotype, OpSet};
use rl_darts::search::early_stop::EarlyStopConfig;
use rl_darts::train::health::{EarlyStop, HealthConfig, EARLY_STOP_FILE};
use rl_darts::train::rl::NoProgress;
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{search, SearchRun, SupervisedConfig};

fn tiny_config() -> SupervisedConfig {
    let mut c = SupervisedConfig {
        device: "cpu".into(),
        seed: 3,
        ..Default::default()
    };
    c.data.path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/digits/digits.csv");
    c.network.c = 4;
    c.network.layers = 3;
    c.network.num_nodes = 2;
    c.network.stem_multiplier = 1;
    c.network.in_channels = 1;
    c.network.op_set = OpSet::Darts;
    c.search.batch_size = 32;
    c.search.strategy = rl_darts::search::StrategyConfig::from_name("darts").unwrap();
    if let rl_darts::search::StrategyConfig::Darts(p) = &mut c.search.strategy {
        p.optimizer.lr = 3e-2;
    }
    c.checkpoint.every = 1;
    c
}

fn run(
    config: &SupervisedConfig,
    dir: &std::path::Path,
    sink: &mut MemorySink,
) -> rl_darts::train::supervised::SearchSummary {
    let run_dir = RunDir::create_at(dir).unwrap();
    save_resolved_config(config, &run_dir.root).unwrap();
    search(SearchRun {
        config,
        run_dir: &run_dir,
        resume: false,
        sink,
        progress: &mut NoProgress,
        stop: &AtomicBool::new(false),
        max_epochs: None,
    })
    .unwrap()
}

#[test]
fn health_is_logged_and_the_early_stop_fires_and_returns_the_earlier_architecture() {
    let mut config = tiny_config();
    config.search.epochs = 6;
    config.search.health = HealthConfig {
        every: Some(3),
        power_iterations: 10,
        // Window 1, lag 1, ratio 0.99: stop at the first measurement whose eigenvalue is more
        // than 1% above the one before (curvature grows as the supernet's weights train).
        early_stop: EarlyStopConfig {
            enabled: true,
            window: 1,
            lag: 1,
            ratio: 0.99,
            start_iteration: 0,
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::new();
    let summary = run(&config, dir.path(), &mut sink);

    let eigen = sink.scalars("health/eigenvalue");
    assert!(eigen.len() >= 2, "{eigen:?}");
    assert!(
        eigen
            .iter()
            .all(|&(step, v)| step % 3 == 0 && v.is_finite()),
        "{eigen:?}"
    );
    for tag in [
        "health/normal/entropy",
        "health/reduce/entropy",
        "health/normal/parameter_free_share",
        "health/reduce/parameter_free_share",
    ] {
        let values = sink.scalars(tag);
        assert_eq!(values.len(), eigen.len(), "{tag}");
    }
    assert!(sink
        .scalars("health/normal/parameter_free_share")
        .iter()
        .all(|&(_, s)| (0.0..=1.0).contains(&s)));

    let stop: EarlyStop = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(EARLY_STOP_FILE)).expect("early_stop.json"),
    )
    .unwrap();
    assert!(
        summary.epochs_done < config.search.epochs,
        "stopped before the budget"
    );
    assert!(!summary.interrupted);
    // The rule's decision: the last eigenvalue grew past 1/0.99 of the one before.
    let (last, before) = (eigen[eigen.len() - 1].1, eigen[eigen.len() - 2].1);
    assert!(before < 0.99 * last, "{before} vs {last}");
    assert_eq!(stop.decided_at_iteration as i64, eigen[eigen.len() - 1].0);
    // Window 1: the architecture returned is the one of the measurement before.
    assert_eq!(
        stop.architecture_from_iteration as i64,
        eigen[eigen.len() - 2].0
    );
    let written = Genotype::load(dir.path().join("genotype.json")).unwrap();
    assert_eq!(written, stop.genotype);
    assert_eq!(summary.genotype, stop.genotype);
    assert!(sink.texts("health/early_stop")[0]
        .1
        .contains("RobustDARTS early stop"));
}
