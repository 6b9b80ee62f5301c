//! rl-darts: differentiable neural architecture search for reinforcement learning and vision.
//!
//! Module map (imports point one way only): `envs` -> (nothing of ours); `agents` -> `envs`;
//! `nas` -> `agents::Encoder`; `search` -> `nas`; `train` and the CLI -> everything.

#[path = "../envs/mod.rs"]
pub mod envs;

#[path = "../agents/mod.rs"]
pub mod agents;

pub mod config;
pub mod cuda_check;
pub mod data;
pub mod device;
pub mod distributed;
pub mod logging;
pub mod media;
pub mod nas;
pub mod plots;
pub mod precision;
pub mod report;
pub mod search;
pub mod sweep;
pub mod train;
pub mod transformer;
