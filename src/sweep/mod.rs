//! Sweeps: a grid of `rl-darts train` / `rl-darts search` runs planned once, run one trial at a
//! time by index on any engine (this machine, a Ray cluster, a Slurm array), and collected into
//! one table with the interquartile mean and stratified-bootstrap intervals of Agarwal et al.
//! (2021, "Deep RL at the edge of the statistical precipice").
//!
//! Every runner launches the same binary with the same plan file: `rl-darts sweep run PLAN
//! --index I` runs trial I as a child process of `rl-darts train` or `rl-darts search`, so a
//! trial is exactly the run a user would start by hand, and its run directory resumes the same
//! way (`--resume`). No scheduler lives here: the local runner is a bounded pool of threads,
//! Ray and Slurm schedule the others.
//!
//! Files: `spec` (the sweep as the user writes it), `plan` (the grid and the plan file), `trial` (a trial's state on disk and running it),
//! `local`, `ray`, `slurm` (runners), `collect` (the table), `stats` (IQM and bootstrap),
//! `tfevents` (reading TensorBoard scalars), `plot` (learning curves as PNG), `validate`
//! (plan-time config checks).

use std::path::PathBuf;

pub mod collect;
pub mod local;
pub mod plan;
pub mod plot;
pub mod ray;
pub mod slurm;
pub mod spec;
pub mod stats;
pub mod tfevents;
pub mod trial;
pub mod validate;

pub use collect::{collect, Collected};
pub use plan::{Plan, Trial, TrialMode};
pub use spec::SweepSpec;
pub use trial::{run_trial, TrialOutcome, TrialState};

/// Errors of the sweep machinery, one variant per boundary.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The sweep spec (TOML or flags) is invalid; the message names the key.
    #[error("sweep spec: {0}")]
    Spec(String),
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("trial index {index} is out of range: the plan {plan} has {len} trials (0..{len})")]
    IndexOutOfRange {
        index: usize,
        len: usize,
        plan: PathBuf,
    },
    /// A child process (a trial, the Ray driver) could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// Reading a TensorBoard events file.
    #[error("TensorBoard events {path}: {reason}")]
    Events { path: PathBuf, reason: String },
    /// Drawing a plot.
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    /// Ray is not installed, or its driver failed.
    #[error("ray: {0}")]
    Ray(String),
}

/// `map_err` helper: an io::Error about `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SweepError + '_ {
    move |source| SweepError::Io {
        path: path.to_path_buf(),
        source,
    }
}
