//! The `rl-darts` command line: thin clap wrappers over the library; anyhow lives here only.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rl-darts",
    version,
    about = "Differentiable architecture search for RL and vision, on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a PPO agent (Procgen recipe) on a Procgen game or classic control.
    Train(cli::train::TrainArgs),
    /// Evaluate a checkpoint on chosen levels.
    Eval(cli::train::EvalArgs),
    /// Versions, library paths and devices.
    Info,
    /// Environments: list them, benchmark stepping, record episodes.
    #[command(subcommand)]
    Envs(cli::envs::EnvsCommand),
    /// Architecture search on an image dataset (DARTS and friends); writes genotype.json.
    Search(cli::search::SearchArgs),
    /// Train a derived genotype from scratch (DARTS evaluation recipe) and report test accuracy.
    TrainArch(cli::search::TrainArchArgs),
    /// Show a genotype or draw its cells with Graphviz.
    #[command(subcommand)]
    Genotype(cli::search::GenotypeCommand),
    /// Grids of runs: plan, run (locally, on Ray, as a Slurm array), collect into one table.
    #[command(subcommand)]
    Sweep(cli::sweep::SweepCommand),
    /// (Re)build report.html of a run directory (pipeline or search) from what is on disk.
    Report(cli::report::ReportArgs),
    /// Data-parallel engines (MPI, NCCL): check one on the processes a launcher started.
    #[command(subcommand)]
    Dist(cli::dist::DistCommand),
    /// CPU vs CUDA agreement of the networks (scripts/gpu_check.sh runs it on a GPU machine).
    #[command(hide = true)]
    GpuCheck(cli::gpu_check::GpuCheckArgs),
}

fn main() {
    // Before anything asks libtorch about CUDA: it caches the first answer (see
    // device::load_cuda_backend).
    rl_darts::device::load_cuda_backend();
    // The glibc heap policy (device::keep_freed_memory_for_reuse) is chosen per workload by
    // the PPO loop, not here: it speeds up PPO and slows supervised supernet searches.
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => cli::train::run_train(args),
        Command::Eval(args) => cli::train::run_eval(args),
        Command::Info => cli::info::run(),
        Command::Envs(cmd) => cli::envs::run(cmd),
        Command::Search(args) => cli::search::run_search(args),
        Command::Report(args) => cli::report::run(args),
        Command::TrainArch(args) => cli::search::run_train_arch(args),
        Command::Genotype(cmd) => cli::search::run_genotype(cmd),
        Command::Sweep(cmd) => cli::sweep::run(cmd),
        Command::Dist(cmd) => cli::dist::run(cmd),
        Command::GpuCheck(args) => cli::gpu_check::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        // In a data-parallel run the other processes may wait for this one in a collective:
        // end them all (the launcher reports which process failed).
        rl_darts::distributed::abort_if_running(1);
        std::process::exit(1);
    }
    // MPI_Finalize, before exit: a launcher counts a process that exits without it as failed.
    rl_darts::distributed::finish();
}
