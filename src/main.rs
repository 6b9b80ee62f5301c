//! The `rl-darts` command line: thin clap wrappers over the library; anyhow lives here only.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "rl-darts", version, about = "Differentiable architecture search for RL and vision, on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Versions, library paths and devices.
    Info,
    /// Environments: list them, benchmark stepping, record episodes.
    #[command(subcommand)]
    Envs(cli::envs::EnvsCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => cli::info::run(),
        Command::Envs(cmd) => cli::envs::run(cmd),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
