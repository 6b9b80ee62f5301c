//! `rl-darts search`, `rl-darts train-arch` and `rl-darts genotype show|plot`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::logging::{MetricsSink, MultiSink, TensorBoardSink};
use rl_darts::nas::{render_dot, CellType, Genotype};
use rl_darts::search::STRATEGY_NAMES;
use rl_darts::train::rl::{NoProgress, Progress};
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::supervised::{
    cell_types, search, train_arch_run, SearchRun, SupervisedConfig, TrainArchRun, GENOTYPE_JSON,
};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// A TOML preset: configs/digits-<strategy>.toml (darts, idarts, gdas, snas, unas,
    /// darts-prime; runs anywhere), mnist-darts.toml, cifar10-<strategy>.toml, or a
    /// transformer preset configs/seq-<task>-<strategy>.toml (reversible supernet).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any key, e.g. --set search.strategy.params.order=second (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", long_help = strategy_help())]
    sets: Vec<String>,
    /// Run directory (default: runs/{dataset}__{strategy}__{seed}__{time}).
    #[arg(long, conflicts_with = "resume")]
    run_dir: Option<PathBuf>,
    /// Continue the search in this run directory from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn strategy_help() -> String {
    format!(
        "Override any config key (repeatable). Strategies (search.strategy.kind): {}",
        STRATEGY_NAMES.join(", ")
    )
}

#[derive(Args, Debug)]
pub struct TrainArchArgs {
    /// genotype.json or a file holding the DARTS text form `Genotype(normal=[...], ...)`;
    /// with a transformer preset also `standard` (the standard transformer of that size).
    #[arg(long, required_unless_present = "resume")]
    genotype: Option<PathBuf>,
    /// The preset whose [train_arch] and [data] sections to use.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run folder: config, genotype, checkpoints, TensorBoard logs, weights and the summary
    /// (default: train_arch/ next to the genotype file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the retraining in this folder (an earlier --out) from its newest checkpoint.
    #[arg(long, conflicts_with_all = ["genotype", "config", "sets", "out"])]
    resume: Option<PathBuf>,
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum GenotypeCommand {
    /// Print a genotype in DARTS text form and JSON.
    Show { file: PathBuf },
    /// Write Graphviz diagrams of its cells: OUT_normal.{dot,EXT} and OUT_reduce.{dot,EXT}.
    Plot {
        file: PathBuf,
        /// Output stem (default: the genotype file without extension).
        #[arg(long)]
        out: Option<PathBuf>,
        /// png, svg or pdf (needs graphviz `dot`; the .dot files are always written).
        #[arg(long, default_value = "png")]
        format: String,
    },
}

pub(crate) fn install_stop_handler() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this epoch (press again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// The search's and retraining's progress: the shared bar, or nothing when quiet (the quiet
/// sink prints a line per epoch instead).
fn progress(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(NoProgress)
    } else {
        rl_darts::train::progress::terminal(false)
    }
}

pub(crate) fn tensorboard(dir: &Path) -> MultiSink {
    let mut sink = MultiSink::new();
    match TensorBoardSink::create(dir) {
        Ok(tb) => sink.push(tb),
        Err(e) => eprintln!("warning: TensorBoard logging disabled: {e}"),
    }
    sink
}

pub fn run_search(args: SearchArgs) -> anyhow::Result<()> {
    if let (Some(config), None) = (&args.config, &args.resume) {
        if super::transformer::is_transformer(Some(config)) {
            return super::transformer::run_search(config, &args.sets, args.run_dir.as_deref());
        }
    }
    let (config, run_dir, resume) = match &args.resume {
        Some(dir) => {
            if args.config.is_some() || !args.sets.is_empty() {
                bail!("--resume continues a search with its saved config; drop --config and --set");
            }
            if super::transformer::is_transformer(Some(&RunDir::open(dir)?.config_path())) {
                return super::transformer::resume_search(dir);
            }
            let run = RunDir::open(dir)?;
            let config = load_config(Some(&run.config_path()), SupervisedConfig::default(), &[])?;
            (config, run, true)
        }
        None => {
            let config = load_config(
                args.config.as_deref(),
                SupervisedConfig::default(),
                &args.sets,
            )?;
            // Missing data is the likeliest first error: say so before creating a run folder.
            config.data.check_present()?;
            let run = match &args.run_dir {
                Some(dir) => RunDir::create_at(dir)?,
                None => RunDir::create_new(
                    Path::new("runs"),
                    config.data.name(),
                    config.search.strategy.name(),
                    config.seed,
                )?,
            };
            (config, run, false)
        }
    };
    save_resolved_config(&config, &run_dir.root)?;
    let stop = install_stop_handler()?;
    let mut sink = tensorboard(&run_dir.tensorboard_dir());
    println!(
        "{} {} search on {} -> {}",
        if resume { "resuming" } else { "starting" },
        config.search.strategy.name(),
        config.data.name(),
        run_dir.root.display()
    );
    let mut bar = progress(args.quiet);
    let summary = search(SearchRun {
        config: &config,
        run_dir: &run_dir,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        progress: bar.as_mut(),
        stop: &stop,
        max_epochs: None,
    })?;
    sink.flush();
    println!("genotype: {}", summary.genotype);
    println!(
        "{} epochs in {:.0}s, validation accuracy {:.4}; written to {}",
        summary.epochs_done,
        summary.seconds,
        summary.val_accuracy,
        summary.genotype_path.display()
    );
    println!(
        "retrain: rl-darts train-arch --genotype {} --config <preset>",
        summary.genotype_path.display()
    );
    if summary.interrupted {
        println!(
            "resume with: rl-darts search --resume {}",
            run_dir.root.display()
        );
    }
    Ok(())
}

pub fn run_train_arch(args: TrainArchArgs) -> anyhow::Result<()> {
    if let (Some(config), Some(genotype), None) = (&args.config, &args.genotype, &args.resume) {
        if super::transformer::is_transformer(Some(config)) {
            return super::transformer::run_train_arch(
                genotype,
                config,
                &args.sets,
                args.out.as_deref(),
            );
        }
    }
    let (config, genotype, run_dir, resume) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open(dir)?;
            if super::transformer::is_transformer(Some(&run.config_path())) {
                return super::transformer::resume_train_arch(&run);
            }
            let config = load_config(Some(&run.config_path()), SupervisedConfig::default(), &[])?;
            let path = run.root.join(GENOTYPE_JSON);
            let genotype =
                Genotype::load(&path).with_context(|| format!("reading {}", path.display()))?;
            (config, genotype, run, true)
        }
        None => {
            let Some(genotype_path) = &args.genotype else {
                bail!("give --genotype FILE (or --resume DIR)");
            };
            let genotype = Genotype::load(genotype_path)
                .with_context(|| format!("reading {}", genotype_path.display()))?;
            let config = load_config(
                args.config.as_deref(),
                SupervisedConfig::default(),
                &args.sets,
            )?;
            config.data.check_present()?;
            let out = match &args.out {
                Some(dir) => dir.clone(),
                None => genotype_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("train_arch"),
            };
            let run = RunDir::create_at(&out)?;
            // Checkpoints of an earlier run would mix with this one's (and be pruned or resumed
            // in its place).
            if run.latest_checkpoint()?.is_some() {
                bail!(
                    "{} already holds a train-arch run; continue it with --resume {0} or pick another --out",
                    out.display()
                );
            }
            (config, genotype, run, false)
        }
    };
    save_resolved_config(&config, &run_dir.root)?;
    let stop = install_stop_handler()?;
    let mut sink = tensorboard(&run_dir.tensorboard_dir());
    println!(
        "{} {genotype} from scratch on {} for {} epochs -> {}",
        if resume { "resuming" } else { "training" },
        config.data.name(),
        config.train_arch.epochs,
        run_dir.root.display()
    );
    let mut bar = progress(args.quiet);
    let summary = train_arch_run(TrainArchRun {
        config: &config,
        genotype: &genotype,
        run_dir: &run_dir,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        progress: bar.as_mut(),
        stop: &stop,
        max_epochs: None,
    })?;
    sink.flush();
    println!(
        "{} parameters, {} epochs in {:.0}s: train accuracy {:.4}, test accuracy {:.4}",
        summary.parameters,
        summary.epochs,
        summary.seconds,
        summary.train_accuracy,
        summary.test_accuracy
    );
    if summary.interrupted {
        println!(
            "resume with: rl-darts train-arch --resume {}",
            run_dir.root.display()
        );
    }
    Ok(())
}

