//! Search health in the RL search (PPO's loop): every strategy logs the `health/` tags at the
//! configured period on a small CartPole MLP supernet, and turning health on leaves the run
//! unchanged (the measurement draws from no random stream and leaves no gradient behind).

mod common;

use common::rl::{tiny_cartpole_search, train_at};
use rl_darts::logging::MemorySink;
use rl_darts::search::{StrategyConfig, STRATEGY_NAMES};
use rl_darts::train::health::HealthConfig;
use rl_darts::train::rl::TrainConfig;

fn small_cartpole(strategy: &str, health_every: u64) -> TrainConfig {
    let mut c = tiny_cartpole_search(common::rl::strategy(strategy));
    c.checkpoint.every = 1;
    c.search.alpha_init.std = 1.0;
    c.search.health = HealthConfig {
        power_iterations: 5,
        ..HealthConfig::every(health_every)
    };
    c
}

fn run(config: &TrainConfig) -> MemorySink {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::new();
    train_at(config, dir.path(), &mut sink);
    sink
}

#[test]
fn every_strategy_logs_search_health_in_rl() {
    tch::set_num_threads(1);
    for name in STRATEGY_NAMES {
        let sink = run(&small_cartpole(name, 1));
        let eigen = sink.scalars("health/eigenvalue");
        // Two PPO iterations, a measurement after each (bilevel strategies take alpha steps,
        // hence have their search rollout, in both).
        assert_eq!(eigen.len(), 2, "{name}: {eigen:?}");
        assert!(
            eigen.iter().all(|(_, v)| v.is_finite()),
            "{name}: {eigen:?}"
        );
        assert_eq!(sink.scalars("health/normal/entropy").len(), 2, "{name}");
        let share = sink.scalars("health/normal/parameter_free_share");
        assert_eq!(share.len(), 2, "{name}");
        assert!(
            share.iter().all(|&(_, s)| (0.0..=1.0).contains(&s)),
            "{name}"
        );
        let loss = &sink.texts("health/loss")[0].1;
        let expected = if ["joint", "snas"].contains(name) {
            "training"
        } else {
            "search"
        };
        assert!(loss.starts_with(expected), "{name}: {loss}");
    }
}

/// The same run with health every iteration and with health off logs the same architecture
/// and the same losses, bit for bit.
#[test]
fn search_health_does_not_change_the_run() {
    tch::set_num_threads(1);
    for name in ["darts", "joint"] {
        let on = run(&small_cartpole(name, 1));
        let off = run(&small_cartpole(name, 0));
        assert!(off.scalars("health/eigenvalue").is_empty());
        let tags: Vec<String> = off
            .scalar_tags()
            .into_iter()
            .filter(|t| t.starts_with("arch/") || t.starts_with("losses/"))
            .collect();
        assert!(tags.len() > 10, "{tags:?}");
        for tag in tags {
            assert_eq!(on.scalars(&tag), off.scalars(&tag), "{name}: {tag}");
        }
    }
}

/// RobustDARTS's early stop ends an RL search (hair-trigger rule: window 1, lag 1, ratio
/// 0.99) before its budget, with the architecture derived one measurement earlier written as
/// the run's genotype.
#[test]
fn the_early_stop_ends_an_rl_search_with_the_earlier_architecture() {
    tch::set_num_threads(1);
    let mut config = small_cartpole("darts", 1);
    config.ppo.total_timesteps = 12 * 64;
    // Large alpha steps, so that the derived architecture changes from one iteration to the
    // next and the returned one is told apart from the last.
    if let StrategyConfig::Darts(p) = &mut config.search.strategy {
        p.optimizer.lr = 0.5;
    }
    config.search.health.early_stop = common::early_stop_at_first_rise();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::new();
    let summary = train_at(&config, dir.path(), &mut sink);
    let eigen = sink.scalars("health/eigenvalue");
    assert!(
        summary.iterations < 12,
        "stopped after {} of 12",
        summary.iterations
    );
    assert_eq!(eigen.len() as u64, summary.iterations);
    let stop: rl_darts::train::health::EarlyStop =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("early_stop.json")).unwrap())
            .unwrap();
    assert_eq!(stop.decided_at_iteration, summary.iterations);
    assert_eq!(stop.architecture_from_iteration + 1, summary.iterations);
    let written = rl_darts::nas::Genotype::load(dir.path().join("genotype.json")).unwrap();
    assert_eq!(written, stop.genotype);
    // The architecture logged at the last iteration is another one: returning it would fail.
    let logged = sink.texts("arch/genotype");
    let last = &logged.last().unwrap().1;
    assert_ne!(
        last,
        &format!("`{}`", stop.genotype.to_darts_string()),
        "the test needs the architecture to change at the stop"
    );
}
