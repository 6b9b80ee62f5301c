//! The tiny RL searches the tests share: a CoinRun and a CartPole supernet search of two PPO
//! iterations of 4 envs x 16 steps, on the CPU. Each test sets what it is about (checkpoints,
//! alpha initialisation, health, the PPO schedule) on top.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use rl_darts::envs::VecEnv;
use rl_darts::logging::MetricsSink;
use rl_darts::nas::{MlpDartsConfig, RlDartsConfig};
use rl_darts::search::StrategyConfig;
use rl_darts::train::rl::{
    train, EncoderConfig, MlpDartsSearchConfig, NoProgress, RlDartsSearchConfig, TrainConfig,
    TrainRun, TrainSummary,
};
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::TrainError;

/// The RL-DARTS supernet at its smallest: one stage of 4 channels, one cell of 2 nodes.
pub fn tiny_rl_darts_supernet() -> RlDartsConfig {
    RlDartsConfig {
        channels: vec![4],
        normal_cells_per_stage: 1,
        num_nodes: 2,
        embedding: 16,
        ..RlDartsConfig::default()
    }
}

/// The MLP supernet for vector observations: 2 cells of 3 nodes, 16 wide.
pub fn tiny_mlp_supernet() -> MlpDartsConfig {
    MlpDartsConfig {
        hidden: 16,
        cells: 2,
        num_nodes: 3,
        embedding: 16,
        ..MlpDartsConfig::default()
    }
}

/// Two iterations of 4 envs x 16 steps; 12 weight steps per update (4 minibatches x 3
/// epochs): enough for every alpha schedule to take a step in two iterations.
fn tiny_ppo(c: &mut TrainConfig) {
    c.device = "cpu".into();
    c.ppo.num_envs = 4;
    c.ppo.num_steps = 16;
    c.ppo.num_minibatches = 4;
    c.ppo.update_epochs = 3;
    c.ppo.total_timesteps = 2 * 64;
    c.search.search_envs = Some(2);
}

/// A `strategy` search of [`tiny_rl_darts_supernet`] on CoinRun (one procgen thread).
pub fn tiny_coinrun_search(strategy: StrategyConfig) -> TrainConfig {
    let mut c = TrainConfig::procgen("coinrun");
    c.encoder = EncoderConfig::RlDarts(RlDartsSearchConfig {
        supernet: tiny_rl_darts_supernet(),
    });
    tiny_ppo(&mut c);
    c.procgen.num_threads = 1;
    c.search.strategy = strategy;
    c
}

/// A `strategy` search of [`tiny_mlp_supernet`] on CartPole.
pub fn tiny_cartpole_search(strategy: StrategyConfig) -> TrainConfig {
    let mut c = TrainConfig::classic_control("cartpole");
    c.encoder = EncoderConfig::MlpDarts(MlpDartsSearchConfig {
        supernet: tiny_mlp_supernet(),
    });
    tiny_ppo(&mut c);
    c.search.strategy = strategy;
    c
}

/// The strategy named `name`, with its defaults.
pub fn strategy(name: &str) -> StrategyConfig {
    StrategyConfig::from_name(name).unwrap()
}

/// Trains `config` in `run_dir` as `rl-darts train` does, without a stop request, on `env`
/// (None: the env the config names), and returns what the run returned.
pub fn try_train_in(
    config: &TrainConfig,
    run_dir: &RunDir,
    resume: bool,
    sink: &mut dyn MetricsSink,
    max_iterations: Option<u64>,
    env: Option<Box<dyn VecEnv>>,
) -> Result<TrainSummary, TrainError> {
    train(TrainRun {
        config,
        run_dir,
        resume,
        sink,
        progress: &mut NoProgress,
        stop: &AtomicBool::new(false),
        max_iterations,
        env,
    })
}

/// [`try_train_in`] on the config's env; a failed run fails the test, naming the strategy.
pub fn train_in(
    config: &TrainConfig,
    run_dir: &RunDir,
    resume: bool,
    sink: &mut dyn MetricsSink,
    max_iterations: Option<u64>,
) -> TrainSummary {
    try_train_in(config, run_dir, resume, sink, max_iterations, None)
        .unwrap_or_else(|e| panic!("{}: {e}", config.search.strategy.name()))
}

/// [`train_in`] a new run directory at `dir`, from the start to the end of the budget.
pub fn train_at(config: &TrainConfig, dir: &Path, sink: &mut dyn MetricsSink) -> TrainSummary {
    let run_dir = RunDir::create_at(dir).unwrap();
    train_in(config, &run_dir, false, sink, None)
}
