//! Retraining a derived RL-DARTS cell (`[encoder] kind = "rl_darts_fixed"`): a genotype
//! derived from alphas builds the discrete encoder in the supernet's layout, PPO trains it,
//! its checkpoint evaluates, and a missing or mismatched genotype is a clear error.

mod common;

use rl_darts::logging::MemorySink;
use rl_darts::nas::{AlphaInit, ArchParams, DeriveRule, RlDartsConfig};
use rl_darts::train::rl::{evaluate, EncoderConfig, EvalOptions, RlDartsFixedConfig, TrainConfig};
use rl_darts::train::run_dir::RunDir;
use tch::Device;

/// A small supernet layout: one stage of 4 channels, one normal cell, 2 nodes.
fn small_supernet() -> RlDartsConfig {
    common::rl::tiny_rl_darts_supernet()
}

fn tiny_coinrun(encoder: EncoderConfig) -> TrainConfig {
    let mut c = TrainConfig::procgen("coinrun");
    c.device = "cpu".into();
    c.encoder = encoder;
    c.ppo.num_envs = 2;
    c.ppo.num_steps = 16;
    c.ppo.num_minibatches = 2;
    c.ppo.update_epochs = 1;
    c.ppo.total_timesteps = 2 * 32;
    c.procgen.num_threads = 1;
    c.checkpoint.every = 1;
    c
}

#[test]
fn derived_genotype_retrains_from_scratch_and_evaluates() {
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let supernet = small_supernet();
    let arch = ArchParams::new(
        Device::Cpu,
        supernet.space(),
        true,
        AlphaInit {
            mean: 0.0,
            std: 1.0,
        },
    )
    .unwrap();
    let genotype = arch.derive_genotype(DeriveRule::RlDarts).unwrap();
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("genotype.json");
    genotype.save_json(&path).unwrap();

    let config = tiny_coinrun(EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
        genotype: path,
        supernet,
    }));
    assert_eq!(config.encoder.name(), "rl_darts_fixed");
    let dir = RunDir::create_at(&base.path().join("retrain")).unwrap();
    rl_darts::config::save_resolved_config(&config, &dir.root).unwrap();
    let summary =
        common::rl::try_train_in(&config, &dir, false, &mut MemorySink::new(), None, None).unwrap();
    assert_eq!(summary.iterations, 2);
    // A discrete network has no alphas: no genotype is written into the retrain run.
    assert!(!dir.root.join("genotype.json").exists());

    let result = evaluate(
        &dir.root,
        &EvalOptions {
            env: None,
            num_levels: 0,
            start_level: 0,
            episodes: 2,
            num_envs: 2,
            greedy: false,
            seed: 1,
            video: None,
            device: "cpu".into(),
        },
    )
    .unwrap();
    assert_eq!(result.episodes, 2);
    assert!(result.mean_return.is_finite());
}

#[test]
fn missing_or_mismatched_genotypes_are_clear_errors() {
    let base = tempfile::tempdir().unwrap();
    let run = |encoder: EncoderConfig| {
        let config = tiny_coinrun(encoder);
        let dir = RunDir::create_at(&base.path().join("run")).unwrap();
        common::rl::try_train_in(&config, &dir, false, &mut MemorySink::new(), Some(1), None)
            .unwrap_err()
            .to_string()
    };
    let err = run(EncoderConfig::RlDartsFixed(RlDartsFixedConfig::default()));
    assert!(err.contains("encoder.params.genotype is required"), "{err}");

    let err = run(EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
        genotype: base.path().join("nothing.json"),
        supernet: small_supernet(),
    }));
    assert!(err.contains("nothing.json"), "{err}");

    // A genotype without a reduce cell cannot fill the "standard" layout's reduction cells.
    let arch = ArchParams::new(
        Device::Cpu,
        small_supernet().space(),
        false,
        AlphaInit::default(),
    )
    .unwrap();
    let path = base.path().join("normal_only.json");
    arch.derive_genotype(DeriveRule::RlDarts)
        .unwrap()
        .save_json(&path)
        .unwrap();
    let err = run(EncoderConfig::RlDartsFixed(RlDartsFixedConfig {
        genotype: path,
        supernet: small_supernet(),
    }));
    assert!(
        err.contains("does not fit") && err.contains("reduce"),
        "{err}"
    );
}
