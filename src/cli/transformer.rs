//! `rl-darts search` and `train-arch` for a transformer preset (`configs/seq-*.toml`, the ones
//! with a `[task]` table): the memory-efficient transformer search of Zhao et al. 2021
//! ([`rl_darts::transformer`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rl_darts::config::{load_config, save_resolved_config};
use rl_darts::logging::MetricsSink;
use rl_darts::nas::Genotype;
use rl_darts::train::run_dir::RunDir;
use rl_darts::transformer::genotype::standard;
use rl_darts::transformer::objective::check_strategy;
use rl_darts::transformer::retrain::{train_arch_run, SeqTrainArchRun};
use rl_darts::transformer::search::{search_run, SeqConfig, SeqSearchRun};

/// Whether `config` names a transformer preset.
pub fn is_transformer(config: Option<&Path>) -> bool {
    config.is_some_and(rl_darts::transformer::search::is_transformer_config)
}

/// `rl-darts search --config <transformer preset>`: a fresh search.
pub fn run_search(config: &Path, sets: &[String], run_dir: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(Some(config), SeqConfig::default(), sets)?;
    // A strategy the network cannot serve is the likeliest first error: say so before
    // creating a run folder.
    check_strategy(&config.search.strategy, config.network.mode)?;
    let run = match run_dir {
        Some(dir) => RunDir::create_at(dir)?,
        None => RunDir::create_new(
            Path::new("runs"),
            config.task.name(),
            config.search.strategy.name(),
            config.seed,
        )?,
    };
    save_resolved_config(&config, &run.root)?;
    search_in(&config, &run, false)
}

/// `rl-darts search --resume RUN_DIR` of a transformer search: continues from the newest
/// checkpoint with the run's saved config.
pub fn resume_search(dir: &Path) -> anyhow::Result<()> {
    let run = RunDir::open(dir)?;
    let config = load_config(Some(&run.config_path()), SeqConfig::default(), &[])?;
    search_in(&config, &run, true)
}

fn search_in(config: &SeqConfig, run: &RunDir, resume: bool) -> anyhow::Result<()> {
    let stop = super::search::install_stop_handler()?;
    let mut sink = super::search::tensorboard(&run.tensorboard_dir());
    println!(
        "{} {} search ({:?} supernet) on {} -> {}",
        if resume { "resuming" } else { "starting" },
        config.search.strategy.name(),
        config.network.mode,
        config.task.name(),
        run.root.display()
    );
    let summary = search_run(SeqSearchRun {
        config,
        run_dir: run,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        stop: &stop,
        max_epochs: None,
    })?;
    sink.flush();
    println!("genotype: {}", summary.genotype);
    println!("{}", summary.description);
    println!(
        "{} iterations ({} epochs) in {:.0}s; validation token accuracy {:.4}, exact match \
         {:.4}; written to {}",
        summary.iterations,
        summary.epochs_done,
        summary.seconds,
        summary.val.token_accuracy,
        summary.val.exact_match,
        summary.genotype_path.display()
    );
    if summary.interrupted {
        println!(
            "resume with: rl-darts search --resume {}",
            run.root.display()
        );
    } else {
        println!(
            "retrain: rl-darts train-arch --genotype {} --config <preset>",
            summary.genotype_path.display()
        );
    }
    Ok(())
}

/// `genotype` is a genotype file, or `standard` for the standard transformer of the preset's
/// size (self-attention and FFN splits).
pub fn run_train_arch(
    genotype: &Path,
    config: &Path,
    sets: &[String],
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let config = load_config(Some(config), SeqConfig::default(), sets)?;
    let (genotype, default_out) = if genotype == Path::new("standard") {
        (
            standard(config.task.is_seq2seq()),
            PathBuf::from("runs").join(format!(
                "{}__standard__{}",
                config.task.name(),
                config.seed
            )),
        )
    } else {
        let g =
            Genotype::load(genotype).with_context(|| format!("reading {}", genotype.display()))?;
        (
            g,
            genotype
                .parent()
                .unwrap_or(Path::new("."))
                .join("train_arch"),
        )
    };
    let out = out.map(Path::to_path_buf).unwrap_or(default_out);
    let run = RunDir::create_at(&out)?;
    // Checkpoints of an earlier run would mix with this one's (and be pruned or resumed in
    // its place).
    if run.root.join("summary.json").exists() || run.latest_checkpoint()?.is_some() {
        bail!(
            "{} already holds a train-arch run; continue it with --resume {0} or pick another \
             --out",
            out.display()
        );
    }
    save_resolved_config(&config, &run.root)?;
    train_arch_in(&config, &genotype, &run, false)
}

/// `rl-darts train-arch --resume OUT` of a transformer retraining: continues from the newest
/// checkpoint with the run's saved config and genotype.
pub fn resume_train_arch(run: &RunDir) -> anyhow::Result<()> {
    let config = load_config(Some(&run.config_path()), SeqConfig::default(), &[])?;
    let path = run.root.join("genotype.json");
    let genotype = Genotype::load(&path).with_context(|| format!("reading {}", path.display()))?;
    train_arch_in(&config, &genotype, run, true)
}

fn train_arch_in(
    config: &SeqConfig,
    genotype: &Genotype,
    run: &RunDir,
    resume: bool,
) -> anyhow::Result<()> {
    let stop = super::search::install_stop_handler()?;
    let mut sink = super::search::tensorboard(&run.tensorboard_dir());
    println!(
        "{} {genotype} from scratch on {} for {} epochs -> {}",
        if resume { "resuming" } else { "training" },
        config.task.name(),
        config.train_arch.epochs,
        run.root.display()
    );
    let trained = train_arch_run(SeqTrainArchRun {
        config,
        genotype,
        run_dir: run,
        resume,
        sink: &mut sink as &mut dyn MetricsSink,
        stop: &stop,
        max_epochs: None,
    })?;
    sink.flush();
    if trained.interrupted {
        println!(
            "stopped after epoch {} of {}; resume with: rl-darts train-arch --resume {}",
            trained.epochs_done,
            config.train_arch.epochs,
            run.root.display()
        );
        return Ok(());
    }
    println!(
        "{} parameters (d_model {}, ffn_mult {}), {:.0}s: validation token accuracy {:.4} exact \
         match {:.4}; test token accuracy {:.4} exact match {:.4} (greedy autoregressive \
         decoding)",
        trained.parameters,
        trained.d_model,
        trained.ffn_mult,
        trained.seconds,
        trained.val.token_accuracy,
        trained.val.exact_match,
        trained.test.token_accuracy,
        trained.test.exact_match
    );
    Ok(())
}
