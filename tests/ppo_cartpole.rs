//! PPO learns CartPole-v1: the agent stack end to end (MLP encoder, actor-critic, rollout,
//! GAE, reward normalisation, the update) on the gym-rs vec-env, CPU, one thread.

use rl_darts::agents::{ActorCritic, Mlp, MlpConfig, PpoConfig, PpoTrainer};
use rl_darts::envs::gym::{GymEnvKind, GymVecEnv};
use rl_darts::envs::VecEnv;
use tch::{nn, Device};

/// Trains with `config` until the mean return of the last `window` finished episodes reaches
/// `target` or `budget` env steps pass; returns the env steps used when it did.
fn steps_to_solve(
    config: &PpoConfig,
    seed: u64,
    budget: u64,
    window: usize,
    target: f64,
) -> Option<u64> {
    tch::manual_seed(seed as i64);
    let mut env =
        GymVecEnv::new(GymEnvKind::CartPole, config.num_envs, seed).expect("cartpole builds");
    let spec = env.spec().clone();
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = Mlp::new(
        vs.root() / "encoder",
        &spec.obs_shape,
        &MlpConfig::default(),
    )
    .expect("mlp");
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(encoder), spec.num_actions);
    let mut trainer = PpoTrainer::new(vs, policy, &spec, config.clone(), seed).expect("trainer");
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    while trainer.global_step() < budget && !trainer.is_done() {
        let stats = trainer
            .iteration(
                &mut env,
                &mut rl_darts::agents::FixedArch,
                &mut rl_darts::agents::NoHeartbeat,
            )
            .expect("iteration");
        for ep in &stats.episodes {
            recent.push_back(ep.episode_return);
            if recent.len() > window {
                recent.pop_front();
            }
            if recent.len() == window && recent.iter().sum::<f64>() / window as f64 >= target {
                return Some(stats.global_step);
            }
        }
        assert!(stats.ppo.value_loss.is_finite() && stats.ppo.approx_kl.is_finite());
    }
    None
}

#[test]
fn ppo_solves_cartpole_within_100k_steps() {
    tch::set_num_threads(1);
    let config = PpoConfig::cartpole();
    let steps = steps_to_solve(&config, 1, 100_000, 20, 475.0);
    eprintln!("CartPole: 20-episode mean return >= 475 after {steps:?} env steps");
    assert!(
        steps.is_some(),
        "PPO did not reach a 20-episode mean return of 475 within 100k steps"
    );
}

/// The same run with the MLP's matmuls in bf16 (`agents::compute`; the heads, softmax, the
/// losses, GAE, the normaliser and Adam stay fp32): mixed precision must not cost learning.
#[test]
fn ppo_solves_cartpole_within_100k_steps_in_bf16() {
    use rl_darts::agents::compute::{self, Compute, Layout, Precision};
    tch::set_num_threads(1);
    let _bf16 = compute::enter(Compute::new(Precision::Bf16, Layout::Nchw));
    let config = PpoConfig::cartpole();
    let steps = steps_to_solve(&config, 1, 100_000, 20, 475.0);
    eprintln!("CartPole in bf16: 20-episode mean return >= 475 after {steps:?} env steps");
    assert!(
        steps.is_some(),
        "bf16 PPO did not reach a 20-episode mean return of 475 within 100k steps"
    );
}

#[test]
#[ignore = "tuning harness: RL_DARTS_TUNE_SEEDS=1,2,3 cargo test --test ppo_cartpole -- --ignored --nocapture"]
fn tune() {
    tch::set_num_threads(1);
    let seeds: Vec<u64> = std::env::var("RL_DARTS_TUNE_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|s| s.trim().parse().expect("seed"))
        .collect();
    let mut config = PpoConfig::cartpole();
    if let Ok(text) = std::env::var("RL_DARTS_TUNE_PPO") {
        // TOML overrides, e.g. "learning_rate = 1e-3\nnorm_reward = true".
        let base = toml::to_string(&config).unwrap();
        let mut table: toml::Table = toml::from_str(&base).unwrap();
        let extra: toml::Table = toml::from_str(&text).unwrap();
        table.extend(extra);
        config = table.try_into().unwrap();
    }
    for seed in seeds {
        let start = std::time::Instant::now();
        let steps = steps_to_solve(&config, seed, 200_000, 20, 475.0);
        eprintln!(
            "seed {seed}: {steps:?} ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
    }
}
