//! Subcommand implementations.

pub mod dist;
pub mod envs;
pub mod gpu_check;
pub mod info;
pub mod report;
pub mod search;
pub mod sweep;
pub mod train;
pub mod transformer;
