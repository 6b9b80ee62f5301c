//! `rl-darts sweep plan|run|slurm|collect|status`: grids of training runs on this machine, a
//! Ray cluster or a Slurm array (library: rl_darts::sweep).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rl_darts::sweep::collect::CollectOptions;
use rl_darts::sweep::local::{default_jobs, run_local};
use rl_darts::sweep::ray::{default_python, run_ray};
use rl_darts::sweep::slurm::{array_script, array_task_id};
use rl_darts::sweep::spec::{BaselinePolicy, SweepKind};
use rl_darts::sweep::trial::{forward_signal, read_status, state, TrialOutcome, TrialState};
use rl_darts::sweep::{collect, run_trial, Plan, SweepSpec};

/// Exit status of `sweep run --index` when the trial stopped resumably (EX_TEMPFAIL).
const EXIT_INTERRUPTED: i32 = 75;

#[derive(Subcommand, Debug)]
pub enum SweepCommand {
    /// Expand a grid (sweep TOML and/or flags) into a plan file of trials.
    Plan(PlanArgs),
    /// Run trials of a plan: one (--index, or SLURM_ARRAY_TASK_ID), all on this machine, or
    /// all on a Ray cluster (--ray).
    Run(RunArgs),
    /// Write a Slurm array job script for a plan.
    Slurm(SlurmArgs),
    /// Merge the trials' results into one table (markdown, JSON) and learning-curve PNGs.
    Collect(CollectArgs),
    /// Show each trial's state.
    Status { plan: PathBuf },
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A sweep TOML (configs/sweep-*.toml); the flags below override its keys.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// train (rl-darts train: the RL-DARTS pipeline, or one PPO run with --encoder) | search
    /// (rl-darts search on an image data set).
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Envs to sweep (repeatable or comma-separated).
    #[arg(long = "env", value_delimiter = ',')]
    envs: Vec<String>,
    /// Seeds (comma-separated, or a range A..B, end excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Strategies to sweep (repeatable or comma-separated).
    #[arg(long = "strategy", value_delimiter = ',')]
    strategies: Vec<String>,
    /// One PPO run per trial with this encoder instead of the pipeline.
    #[arg(long)]
    encoder: Option<String>,
    /// Base config of every trial.
    #[arg(long, conflicts_with = "quick")]
    config: Option<PathBuf>,
    /// The pipeline's quick preset.
    #[arg(long)]
    quick: bool,
    /// A config override for every trial (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// A config key to sweep: KEY=v1,v2 or KEY=[v1, v2] (TOML values; repeatable).
    #[arg(long = "grid", value_name = "KEY=VALUES")]
    grids: Vec<String>,
    /// Which pipeline trials train the IMPALA-CNN baseline: once (first strategy) | every | none.
    #[arg(long)]
    baseline: Option<String>,
    #[arg(long)]
    cpus_per_trial: Option<u32>,
    #[arg(long)]
    gpus_per_trial: Option<u32>,
    /// Folder of the trials' run directories (default runs/sweep-NAME).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// The plan file (default OUT_DIR/plan.json).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Write the plan without resolving and validating each trial's config first.
    #[arg(long)]
    no_check: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    plan: PathBuf,
    /// Run this one trial here (default: SLURM_ARRAY_TASK_ID when set).
    #[arg(long, conflicts_with_all = ["indices", "ray", "jobs"])]
    index: Option<usize>,
    /// Only these trials (comma-separated).
    #[arg(long, value_delimiter = ',')]
    indices: Option<Vec<usize>>,
    /// Trials at once on this machine (default: cores / cpus_per_trial).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run the trials as tasks on this Ray cluster: HOST:PORT, ray://HOST:PORT, auto, or local.
    #[arg(long)]
    ray: Option<String>,
    /// The Python with Ray (default: RL_DARTS_PYTHON, else .venv/bin/python).
    #[arg(long, requires = "ray")]
    python: Option<PathBuf>,
    /// No progress bar: one line per finished trial.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct SlurmArgs {
    plan: PathBuf,
    /// Where to write the script (default: OUT_DIR/sweep.sbatch).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Only these trials (comma-separated), e.g. the failed ones.
    #[arg(long, value_delimiter = ',')]
    indices: Option<Vec<usize>>,
}

#[derive(Args, Debug)]
pub struct CollectArgs {
    plan: PathBuf,
    /// Where collected.{md,json} and the PNGs go (default: the plan's OUT_DIR).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Bootstrap resamples of the IQM interval (rliable's default is 50000).
    #[arg(long, default_value_t = 10_000)]
    reps: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    no_plots: bool,
}

pub fn run(cmd: SweepCommand) -> anyhow::Result<()> {
    match cmd {
        SweepCommand::Plan(args) => plan(args),
        SweepCommand::Run(args) => run_trials(args),
        SweepCommand::Slurm(args) => slurm(args),
        SweepCommand::Collect(args) => collect_cmd(args),
        SweepCommand::Status { plan } => status(&plan),
    }
}