pub fn run_genotype(cmd: GenotypeCommand) -> anyhow::Result<()> {
    match cmd {
        GenotypeCommand::Show { file } => {
            let g = Genotype::load(&file).with_context(|| format!("reading {}", file.display()))?;
            println!("{g}");
            println!("{}", g.to_json()?);
        }
        GenotypeCommand::Plot { file, out, format } => {
            let g = Genotype::load(&file).with_context(|| format!("reading {}", file.display()))?;
            let stem = out.unwrap_or_else(|| file.with_extension(""));
            // Two-input cells (DARTS) name their inputs c_{k-2}, c_{k-1}; the largest input
            // index any gene reads tells which.
            let num_inputs = if g
                .normal
                .first()
                .is_some_and(|genes| genes.iter().any(|&(_, i)| i == 1))
            {
                2
            } else {
                1
            };
            for cell in cell_types(&g) {
                let name = match cell {
                    CellType::Normal => "normal",
                    CellType::Reduce => "reduce",
                };
                let dot = g.to_dot(cell, num_inputs);
                let dot_path = PathBuf::from(format!("{}_{name}.dot", stem.display()));
                std::fs::write(&dot_path, &dot)
                    .with_context(|| format!("writing {}", dot_path.display()))?;
                let img = PathBuf::from(format!("{}_{name}.{format}", stem.display()));
                match render_dot(&dot, &img) {
                    Ok(()) => println!("wrote {} and {}", dot_path.display(), img.display()),
                    Err(e) => println!("wrote {}; not rendered: {e}", dot_path.display()),
                }
            }
        }
    }
    Ok(())
}
