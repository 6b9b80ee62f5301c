//! Subcommand implementations.

pub mod envs;
pub mod info;
pub mod train;
