//! Memory-efficient differentiable transformer search: the multi-split reversible supernet of
//! Zhao, Dong, Wei, Zhou and Huang, "Memory-Efficient Differentiable Transformer Architecture
//! Search" (Findings of ACL 2021), built from the paper's equations (no official code).
//!
//! A layer splits its hidden state `X` along the embedding dimension into `n` parts and
//! computes `Y_k = X_k + G_k(H_k)`, `H_k = max(Y_1..Y_{k-1}, X_{k+1}..X_n)` (element-wise; mean
//! as an option); `G_k` is a mixed op over [`crate::nas::OpSet::Transformer`]. The layer is
//! invertible (`X_k = Y_k - G_k(H_k)` for `k = n..1`), so the reversible mode
//! ([`net::Mode::Reversible`]) keeps only the top layer's output and reconstructs every
//! layer's input during the backward pass ([`reversible`]); activation memory is flat in depth.
//! The same supernet in [`net::Mode::Plain`] is ordinary autograd: the gradient oracle and the
//! memory baseline; [`net::Mode::Checkpointed`] is the plain network with per-layer
//! activation checkpointing ([`recompute`]), the third memory baseline.
//!
//! How the search strategies of [`crate::search`] see it: the alphas are an
//! [`crate::nas::ArchParams`] over [`crate::nas::CellSpace::transformer`] (edge `k` = split
//! `k`; `alpha_normal` = encoder, `alpha_reduce` = decoder), shared by every layer (the paper
//! searches one block that is repeated), and [`objective::SeqObjective`] implements
//! [`crate::search::Objective`]: in reversible and checkpointed mode its losses are *surrogates* whose value is
//! the true loss and whose first derivatives are exactly the reconstructed gradients (see
//! [`objective`]). Strategies that need second derivatives through the network are refused
//! ([`objective::check_strategy`]).
//!
//! The loops: [`search`] (the supernet search, configured by [`config`], checkpointed every
//! epoch and resumed exactly by [`resume`]) and [`retrain`] (a derived or standard transformer from scratch, and random
//! search from scratch, the baselines of the search results).
//!
//! Departures from the paper, all for a CPU: widths and depths are small; the dynamic
//! convolutions (widths 3, 7, 11, 15) are one lightweight convolution of width 7; cross-attention
//! is the decoder's fixed third split only, not also a candidate of the other two (so encoder
//! and decoder share one 10-op set and one alpha shape); no dropout (nothing random to replay
//! in the recomputation); positions are sinusoidal.

pub mod bench;
pub mod bench_time;
pub mod config;
pub mod genotype;
pub mod mixed;
pub mod net;
pub mod objective;
pub mod ops;
pub mod recompute;
pub mod resume;
pub mod retrain;
pub mod reversible;
pub mod search;
pub mod tasks;

use std::path::PathBuf;

use crate::nas::NasError;
use crate::search::SearchError;

/// Errors of the transformer search, one variant per boundary.
#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    /// A configuration that cannot be built; the message says what to change.
    #[error("invalid transformer configuration: {0}")]
    Config(String),
    /// A search strategy this supernet cannot serve in the chosen mode, and why.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Nas(Box<NasError>),
    #[error(transparent)]
    Search(Box<SearchError>),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Train(Box<crate::train::TrainError>),
    #[error(transparent)]
    ConfigFile(Box<crate::config::ConfigError>),
    #[error(transparent)]
    Supervised(Box<crate::train::supervised::SupervisedError>),
}

/// The errors of the layers below, boxed (they are large and rare).
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for TransformerError {
            fn from(e: $ty) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Nas: NasError,
    Search: SearchError,
    Train: crate::train::TrainError,
    ConfigFile: crate::config::ConfigError,
    Supervised: crate::train::supervised::SupervisedError
);

/// The retraining Adam's errors, reported as the search reports them.
impl From<crate::agents::OptimError> for TransformerError {
    fn from(e: crate::agents::OptimError) -> Self {
        SearchError::from(e).into()
    }
}

impl TransformerError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
