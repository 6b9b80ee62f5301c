//! Errors at the environment boundary (options, the C library, actions).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("unknown environment '{name}'{hint}; valid environments: {valid}")]
    UnknownEnv {
        name: String,
        hint: String,
        valid: String,
    },
    #[error("invalid option {option} = {value}: {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the procgen library is not at {path}: {reason}.\n  Run `make setup` (it unpacks the \
         procgen==0.10.7 wheel into .deps/), or set RL_DARTS_PROCGEN_DIR to the wheel's \
         procgen/data folder (holding prebuilt/libenv.so and assets/)."
    )]
    LibraryMissing { path: PathBuf, reason: String },
    #[error(
        "the procgen library at {path} speaks libenv version {found}, this build needs {expected}"
    )]
    LibraryVersion {
        path: PathBuf,
        found: i32,
        expected: i32,
    },
    #[error("libenv_make returned no environment for '{env}' (the library rejected the options)")]
    MakeFailed { env: String },
    #[error("the procgen library reports an unexpected {space} space: {detail}")]
    UnexpectedSpace { space: &'static str, detail: String },
    #[error("expected {expected} actions (one per env), got {got}")]
    ActionCount { expected: usize, got: usize },
    #[error("action {action} for env {env} is out of range 0..{num_actions}")]
    ActionOutOfRange {
        env: usize,
        action: i64,
        num_actions: i64,
    },
    #[error("cannot restore env state: {0}")]
    State(String),
    #[error("tensor error: {0}")]
    Tch(#[from] tch::TchError),
}

/// "unknown X 'foo'" hints: the closest valid name, if it is close enough to be a typo.
pub fn did_you_mean<'a>(given: &str, valid: impl IntoIterator<Item = &'a str>) -> String {
    valid
        .into_iter()
        .map(|v| (strsim::jaro_winkler(given, v), v))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| format!(" (did you mean '{v}'?)"))
        .unwrap_or_default()
}
