//! Search health inside a real search loop (a CI-sized DARTS search on the digits): the
//! `health/` tags are logged at the configured period, and RobustDARTS's early stop, given a
//! hair-trigger rule, fires: the search ends before its budget, says why (early_stop.json and
//! the TensorBoard text), and returns the architecture derived at the stopping point.

mod common;

use common::digits::{search_at, tiny_digits_config};
use rl_darts::logging::MemorySink;
use rl_darts::nas::Genotype;
use rl_darts::train::health::{EarlyStop, HealthConfig, EARLY_STOP_FILE};
use rl_darts::train::supervised::SupervisedConfig;

fn tiny_config() -> SupervisedConfig {
    let mut c = tiny_digits_config();
    c.seed = 3;
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
    search_at(config, dir, false, None, sink)
}

#[test]
fn health_is_logged_and_the_early_stop_fires_and_returns_the_earlier_architecture() {
    let mut config = tiny_config();
    config.search.epochs = 6;
    config.search.health = HealthConfig {
        every: Some(3),
        power_iterations: 10,
        // Stop at the first measurement whose eigenvalue is more than 1% above the one before
        // (curvature grows as the supernet's weights train).
        early_stop: common::early_stop_at_first_rise(),
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
