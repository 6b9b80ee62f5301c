//! PPO agents, encoders and rollout storage (being written).
