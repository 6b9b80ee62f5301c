//! rl-darts: differentiable neural architecture search for reinforcement learning and vision.
//!
//! Module map (imports point one way only): `envs` -> (nothing of ours); `agents` -> `envs`;
//! `nas` -> `agents::Encoder`; `search` -> `nas`; `train` and the CLI -> everything. `envs`
//! and `agents` are the workspace's member crates rl-darts-envs and rl-darts-agents, so the
//! compiler holds those two to their direction.

// The member crates under the names the rest of the crate and the tests use (`crate::envs`,
// `rl_darts::agents`).
pub use rl_darts_agents as agents;
pub use rl_darts_envs as envs;

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
