//! `rl-darts train` and `rl-darts eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use rl_darts::config::save_resolved_config;
use rl_darts::logging::{MetricsSink, MultiSink, StdoutSink, TensorBoardSink, Verbosity};
use rl_darts::train::launch::{
    quick_preset, resolve_resume, ResolvedTrain, ResumeRequest, TrainRequest, QUICK_PRESET,
};
use rl_darts::train::pipeline::{
    self, PipelineOutcome, PipelinePhase, PipelineReporter, PipelineRun, PipelineRunConfig,
};
use rl_darts::train::progress::{self, Progress};
use rl_darts::train::rl::{evaluate, train, EvalOptions, TrainConfig, TrainRun};
use rl_darts::train::run_dir::{RunDir, CONFIG_FILE, TENSORBOARD_DIR};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Environment: a Procgen game (coinrun, starpilot, ...) or cartpole / mountaincar.
    #[arg(long)]
    env: Option<String>,
    /// Encoder of a single PPO run: impala (Procgen baseline), mlp (vector observations),
    /// rl_darts (supernet searched during PPO, see --strategy), mlp_darts / mlp_darts_fixed
    /// (the same for vector observations such as cartpole) or rl_darts_fixed (a derived genotype
    /// retrained from scratch; give it with --set encoder.params.genotype="runs/<search
    /// run>/genotype.json"). Without --encoder a Procgen game runs the whole RL-DARTS pipeline
    /// (search, derive, retrain + IMPALA baseline, eval; budgets in [pipeline]).
    #[arg(long)]
    encoder: Option<String>,
    /// Search strategy of a supernet encoder (rl_darts, mlp_darts; the pipeline's search):
    /// joint (default, RL-DARTS's joint first order), darts, idarts, gdas, snas, random,
    /// darts_prime. In the pipeline, random trains num_candidates sampled cells from scratch
    /// within the search budget and keeps the best (in a single run: weight-sharing random
    /// search). Its parameters keep their defaults; change them with
    /// --set search.strategy.params.KEY=VALUE (presets: configs/coinrun-<strategy>.toml).
    #[arg(long)]
    strategy: Option<String>,
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
    /// auto | fp32 | bf16 | fp16 (the `precision` key; fp16 on CUDA only). With --resume: a
    /// setting other than the run's, which is then said.
    #[arg(long)]
    precision: Option<String>,
    /// auto | nchw | channels_last (the `layout` key); with --resume as --precision.
    #[arg(long)]
    layout: Option<String>,
    /// Run directory (default: runs/{env}__{encoder}__{seed}__{time}).
    #[arg(long, conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar: one log line per iteration instead (for log files).
    #[arg(long, short)]
    quiet: bool,
    /// The quick preset, configs/coinrun-darts-quick.toml: the whole pipeline in minutes on a CPU.
    #[arg(long, conflicts_with = "config")]
    quick: bool,
    /// Pipeline: run only this phase (search | retrain | eval); the earlier ones must be complete.
    #[arg(long)]
    phase: Option<PipelinePhase>,
    /// Pipeline: do not train the IMPALA-CNN baseline (pipeline.skip_baseline).
    #[arg(long, conflicts_with = "baseline_from")]
    skip_baseline: bool,
    /// Pipeline: reuse the baseline of an earlier pipeline run directory or of a single
    /// `train --encoder impala` run (pipeline.baseline_from).
    #[arg(long)]
    baseline_from: Option<PathBuf>,
    /// One run over the processes a launcher started (distributed.backend): mpi (CPUs;
    /// `mpirun -np N rl-darts train ...`) or nccl (one GPU per process). ppo.num_envs is split
    /// over the processes; only rank 0 writes the run directory. Single runs only (--encoder).
    #[arg(long, value_name = "BACKEND")]
    distributed: Option<String>,
}

/// The request of a new run: --config or the --quick preset, and the flags.
fn request(args: &TrainArgs) -> anyhow::Result<TrainRequest> {
    let config = if args.quick {
        Some(quick_preset(Path::new(".")).with_context(|| {
            format!(
                "--quick: {QUICK_PRESET} not found (run from the repository, or pass --config FILE)"
            )
        })?)
    } else {
        args.config.clone()
    };
    Ok(TrainRequest {
        config,
        env: args.env.clone(),
        encoder: args.encoder.clone(),
        strategy: args.strategy.clone(),
        total_steps: args.total_steps,
        seed: args.seed,
        device: args.device.clone(),
        skip_baseline: args.skip_baseline,
        baseline_from: args.baseline_from.clone(),
        distributed: args.distributed.clone(),
        sets: compute_sets(args)
            .chain(args.sets.iter().cloned())
            .collect(),
    })
}

