//! Subcommand implementations.

pub mod envs;
pub mod info;
