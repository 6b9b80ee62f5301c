//! `rl-darts train` and `rl-darts eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::logging::{MetricsSink, MultiSink, StdoutSink, TensorBoardSink, Verbosity};
use rl_darts::train::rl::{evaluate, train, EvalOptions, Progress, TrainConfig, TrainRun};
use rl_darts::train::run_dir::RunDir;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Environment: a Procgen game (coinrun, starpilot, ...) or cartpole / mountaincar.
    #[arg(long)]
    env: Option<String>,
    /// Encoder: impala (Procgen baseline), mlp (vector observations), rl_darts (supernet
    /// searched jointly with PPO) or rl_darts_fixed (a derived genotype retrained from scratch;
    /// give it with --set encoder.params.genotype="runs/<search run>/genotype.json").
    #[arg(long)]
    encoder: Option<String>,
    /// A TOML config (see configs/); merged onto the defaults for the env.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any config key: --set ppo.learning_rate=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Total environment steps (ppo.total_timesteps).
    #[arg(long)]
    total_steps: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long)]
    device: Option<String>,
    /// Run directory (default: runs/{env}__{encoder}__{seed}__{time}).
    #[arg(long, conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar: one log line per iteration instead (for log files).
    #[arg(long, short)]
    quiet: bool,
}

/// Peeks at the `env` key of a config file, to pick the matching defaults before merging.
fn env_in_file(path: &Path) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(table.get("env").and_then(|v| v.as_str()).map(str::to_string))
}

fn resolve_config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let file_env = args.config.as_deref().map(env_in_file).transpose()?.flatten();
    let env = args.env.clone().or(file_env).unwrap_or_else(|| "coinrun".to_string());
    let mut sets = vec![format!("env={env:?}")];
    if let Some(e) = &args.encoder {
        // The whole table: a new kind starts from its own default params.
        sets.push(format!("encoder={{ kind = {e:?}, params = {{}} }}"));
    }
    if let Some(n) = args.total_steps {
        sets.push(format!("ppo.total_timesteps={n}"));
    }
    if let Some(s) = args.seed {
        sets.push(format!("seed={s}"));
    }
    if let Some(d) = &args.device {
        sets.push(format!("device={d:?}"));
    }
    sets.extend(args.sets.iter().cloned());
    Ok(load_config(args.config.as_deref(), TrainConfig::defaults_for(&env), &sets)?)
}

/// Ctrl-C: the first press asks the loop to checkpoint and stop after the current
/// iteration; a second one exits at once.
fn install_stop_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this iteration (press again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&mut self, global_step: u64, total: u64, message: &str) {
        self.0.set_length(total);
        self.0.set_position(global_step);
        self.0.set_message(message.to_string());
    }
    fn finish(&mut self, message: &str) {
        self.0.finish_with_message(message.to_string());
    }
}

struct Lines;

impl Progress for Lines {
    fn update(&mut self, global_step: u64, total: u64, message: &str) {
        println!("step {global_step}/{total} | {message}");
    }
    fn finish(&mut self, message: &str) {
        println!("{message}");
    }
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let (config, run_dir, resume) = match &args.resume {
        Some(dir) => {
            if args.config.is_some() || args.env.is_some() || args.encoder.is_some() || args.seed.is_some() || !args.sets.is_empty() {
                bail!("--resume continues a run with its saved config; only --total-steps and --device may change");
            }
            let run = RunDir::open(dir)?;
            let env = env_in_file(&run.config_path())?.unwrap_or_else(|| "coinrun".into());
            let mut sets = Vec::new();
            if let Some(n) = args.total_steps {
                sets.push(format!("ppo.total_timesteps={n}"));
            }
            if let Some(d) = &args.device {
                sets.push(format!("device={d:?}"));
            }
            let config = load_config(Some(&run.config_path()), TrainConfig::defaults_for(&env), &sets)?;
            (config, run, true)
        }
        None => {
            let config = resolve_config(&args)?;
            let run = match &args.run_dir {
                Some(dir) => RunDir::create_at(dir)?,
                None => RunDir::create_new(Path::new("runs"), &config.env, config.encoder.name(), config.seed)?,
            };
            (config, run, false)
        }
    };
    save_resolved_config(&config, &run_dir.root)?;
    let stop = install_stop_handler()?;

