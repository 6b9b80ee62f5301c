//! Errors of the search-space layer, one variant per boundary (names, genotype text, shapes,
//! files, libtorch, graphviz).

use std::path::PathBuf;

/// Everything in `nas` that can fail on user input or I/O.
#[derive(Debug, thiserror::Error)]
pub enum NasError {
    /// An op name that is not in the registry; `suggestion` is the closest known name.
    #[error("unknown op '{name}'{}; known ops: {known}", suggestion_text(.suggestion))]
    UnknownOp {
        name: String,
        suggestion: Option<&'static str>,
        known: String,
    },

    /// An op that exists but is not a member of the op set a network was built with.
    #[error("op '{op}' is not in op set '{op_set}' (members: {members})")]
    OpNotInSet {
        op: String,
        op_set: String,
        members: String,
    },

    /// The DARTS text form could not be parsed; `line` and `column` are 1-based.
    #[error("genotype text, line {line} column {column}: {message}")]
    GenotypeParse {
        line: usize,
        column: usize,
        message: String,
    },

    /// A genotype that is structurally wrong for the network it is used with.
    #[error("invalid genotype: {0}")]
    InvalidGenotype(String),

    /// A network, cell or op configuration that cannot be built.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Op weights or architecture parameters with the wrong shape for the cell space.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// A checkpoint that does not match the space it is loaded into.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("genotype JSON: {0}")]
    Json(#[from] serde_json::Error),

    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),

    /// The `dot` binary is not on PATH.
    #[error(
        "graphviz `dot` was not found on PATH; install graphviz (Debian/Ubuntu: \
         `apt-get install graphviz`, macOS: `brew install graphviz`) to render cell diagrams, \
         or write the .dot text and render it elsewhere"
    )]
    GraphvizMissing,

    /// `dot` ran and failed.
    #[error("graphviz `dot` failed: {0}")]
    Graphviz(String),
}

fn suggestion_text(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}