/// `--precision` and `--layout` as `--set`s (checked by the config's own validation).
fn compute_sets(args: &TrainArgs) -> impl Iterator<Item = String> + '_ {
    let precision = args.precision.iter().map(|p| format!("precision={p:?}"));
    precision.chain(args.layout.iter().map(|l| format!("layout={l:?}")))
}

/// Ctrl-C or SIGTERM: the first asks the loop to stop at its next env step or minibatch (the
/// partial iteration is abandoned; the run keeps its last checkpoint, at most
/// `checkpoint.every_minutes` old plus one iteration); a second one exits at once.
fn install_stop_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: stopping at the next env step or minibatch; the run keeps its last checkpoint (press again to quit now)"
        );
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    // The config is resolved and validated before any directory is created: a bad value
    // leaves nothing behind.
    let resolved = match &args.resume {
        Some(dir) => {
            if args.config.is_some()
                || args.quick
                || args.env.is_some()
                || args.encoder.is_some()
                || args.strategy.is_some()
                || args.seed.is_some()
                || !args.sets.is_empty()
            {
                bail!("--resume continues a run with its saved config; only --total-steps, --device, --precision, --layout and the pipeline's --phase, --skip-baseline and --baseline-from may change");
            }
            resolve_resume(
                dir,
                &ResumeRequest {
                    total_steps: args.total_steps,
                    device: args.device.clone(),
                    skip_baseline: args.skip_baseline,
                    baseline_from: args.baseline_from.clone(),
                    compute_sets: compute_sets(&args).collect(),
                },
            )?
        }
        None => request(&args)?.resolve()?,
    };
    match resolved {
        ResolvedTrain::Pipeline(config) => run_pipeline(args, config),
        ResolvedTrain::Single(config) => {
            if args.phase.is_some() {
                bail!("--phase belongs to the RL-DARTS pipeline, which `train` runs on a Procgen game without --encoder");
            }
            run_single(args, config)
        }
    }
}

/// One PPO run (with a supernet encoder: its architecture search).
fn run_single(args: TrainArgs, config: TrainConfig) -> anyhow::Result<()> {
    let rank = process_rank(&config)?;
    // Whether the envs split over the processes, before the run directory exists.
    if let Some(comm) = rl_darts::distributed::world(&config.distributed)? {
        config.process_share(rank, comm.world_size())?;
    }
    let (run_dir, resume) = match (&args.resume, &args.run_dir) {
        // Only rank 0 writes the run directory; the others work in a private scratch folder.
        _ if rank != 0 => (scratch_dir(rank)?, args.resume.is_some()),
        (Some(dir), _) => (RunDir::open(dir)?, true),
        (None, Some(dir)) => (RunDir::create_at(dir)?, false),
        (None, None) => (
            RunDir::create_new(
                Path::new("runs"),
                &config.env,
                config.encoder.name(),
                config.seed,
            )?,
            false,
        ),
    };
    if rank != 0 {
        return run_other_rank(&config, &run_dir, resume);
    }
    save_resolved_config(&config, &run_dir.root)?;
    let stop = install_stop_handler()?;

    let mut sink = make_sink(&run_dir.tensorboard_dir(), args.quiet);
    println!(
        "{} {} with {} on {} for {} steps -> {}",
        if resume { "resuming" } else { "training" },
        config.env,
        config.encoder.name(),
        config.device,
        config.ppo.total_timesteps,
        run_dir.root.display()
    );
    let mut progress = progress::terminal(args.quiet);
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
    println!(
        "TensorBoard: tensorboard --logdir {}",
        run_dir.tensorboard_dir().display()
    );
    if summary.interrupted {
        println!(
            "resume with: rl-darts train --resume {}",
            run_dir.root.display()
        );
        // The other processes may be waiting in a collective this one left: end them too.
        rl_darts::distributed::abort_if_running(130);
    }
    Ok(())
}

/// This process's rank in the data-parallel run `config` asks for (0 without one); starts
/// the engine (`MPI_Init`), which the training loop then uses.
fn process_rank(config: &TrainConfig) -> anyhow::Result<usize> {
    Ok(rl_darts::distributed::world(&config.distributed)?.map_or(0, |c| c.rank()))
}

/// A process other than rank 0 writes nothing into the run directory: its `RunDir` is a
/// private folder for the checkpoint rank 0 broadcasts on resume, removed at the end.
fn scratch_dir(rank: usize) -> anyhow::Result<RunDir> {
    let dir = std::env::temp_dir().join(format!("rl-darts-rank{rank}-{}", std::process::id()));
    Ok(RunDir::create_at(&dir)?)
}

