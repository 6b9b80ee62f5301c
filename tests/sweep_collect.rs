//! `collect` over pipeline trials, on run directories whose comparison.json is written with
//! the pipeline's own `Comparison` type (so a change of its format breaks this test, not a
//! user's sweep): the per-game table, the baseline trained once per (game, seed), the IQM
//! across games, and a missing trial that withholds its method's IQM instead of shrinking it.

use std::fs;
use std::path::Path;

use rl_darts::envs::procgen::DistributionMode;
use rl_darts::sweep::collect::{collect, CollectOptions};
use rl_darts::sweep::plan::Plan;
use rl_darts::sweep::spec::SweepSpec;
use rl_darts::sweep::stats::{iqm, stratified_bootstrap};
use rl_darts::train::pipeline::{Comparison, ComparisonRow, LevelResult, Levels};

fn level(mean_return: f64, normalized: f64) -> LevelResult {
    LevelResult {
        levels: Levels {
            num_levels: 200,
            start_level: 0,
        },
        episodes: 8,
        mean_return,
        std_return: 1.0,
        mean_normalized_return: Some(normalized),
        std_normalized_return: Some(0.1),
    }
}

fn row(name: &str, dir: &Path, train: f64, test: f64) -> ComparisonRow {
    ComparisonRow {
        name: name.into(),
        encoder: name.into(),
        run_dir: dir.join(if name == "impala" {
            "baseline"
        } else {
            "retrain"
        }),
        params: 1000,
        global_step: 1024,
        steps_per_sec: 100.0,
        // Raw return = 10 x normalised, so the two columns can be told apart.
        train_levels: level(10.0 * train, train),
        test_levels: level(10.0 * test, test),
    }
}

/// The score a (game, method, seed) gets in this fixture.
fn score(env: &str, method: &str, seed: u64) -> f64 {
    let g = if env == "coinrun" { 0.0 } else { 0.3 };
    let m = match method {
        "joint" => 0.1,
        "random" => 0.2,
        _ => 0.4, // impala
    };
    g + m + 0.01 * seed as f64
}

#[test]
fn pipeline_trials_collect_into_one_table() {
    let tmp = tempfile::tempdir().unwrap();
    let spec: SweepSpec = toml::from_str(
        r#"
        envs = ["coinrun", "starpilot"]
        seeds = [1, 2, 3]
        strategies = ["joint", "random"]
        quick = true
        "#,
    )
    .unwrap();
    let plan = Plan::build(&spec, tmp.path()).unwrap();
    assert_eq!(plan.trials.len(), 12);
    for t in &plan.trials {
        // The last trial (starpilot, random, seed 3) never ran.
        if t.index == 11 {
            continue;
        }
        let s = t.strategy.as_deref().unwrap();
        let mut rows = vec![row(
            "rl_darts",
            &t.run_dir,
            score(&t.env, s, t.seed),
            score(&t.env, s, t.seed) / 2.0,
        )];
        if t.trains_baseline {
            rows.push(row(
                "impala",
                &t.run_dir,
                score(&t.env, "impala", t.seed),
                score(&t.env, "impala", t.seed) / 2.0,
            ));
        }
        let c = Comparison {
            env: t.env.clone(),
            seed: t.seed,
            distribution_mode: DistributionMode::Easy,
            search_timesteps: 1024,
            retrain_timesteps: 1024,
            episodes: 8,
            greedy: false,
            train_levels: Levels {
                num_levels: 200,
                start_level: 0,
            },
            test_levels: Levels {
                num_levels: 0,
                start_level: 0,
            },
            rows,
            search: None,
            search_overhead: None,
        };
        fs::create_dir_all(&t.run_dir).unwrap();
        fs::write(
            t.run_dir.join("comparison.json"),
            serde_json::to_string(&c).unwrap(),
        )
        .unwrap();
    }
    let plan_path = tmp.path().join("plan.json");
    let out = tmp.path().join("out");
    let c = collect(
        &plan,
        &plan_path,
        &CollectOptions {
            out_dir: &out,
            bootstrap_reps: 500,
            seed: 0,
            plots: false,
        },
    )
    .unwrap();
    assert_eq!((c.complete, c.trials), (11, 12));
    assert_eq!(c.missing.len(), 1);
    assert_eq!(c.missing[0].name, "starpilot__random__3");
    assert_eq!(c.missing[0].state, "never run");

    let cell = |env: &str, method: &str| {
        c.rows
            .iter()
            .find(|r| r.env == env && r.method == method)
            .unwrap()
    };
    // joint on coinrun: 0.11, 0.12, 0.13 -> mean 0.12, sample std 0.01.
    let j = cell("coinrun", "joint");
    assert_eq!((j.runs, j.expected), (3, 3));
    let (m, s) = j.metrics["train_normalized"];
    assert!(
        (m - 0.12).abs() < 1e-12 && (s - 0.01).abs() < 1e-12,
        "{m} {s}"
    );
    let (m, _) = j.metrics["test_return"];
    assert!(
        (m - 0.6).abs() < 1e-12,
        "held-out raw return: 10 x 0.12 / 2"
    );
    // The baseline came from the joint trials only: 3 per game, not 6.
    let b = cell("starpilot", "impala");
    assert_eq!((b.runs, b.expected), (3, 3));
    assert_eq!(cell("starpilot", "random").runs, 2);

    // IQM across games of joint's held-out normalised scores, against stats computed here.
    let joint_test: Vec<Vec<f64>> = ["coinrun", "starpilot"]
        .iter()
        .map(|e| (1..=3).map(|s| score(e, "joint", s) / 2.0).collect())
        .collect();
    let want = stratified_bootstrap(&joint_test, iqm, 500, 0.95, 0).unwrap();
    let agg = |method: &str, metric: &str| {
        c.aggregates
            .iter()
            .find(|a| a.method == method && a.metric == metric)
            .unwrap()
    };
    let got = agg("joint", "test_normalized");
    assert_eq!(got.iqm, Some(want));
    assert_eq!((got.games, got.runs), (2, 6));
    // random misses a run: no IQM over what happens to be there.
    let r = agg("random", "test_normalized");
    assert_eq!((r.iqm, r.missing), (None, 1));
    let md = fs::read_to_string(out.join("collected.md")).unwrap();
    assert!(md.contains("not computed: 1 planned runs missing"), "{md}");
    assert!(md.contains("starpilot__random__3: never run"), "{md}");
    assert!(
        md.contains("| starpilot | random | 2/3 (incomplete) |"),
        "{md}"
    );
}