/// `1,2,3` or `0..4`.
fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    if let Some((a, b)) = text.split_once("..") {
        let (a, b): (u64, u64) = (
            a.trim()
                .parse()
                .with_context(|| format!("--seeds {text}"))?,
            b.trim()
                .parse()
                .with_context(|| format!("--seeds {text}"))?,
        );
        if a >= b {
            bail!("--seeds {text}: empty range (the end is excluded)");
        }
        return Ok((a..b).collect());
    }
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("--seeds {text}: {s:?} is not a seed"))
        })
        .collect()
}

/// A `--set`/`--grid` value as TOML, or a bare word as a string (as config.rs's --set does).
fn toml_value(raw: &str) -> anyhow::Result<toml::Value> {
    let raw = raw.trim();
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => Ok(t.remove("v").expect("one key")),
        _ if raw.starts_with(['[', '{', '"', '\'']) => bail!("{raw:?} is not a valid TOML value"),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

fn split_kv<'a>(arg: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    arg.split_once('=')
        .map(|(k, v)| (k.trim(), v))
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("{flag} {arg:?}: expected KEY=VALUE"))
}

fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let mut spec = match &args.spec {
        Some(path) => SweepSpec::load(path)?,
        None => SweepSpec::default(),
    };
    if let Some(k) = &args.kind {
        spec.kind = match k.as_str() {
            "train" => SweepKind::Train,
            "search" => SweepKind::Search,
            other => bail!("--kind {other}: expected train or search"),
        };
    }
    if args.name.is_some() {
        spec.name = args.name.clone();
    }
    if !args.envs.is_empty() {
        spec.envs = args.envs.clone();
    }
    if let Some(s) = &args.seeds {
        spec.seeds = parse_seeds(s)?;
    }
    if !args.strategies.is_empty() {
        spec.strategies = args.strategies.clone();
    }
    if args.encoder.is_some() {
        spec.encoder = args.encoder.clone();
    }
    if let Some(c) = &args.config {
        spec.config = Some(c.clone());
        spec.quick = false;
    }
    if args.quick {
        spec.quick = true;
        spec.config = None;
    }
    for s in &args.sets {
        let (k, v) = split_kv(s, "--set")?;
        spec.set.insert(k.to_string(), toml_value(v)?);
    }
    for g in &args.grids {
        let (k, v) = split_kv(g, "--grid")?;
        let values = if v.trim_start().starts_with('[') {
            toml_value(v)?
        } else {
            toml::Value::Array(
                v.split(',')
                    .map(toml_value)
                    .collect::<anyhow::Result<_>>()?,
            )
        };
        spec.grid.insert(k.to_string(), values);
    }
    if let Some(b) = &args.baseline {
        spec.baseline = match b.as_str() {
            "once" => BaselinePolicy::Once,
            "every" => BaselinePolicy::Every,
            "none" => BaselinePolicy::None,
            other => bail!("--baseline {other}: expected once, every or none"),
        };
    }
    if let Some(c) = args.cpus_per_trial {
        spec.resources.cpus_per_trial = c;
    }
    if let Some(g) = args.gpus_per_trial {
        spec.resources.gpus_per_trial = g;
    }
    if args.out_dir.is_some() {
        spec.out_dir = args.out_dir.clone();
    }
    let workdir = std::env::current_dir().context("the current directory")?;
    let plan = Plan::build(&spec, &workdir)?;
    if !args.no_check {
        rl_darts::sweep::validate::check_plan(&plan)?;
    }
    let path = match &args.out {
        Some(p) => std::path::absolute(p).with_context(|| p.display().to_string())?,
        None => plan.out_dir.join("plan.json"),
    };
    plan.save(&path)?;
    println!(
        "{} trials -> {}\nrun directories under {}",
        plan.trials.len(),
        path.display(),
        plan.out_dir.display()
    );
    for t in plan.trials.iter().take(5) {
        println!("  #{} {}", t.index, t.name);
    }
    if plan.trials.len() > 5 {
        println!("  ...");
    }
    println!(
        "run: rl-darts sweep run {} [--jobs N | --ray ADDRESS]; Slurm: rl-darts sweep slurm {}",
        path.display(),
        path.display()
    );
    Ok(())
}

/// Ctrl-C / SIGTERM: stop taking trials and forward the signal to the running ones, which
/// checkpoint and stop (see trial::forward_signal).
fn install_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        eprintln!("\nsweep: interrupt forwarded to the running trials (they checkpoint and stop)");
        forward_signal("INT");
    })
    .context("installing the signal handler")?;
    Ok(stop)
}

fn binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the rl-darts binary")
}