    let mut sink = MultiSink::new();
    match TensorBoardSink::create(run_dir.tensorboard_dir()) {
        Ok(tb) => sink.push(tb),
        Err(e) => eprintln!("warning: TensorBoard logging disabled: {e}"),
    }
    if args.quiet {
        sink.push(StdoutSink::new(Verbosity::Quiet));
    }
    println!(
        "{} {} with {} on {} for {} steps -> {}",
        if resume { "resuming" } else { "training" },
        config.env,
        config.encoder.name(),
        config.device,
        config.ppo.total_timesteps,
        run_dir.root.display()
    );
    let mut progress: Box<dyn Progress> = if args.quiet {
        Box::new(Lines)
    } else {
        let bar = ProgressBar::new(config.ppo.total_timesteps);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {msg}")
                .expect("valid template"),
        );
        Box::new(Bar(bar))
    };
    let summary = train(TrainRun {
        config: &config,
        run_dir: &run_dir,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        progress: progress.as_mut(),
        stop: &stop,
        max_iterations: None,
        env: None,
    })?;
    sink.flush();
    println!(
        "{} steps ({} iterations, {:.0} steps/s: rollout {:.0}s, update {:.0}s); mean return of the last 100 episodes: {}{}",
        summary.global_step,
        summary.iterations,
        summary.steps_per_sec,
        summary.rollout_secs,
        summary.update_secs,
        summary.mean_return.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into()),
        summary.mean_normalized_return.map(|m| format!(" (normalised {m:.3})")).unwrap_or_default()
    );
    if let Some(c) = &summary.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!("TensorBoard: tensorboard --logdir {}", run_dir.tensorboard_dir().display());
    if summary.interrupted {
        println!("resume with: rl-darts train --resume {}", run_dir.root.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder (runs/.../checkpoints/iter_N) or a run directory (newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate on another env than the one trained on.
    #[arg(long)]
    env: Option<String>,
    /// Levels: 0 = the full distribution (the test protocol); the training set is
    /// --num-levels 200 --start-level 0.
    #[arg(long, default_value_t = 0)]
    num_levels: i32,
    #[arg(long, default_value_t = 0)]
    start_level: i32,
    #[arg(long, default_value_t = 100)]
    episodes: usize,
    #[arg(long, default_value_t = 32)]
    num_envs: usize,
    /// Take the most likely action instead of sampling.
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Write GIFs of env 0's first episodes (512x512) into this folder.
    #[arg(long)]
    video: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let result = evaluate(
        &args.checkpoint,
        &EvalOptions {
            env: args.env,
            num_levels: args.num_levels,
            start_level: args.start_level,
            episodes: args.episodes,
            num_envs: args.num_envs,
            greedy: args.greedy,
            seed: args.seed,
            video: args.video.clone(),
            device: args.device,
        },
    )?;
    let levels = if result.num_levels == 0 {
        "all levels".to_string()
    } else {
        format!("levels {}..{}", result.start_level, result.start_level + result.num_levels)
    };
    println!(
        "{} ({levels}, {} policy): {} episodes, return {:.2} +- {:.2}{}",
        result.env,
        if result.greedy { "greedy" } else { "stochastic" },
        result.episodes,
        result.mean_return,
        result.std_return,
        match (result.mean_normalized_return, result.std_normalized_return) {
            (Some(m), Some(s)) => format!(", normalised {m:.3} +- {s:.3}"),
            _ => String::new(),
        }
    );
    if let Some(v) = args.video {
        println!("videos: {}", v.display());
    }
    Ok(())
}
