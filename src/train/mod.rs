//! Training loops (RL with PPO; supervised and RL architecture search build on these), the
//! RL-DARTS pipeline (search, derive, retrain, eval), run directories and checkpoints.

pub mod checkpoint;
pub mod health;
pub mod launch;
pub mod pipeline;
pub mod progress;
pub mod rl;
pub mod run_dir;
pub mod supervised;

use std::path::PathBuf;

/// Errors of a training or evaluation run (RL and supervised), one variant per boundary: the
/// layers below convert with `?` and keep their own messages. The supervised loops add their
/// data and per-epoch failures in [`supervised::SupervisedError`].
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A run that cannot work as configured; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// A search strategy's failure (its configuration, a step, its checkpoint).
    #[error("search: {0}")]
    Search(#[from] crate::search::SearchError),
    #[error(transparent)]
    Nas(#[from] crate::nas::NasError),
    #[error(transparent)]
    Precision(#[from] crate::precision::PrecisionError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    #[error(transparent)]
    Env(#[from] crate::envs::EnvError),
    #[error(transparent)]
    Agent(#[from] crate::agents::AgentError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error("tensor error: {0}")]
    Tch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A lower layer's error, prefixed with the config key (or the part of the run) it is
    /// about, so the user knows what to change; the error itself stays reachable as the
    /// source.
    #[error("{context}: {source}")]
    About {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error(
        "{what} became {value} at iteration {iteration}; the run stopped without saving the \
         diverged weights. {}Try a lower ppo.learning_rate or ppo.max_grad_norm.",
        match last_checkpoint { Some(p) => format!("The last good checkpoint is {} (resume with --resume). ", p.display()), None => String::new() }
    )]
    NonFinite {
        iteration: u64,
        what: String,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
}

impl TrainError {
    /// `source` as an error about `context` (a config key such as `search.strategy`).
    pub fn about(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TrainError::About {
            context,
            source: Box::new(source),
        }
    }
}
