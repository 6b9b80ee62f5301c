//! `rl-darts train` and `rl-darts eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::envs::gym::GYM_ENVS;
use rl_darts::logging::{MetricsSink, MultiSink, StdoutSink, TensorBoardSink, Verbosity};
use rl_darts::train::pipeline::{self, Phase, PipelineOutcome, PipelineReporter, PipelineRun};
use rl_darts::train::rl::{evaluate, train, EvalOptions, Progress, TrainConfig, TrainRun};
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
    phase: Option<Phase>,
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

/// The preset `--quick` names: in the working directory (a clone), else in the source tree
/// this binary was built from.
fn quick_preset() -> anyhow::Result<PathBuf> {
    let name = Path::new("configs").join("coinrun-darts-quick.toml");
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(&name);
    [name, built_from]
        .into_iter()
        .find(|p| p.is_file())
        .context("--quick: configs/coinrun-darts-quick.toml not found (run from the repository, or pass --config FILE)")
}

/// The config file of a new run: --config, or the --quick preset.
fn config_file(args: &TrainArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.quick {
        return Ok(Some(quick_preset()?));
    }
    Ok(args.config.clone())
}

/// A new run without --encoder on a Procgen game is the pipeline, unless its config file asks
/// for another encoder than the searched one (e.g. configs/coinrun-impala.toml).
fn wants_pipeline(args: &TrainArgs) -> anyhow::Result<bool> {
    if args.encoder.is_some() {
        return Ok(false);
    }
    let (file_env, file_kind) = match config_file(args)? {
        Some(path) => {
            let table = read_table(&path)?;
            let kind = table
                .get("encoder")
                .and_then(|e| e.get("kind"))
                .and_then(|k| k.as_str())
                .map(str::to_string);
            (
                table
                    .get("env")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                kind,
            )
        }
        None => (None, None),
    };
    let env = args
        .env
        .clone()
        .or(file_env)
        .unwrap_or_else(|| "coinrun".to_string());
    Ok(!GYM_ENVS.contains(&env.as_str()) && file_kind.is_none_or(|k| k == "rl_darts"))
}