fn run_trials(args: RunArgs) -> anyhow::Result<()> {
    let plan_path = std::path::absolute(&args.plan).context("the plan path")?;
    let plan = Plan::load(&plan_path)?;
    let index = match (args.index, array_task_id()) {
        (Some(i), _) => Some(i),
        (None, Some(id)) if args.ray.is_none() && args.indices.is_none() => {
            Some(id.map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let binary = binary()?;
    if let Some(index) = index {
        let trial = plan.trial(index, &plan_path)?;
        let _stop = install_handler()?;
        println!(
            "trial #{index} {} -> {}",
            trial.name,
            trial.run_dir.display()
        );
        return match run_trial(&plan, trial, &binary, &[])? {
            TrialOutcome::Skipped => {
                println!("already complete");
                Ok(())
            }
            TrialOutcome::Completed => {
                println!("complete");
                Ok(())
            }
            TrialOutcome::Interrupted { log } => {
                println!("interrupted; run again to resume (log {})", log.display());
                std::process::exit(EXIT_INTERRUPTED);
            }
            TrialOutcome::Failed {
                exit_code,
                log,
                tail,
            } => {
                eprintln!("{tail}");
                bail!(
                    "trial #{index} {} failed (exit code {}); log: {}",
                    trial.name,
                    exit_code.map_or("none, killed by a signal".into(), |c| c.to_string()),
                    log.display()
                )
            }
        };
    }
    if let Some(address) = &args.ray {
        let python = args
            .python
            .clone()
            .unwrap_or_else(|| default_python(&plan.workdir));
        let all_ok = run_ray(
            &python,
            address,
            &plan_path,
            &binary,
            args.indices.as_deref(),
        )?;
        return finish(&plan, &plan_path, all_ok);
    }
    let jobs = args.jobs.unwrap_or_else(|| default_jobs(&plan));
    let stop = install_handler()?;
    println!(
        "{} trials, {jobs} at a time; logs in each run directory's sweep.log",
        args.indices.as_ref().map_or(plan.trials.len(), Vec::len)
    );
    let reports = run_local(
        &plan,
        &binary,
        jobs,
        args.indices.as_deref(),
        args.quiet,
        &stop,
    )?;
    let all_ok = reports
        .iter()
        .all(|r| matches!(r.outcome, TrialOutcome::Skipped | TrialOutcome::Completed));
    finish(&plan, &plan_path, all_ok && !stop.load(Ordering::SeqCst))
}

/// The closing summary of a multi-trial run: counts, then each failed trial with its log.
fn finish(plan: &Plan, plan_path: &Path, all_ok: bool) -> anyhow::Result<()> {
    let complete = plan
        .trials
        .iter()
        .filter(|t| state(t) == TrialState::Complete)
        .count();
    println!("{complete} of {} trials complete", plan.trials.len());
    let failed: Vec<_> = plan
        .trials
        .iter()
        .filter_map(|t| {
            read_status(t)
                .filter(|s| s.status == "failed")
                .map(|s| (t, s))
        })
        .collect();
    for (t, s) in &failed {
        println!(
            "  failed: #{} {} (log {})",
            t.index,
            t.name,
            s.log.display()
        );
    }
    println!("collect: rl-darts sweep collect {}", plan_path.display());
    if !all_ok {
        bail!("some trials did not complete; run the same command again to resume them");
    }
    Ok(())
}

fn slurm(args: SlurmArgs) -> anyhow::Result<()> {
    let plan_path = std::path::absolute(&args.plan).context("the plan path")?;
    let plan = Plan::load(&plan_path)?;
    if let Some(list) = &args.indices {
        for &i in list {
            plan.trial(i, &plan_path)?;
        }
    }
    let script = array_script(&plan, &plan_path, &binary()?, args.indices.as_deref());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| plan.out_dir.join("sweep.sbatch"));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    // Slurm opens each task's --output file before the script runs: the folder must exist
    // at submission.
    let logs = plan.out_dir.join("slurm");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    std::fs::write(&out, script).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}; submit with: sbatch {}",
        out.display(),
        out.display()
    );
    Ok(())
}

fn collect_cmd(args: CollectArgs) -> anyhow::Result<()> {
    let plan_path = std::path::absolute(&args.plan).context("the plan path")?;
    let plan = Plan::load(&plan_path)?;
    let out_dir = args.out.clone().unwrap_or_else(|| plan.out_dir.clone());
    let collected = collect(
        &plan,
        &plan_path,
        &CollectOptions {
            out_dir: &out_dir,
            bootstrap_reps: args.reps,
            seed: args.seed,
            plots: !args.no_plots,
        },
    )?;
    println!("{}", collected.to_markdown(&plan.name));
    println!(
        "written to {} and {}",
        out_dir.join("collected.md").display(),
        out_dir.join("collected.json").display()
    );
    Ok(())
}

fn status(plan_path: &Path) -> anyhow::Result<()> {
    let plan = Plan::load(plan_path)?;
    for t in &plan.trials {
        let st = match (state(t), read_status(t)) {
            (TrialState::Complete, _) => "complete".to_string(),
            (_, Some(s)) => format!("{} (log {})", s.status, s.log.display()),
            (TrialState::Partial, None) => "partial".into(),
            (TrialState::Fresh, None) => "never run".into(),
        };
        println!("#{:<4} {:<50} {st}", t.index, t.name);
    }
    Ok(())
}
