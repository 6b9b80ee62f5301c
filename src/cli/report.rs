//! `rl-darts report RUN_DIR`: (re)builds a run's self-contained report.html from what is on
//! disk, also for a run that was stopped ([`rl_darts::report`]).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A pipeline run directory (runs/<env>__pipeline__...) or a search / training run
    /// directory.
    pub run_dir: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let outcome = rl_darts::report::write_report(&args.run_dir)?;
    println!("wrote {}", outcome.path.display());
    if !outcome.missing.is_empty() {
        println!("not in the run yet: {}", outcome.missing.join("; "));
    }
    Ok(())
}