/// Ranks other than 0 of a data-parallel `train`: the same loop without logs, progress or
/// output; their envs, and the all-reduces, are their part.
fn run_other_rank(config: &TrainConfig, run_dir: &RunDir, resume: bool) -> anyhow::Result<()> {
    let stop = install_stop_handler()?;
    let mut sink = rl_darts::logging::MultiSink::new();
    let mut progress = rl_darts::train::rl::NoProgress;
    let result = train(TrainRun {
        config,
        run_dir,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        progress: &mut progress,
        stop: &stop,
        max_iterations: None,
        env: None,
    });
    let _ = std::fs::remove_dir_all(&run_dir.root);
    if result.as_ref().is_ok_and(|s| s.interrupted) {
        rl_darts::distributed::abort_if_running(130);
    }
    result?;
    Ok(())
}

/// TensorBoard files in `dir`, plus one line per iteration on stdout when `quiet`.
fn make_sink(dir: &Path, quiet: bool) -> MultiSink {
    let mut sink = MultiSink::new();
    match TensorBoardSink::create(dir) {
        Ok(tb) => sink.push(tb),
        Err(e) => eprintln!("warning: TensorBoard logging disabled: {e}"),
    }
    if quiet {
        sink.push(StdoutSink::new(Verbosity::Quiet));
    }
    sink
}

/// The pipeline's phases report to the terminal and to TensorBoard files in each phase's
/// directory.
struct TerminalReporter {
    quiet: bool,
}

impl PipelineReporter for TerminalReporter {
    fn sink(&mut self, _label: &str, dir: &Path) -> Box<dyn MetricsSink> {
        Box::new(make_sink(&dir.join(TENSORBOARD_DIR), self.quiet))
    }
    fn progress(&mut self, _label: &str) -> Box<dyn Progress> {
        progress::terminal(self.quiet)
    }
    fn message(&mut self, line: &str) {
        println!("{line}");
    }
}

/// `rl-darts train` without --encoder on a Procgen game: search, derive, retrain + baseline,
/// eval (train::pipeline), or what remains of them in a --resume'd directory.
fn run_pipeline(args: TrainArgs, config: PipelineRunConfig) -> anyhow::Result<()> {
    let resuming = args.resume.is_some();
    let root = match (&args.resume, &args.run_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) if dir.join(CONFIG_FILE).is_file() => {
            bail!(
                "{} already holds a run; continue it with --resume {}",
                dir.display(),
                dir.display()
            )
        }
        (None, Some(dir)) => dir.clone(),
        (None, None) => {
            pipeline::new_pipeline_dir(Path::new("runs"), &config.train.env, config.train.seed)?
        }
    };
    let stop = install_stop_handler()?;
    let p = &config.pipeline;
    println!(
        "{} the RL-DARTS pipeline on {} ({}): search {} steps, retrain {} steps ({}), seed {} -> {}",
        if resuming { "resuming" } else { "starting" },
        config.train.env,
        config.train.device,
        p.search_timesteps,
        p.retrain_timesteps,
        match (&p.baseline_from, p.skip_baseline) {
            (Some(from), _) => format!("baseline reused from {}", from.display()),
            (None, true) => "no baseline".to_string(),
            (None, false) => "and the IMPALA-CNN baseline".to_string(),
        },
        config.train.seed,
        root.display()
    );
    let mut reporter = TerminalReporter { quiet: args.quiet };
    let outcome = pipeline::run_pipeline(PipelineRun {
        config: &config,
        root: &root,
        only: args.phase,
        reporter: &mut reporter,
        stop: &stop,
    })?;
    match outcome {
        PipelineOutcome::Complete(comparison) => {
            println!("\n{}", comparison.to_markdown());
            println!(
                "written to {} and {}",
                root.join(pipeline::COMPARISON_MD).display(),
                root.join(pipeline::COMPARISON_JSON).display()
            );
            println!("TensorBoard: tensorboard --logdir {}", root.display());
        }
        PipelineOutcome::PhaseDone(phase) => {
            println!(
                "phase {phase} complete; continue with: rl-darts train --resume {}",
                root.display()
            );
        }
        PipelineOutcome::Interrupted(phase) => {
            println!(
                "stopped in phase {phase}; resume with: rl-darts train --resume {}",
                root.display()
            );
        }
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
        format!(
            "levels {}..{}",
            result.start_level,
            result.start_level + result.num_levels
        )
    };
    println!(
        "{} ({levels}, {} policy): {} episodes, return {:.2} +- {:.2}{}",
        result.env,
        if result.greedy {
            "greedy"
        } else {
            "stochastic"
        },
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
