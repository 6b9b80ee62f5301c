//! Errors of the agent layer: configuration, checkpoints, and the boundaries it calls into
//! (tensors, environments, files).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid PPO configuration: {0}")]
    Config(String),
    #[error("observation shape {got:?} does not fit this encoder, which expects {expected}")]
    ObsShape { got: Vec<i64>, expected: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("environment error: {0}")]
    Env(#[from] crate::envs::EnvError),
    #[error("tensor error: {0}")]
    Tch(#[from] tch::TchError),
    /// Gradients an optimiser cannot take (see [`crate::agents::optim::OptimError`]).
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// Raised by the encoder's architecture (a search strategy's sample or step), passed
    /// through with its own message.
    #[error("architecture: {0}")]
    Arch(String),
    /// A collective of a data-parallel update failed (its engine's message).
    #[error("data-parallel: {0}")]
    DataParallel(String),
    /// The iteration was abandoned on request (its heartbeat said stop).
    #[error("the iteration was stopped before its end")]
    Interrupted,
    /// A non-finite loss or gradient norm in the update (the run stops before stepping on it).
    #[error("PPO update: {what} is {value} at minibatch {minibatch}")]
    NonFinite {
        what: &'static str,
        value: f64,
        minibatch: usize,
    },
}