/// `--set`s for the pipeline's flags, applied before the user's own --set.
fn pipeline_flag_sets(args: &TrainArgs) -> anyhow::Result<Vec<String>> {
    let mut sets = Vec::new();
    if let Some(n) = args.total_steps {
        sets.push(format!("pipeline.search_timesteps={n}"));
        sets.push(format!("pipeline.retrain_timesteps={n}"));
    }
    if args.skip_baseline {
        sets.push("pipeline.skip_baseline=true".into());
    }
    if let Some(dir) = &args.baseline_from {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("--baseline-from {}", dir.display()))?;
        sets.push(format!(
            "pipeline.baseline_from={:?}",
            dir.display().to_string()
        ));
    }
    Ok(sets)
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Peeks at the `env` key of a config file, to pick the matching defaults before merging.
fn env_in_file(path: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_table(path)?
        .get("env")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

/// The config of a new run: defaults for the env (the pipeline's when `pipeline`), the file,
/// the flags, then --set.
fn resolve_config(args: &TrainArgs, pipeline: bool) -> anyhow::Result<TrainConfig> {
    let config_path = config_file(args)?;
    let file_env = config_path
        .as_deref()
        .map(env_in_file)
        .transpose()?
        .flatten();
    let env = args
        .env
        .clone()
        .or(file_env)
        .unwrap_or_else(|| "coinrun".to_string());
    let mut sets = vec![format!("env={env:?}")];
    if let Some(e) = &args.encoder {
        // The whole table: a new kind starts from its own default params.
        sets.push(format!("encoder={{ kind = {e:?}, params = {{}} }}"));
    }
    if let Some(name) = &args.strategy {
        // Checked here for the list of valid names; the whole table, so the strategy starts
        // from its own default params.
        rl_darts::search::StrategyConfig::from_name(name)?;
        sets.push(format!("search.strategy={{ kind = {name:?} }}"));
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
    if let Some(b) = &args.distributed {
        // Checked here for the list of valid names (the config would say the same, less plainly).
        rl_darts::distributed::Backend::parse(b)?;
        sets.push(format!("distributed.backend={b:?}"));
    }
    let defaults = if pipeline {
        sets.extend(pipeline_flag_sets(args)?);
        pipeline::pipeline_defaults(&env)
    } else {
        TrainConfig::defaults_for(&env)
    };
    sets.extend(args.sets.iter().cloned());
    Ok(load_config(config_path.as_deref(), defaults, &sets)?)
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

/// Progress as plain lines (quiet mode, and logs that are not a terminal, where a bar draws
/// nothing): the first update, then at most one line every [`LINE_INTERVAL`].
struct Lines {
    last: Option<std::time::Instant>,
}

const LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Progress for Lines {
    fn update(&mut self, global_step: u64, total: u64, message: &str) {
        if self.last.is_some_and(|t| t.elapsed() < LINE_INTERVAL) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        println!("step {global_step}/{total} | {message}");
    }
    fn finish(&mut self, message: &str) {
        println!("{message}");
    }
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let pipeline_mode = match &args.resume {
        Some(dir) => pipeline::is_pipeline_run(dir),
        None => wants_pipeline(&args)?,
    };
    if pipeline_mode {
        return run_pipeline(args);
    }
    if args.phase.is_some() || args.skip_baseline || args.baseline_from.is_some() {
        bail!("--phase, --skip-baseline and --baseline-from belong to the RL-DARTS pipeline, which `train` runs on a Procgen game without --encoder");
    }
    let (config, run_dir, resume) = match &args.resume {
        Some(dir) => {
            if args.config.is_some()
                || args.env.is_some()
                || args.encoder.is_some()
                || args.strategy.is_some()
                || args.seed.is_some()
                || !args.sets.is_empty()
            {
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
            let config = load_config(
                Some(&run.config_path()),
                TrainConfig::defaults_for(&env),
                &sets,
            )?;
            (config, run, true)
        }
        None => {
            let config = resolve_config(&args, false)?;
            // Before the run directory exists: a bad value leaves nothing behind.
            rl_darts::train::rl::validate(&config)?;
            let rank = process_rank(&config)?;
            // Whether the envs split over the processes, before the run directory exists.
            if let Some(comm) = rl_darts::distributed::world(&config.distributed)? {
                config.process_share(rank, comm.world_size())?;
            }
            let run = match &args.run_dir {
                _ if rank != 0 => scratch_dir(rank)?,
                Some(dir) => RunDir::create_at(dir)?,
                None => RunDir::create_new(
                    Path::new("runs"),
                    &config.env,
                    config.encoder.name(),
                    config.seed,
                )?,
            };
            (config, run, false)
        }
    };
    let rank = process_rank(&config)?;
    let run_dir = match (&args.resume, rank) {
        (Some(_), r) if r != 0 => scratch_dir(r)?,
        _ => run_dir,
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
    let mut progress = make_progress(args.quiet, config.ppo.total_timesteps);
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

/// A progress bar, or plain lines when `quiet`.
fn make_progress(quiet: bool, total_steps: u64) -> Box<dyn Progress> {
    // indicatif draws nothing when stderr is not a terminal (a log file, a batch job).
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return Box::new(Lines { last: None });
    }
    let bar = ProgressBar::new(total_steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {msg}",
        )
        .expect("valid template"),
    );
    Box::new(Bar(bar))
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
        make_progress(self.quiet, 0)
    }
    fn message(&mut self, line: &str) {
        println!("{line}");
    }
}

/// `rl-darts train` without --encoder on a Procgen game: search, derive, retrain + baseline,
/// eval (train::pipeline), or what remains of them in a --resume'd directory.
fn run_pipeline(args: TrainArgs) -> anyhow::Result<()> {
    let (config, root, resuming) = match &args.resume {
        Some(dir) => {
            if args.config.is_some()
                || args.quick
                || args.env.is_some()
                || args.encoder.is_some()
                || args.strategy.is_some()
                || args.seed.is_some()
                || !args.sets.is_empty()
            {
                bail!("--resume continues a pipeline with its saved config; only --total-steps, --device, --phase, --skip-baseline and --baseline-from may change");
            }
            let path = dir.join(CONFIG_FILE);
            let env = env_in_file(&path)?.unwrap_or_else(|| "coinrun".into());
            let mut sets = pipeline_flag_sets(&args)?;
            if let Some(d) = &args.device {
                sets.push(format!("device={d:?}"));
            }
            let config = load_config(Some(&path), pipeline::pipeline_defaults(&env), &sets)?;
            (config, dir.clone(), true)
        }
        None => {
            let config = resolve_config(&args, true)?;
            if config.distributed.backend != rl_darts::distributed::Backend::None {
                bail!(
                    "distributed.backend = {:?} trains one PPO run over several processes; the \
                     pipeline runs several phases (and an evaluation) that would each need it. \
                     Give --encoder (e.g. --encoder rl_darts for the search, rl_darts_fixed for \
                     the retraining) to run a phase as a single data-parallel run",
                    config.distributed.backend.name()
                );
            }
            pipeline::validate(&config)?;
            let root = match &args.run_dir {
                Some(dir) if dir.join(CONFIG_FILE).is_file() => {
                    bail!(
                        "{} already holds a run; continue it with --resume {}",
                        dir.display(),
                        dir.display()
                    )
                }
                Some(dir) => dir.clone(),
                None => pipeline::new_pipeline_dir(Path::new("runs"), &config.env, config.seed)?,
            };
            (config, root, false)
        }
    };
    pipeline::validate(&config)?;
    let stop = install_stop_handler()?;
    let p = &config.pipeline;
    println!(
        "{} the RL-DARTS pipeline on {} ({}): search {} steps, retrain {} steps ({}), seed {} -> {}",
        if resuming { "resuming" } else { "starting" },
        config.env,
        config.device,
        p.search_timesteps,
        p.retrain_timesteps,
        match (&p.baseline_from, p.skip_baseline) {
            (Some(from), _) => format!("baseline reused from {}", from.display()),
            (None, true) => "no baseline".to_string(),
            (None, false) => "and the IMPALA-CNN baseline".to_string(),
        },
        config.seed,
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
