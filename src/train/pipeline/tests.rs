use std::path::PathBuf;

use super::comparison::thousands;
use super::random::best_candidate;
use super::*;
use crate::envs::procgen::DistributionMode;
use crate::train::rl::TrainConfig;
#[test]
fn the_best_random_candidate_is_the_highest_score_and_the_earliest_on_ties() {
    let c = |index, r: Option<f64>| RandomCandidate {
        index,
        genotype: String::new(),
        global_step: 0,
        train_secs: 0.0,
        mean_return_last100: r,
    };
    assert_eq!(best_candidate(&[c(0, None), c(1, Some(-1.0))]), 1);
    assert_eq!(
        best_candidate(&[c(0, Some(2.0)), c(1, Some(5.0)), c(2, Some(5.0))]),
        1
    );
    assert_eq!(best_candidate(&[c(0, None), c(1, None)]), 0);
}

#[test]
fn phases_parse_and_order() {
    assert_eq!(
        "retrain".parse::<PipelinePhase>().unwrap(),
        PipelinePhase::Retrain
    );
    assert!("derive"
        .parse::<PipelinePhase>()
        .unwrap_err()
        .contains("search, retrain, eval"));
    assert!(
        PipelinePhase::Search < PipelinePhase::Retrain
            && PipelinePhase::Retrain < PipelinePhase::Eval
    );
}

#[test]
fn pipeline_config_rejects_unknown_keys_and_checks_budgets() {
    let config = pipeline_defaults("coinrun");
    let lenient = crate::config::check_rejects_unknown_keys(&config.pipeline).unwrap();
    assert!(lenient.is_empty(), "{lenient:?}");
    validate(&config).unwrap();
    // One tree, split: `[pipeline]` keys and the PPO run's keys each reject unknown ones, and
    // the error names the full key.
    let err = PipelineRunConfig::load(None, config.clone(), &["pipeline.search_steps=1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipeline.search_steps") && err.contains("search_timesteps"),
        "{err}"
    );
    let err = PipelineRunConfig::load(None, config.clone(), &["ppo.num_env=1".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ppo.num_env") && err.contains("num_envs"),
        "{err}"
    );
    let set = PipelineRunConfig::load(
        None,
        config.clone(),
        &[
            "pipeline.retrain_timesteps=4096".into(),
            "ppo.num_envs=4".into(),
        ],
    )
    .unwrap();
    assert_eq!(
        (set.pipeline.retrain_timesteps, set.train.ppo.num_envs),
        (4096, 4)
    );
    let mut small = config.clone();
    small.pipeline.search_timesteps = 10;
    assert!(validate(&small)
        .unwrap_err()
        .to_string()
        .contains("pipeline.search_timesteps"));
    let mut cartpole = config.clone();
    cartpole.train = TrainConfig::classic_control("cartpole");
    cartpole.train.encoder = config.train.encoder.clone();
    assert!(validate(&cartpole)
        .unwrap_err()
        .to_string()
        .contains("Procgen"));
    let mut both = config.clone();
    both.pipeline.skip_baseline = true;
    both.pipeline.baseline_from = Some("runs/x".into());
    assert!(validate(&both)
        .unwrap_err()
        .to_string()
        .contains("exclude each other"));
    let mut impala = config.clone();
    impala.train = TrainConfig::procgen("coinrun");
    assert!(validate(&impala)
        .unwrap_err()
        .to_string()
        .contains("--encoder impala"));
}

#[test]
fn markdown_table_has_a_row_per_model() {
    let level = |m: f64| LevelResult {
        levels: Levels {
            num_levels: 200,
            start_level: 0,
        },
        episodes: 10,
        mean_return: m,
        std_return: 1.0,
        mean_normalized_return: Some((m - 5.0) / 5.0),
        std_normalized_return: Some(0.2),
    };
    let row = |name: &str| ComparisonRow {
        name: name.into(),
        encoder: name.into(),
        run_dir: PathBuf::from(name),
        params: 1_234_567,
        global_step: 25_000_000,
        steps_per_sec: 480.4,
        train_levels: level(9.0),
        test_levels: level(7.5),
    };
    let c = Comparison {
        env: "coinrun".into(),
        seed: 1,
        distribution_mode: DistributionMode::Easy,
        search_timesteps: 25_000_000,
        retrain_timesteps: 25_000_000,
        episodes: 10,
        greedy: false,
        train_levels: Levels {
            num_levels: 200,
            start_level: 0,
        },
        test_levels: Levels {
            num_levels: 0,
            start_level: 200,
        },
        rows: vec![row("rl_darts"), row("impala")],
        search: Some(SearchInfo {
            params: 42,
            global_step: 25_000_000,
            steps_per_sec: 160.0,
            genotype: "G".into(),
            random_candidates: None,
        }),
        search_overhead: Some(3.0),
    };
    let md = c.to_markdown();
    assert!(md.contains("| RL-DARTS cell, retrained | 1,234,567 | 25,000,000 | 480 | 9.00 ± 1.00 | 0.800 ± 0.200 | 7.50 ± 1.00 | 0.500 ± 0.200 |"), "{md}");
    assert!(md.contains("| IMPALA-CNN baseline |"), "{md}");
    assert!(
        md.contains("levels 0..199") && md.contains("num_levels = 0"),
        "{md}"
    );
    assert!(md.contains("3.00x the baseline's time per step"), "{md}");
    assert!(md.contains("Search: supernet with 42 params"), "{md}");
    // The random-search baseline names itself.
    let mut random = c.clone();
    random.search.as_mut().unwrap().random_candidates = Some(8);
    let md = random.to_markdown();
    assert!(
        md.contains("| random-search cell, retrained | 1,234,567 |"),
        "{md}"
    );
    assert!(
        md.contains("Search: random search, 8 cells trained from scratch (the best has 42 params)"),
        "{md}"
    );
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
}
