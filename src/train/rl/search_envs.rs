//! The search rollout of a bilevel strategy: `search_envs` more environments (on the training
//! levels, or on held-out levels), stepped by the policy with the iteration's architecture just
//! before the training rollout; their transitions feed the alpha steps only.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::config::{SearchBatch, TrainConfig};
use super::io::{read, write};
use crate::agents::{collect_rollout, ActorCritic, Batch, RewardNormalizer, RolloutStorage};
use crate::envs::procgen::ProcgenOptions;
use crate::envs::{make_vec_env, EpisodeStats, VecEnv};
use crate::nas::CellWeights;
use crate::train::TrainError;

const SEARCH_ENV_STATE_FILE: &str = "search_env_state.bin";
const SEARCH_LOOP_FILE: &str = "search_loop.json";
/// Offsets the search envs' level-seed generator from the training envs' one, so the two sets
/// of envs never replay each other's level sequence.
const SEARCH_SEED_OFFSET: u64 = 1_000_003;

/// The env options of the search rollout (`[search] search_batch`), or why they cannot work.
pub(super) fn search_env_options(
    config: &TrainConfig,
) -> Result<(u64, ProcgenOptions), TrainError> {
    let s = &config.search;
    if s.search_envs == Some(0) {
        return Err(TrainError::Invalid(
            "search.search_envs must be at least 1".into(),
        ));
    }
    let base = config.procgen.rand_seed.map_or(config.seed, |r| r as u64);
    let seed = base.wrapping_add(SEARCH_SEED_OFFSET);
    let mut options = ProcgenOptions {
        rand_seed: Some((seed % i32::MAX as u64) as i32),
        ..config.procgen.clone()
    };
    if s.search_batch == SearchBatch::HeldoutLevels {
        if !config.is_procgen() {
            return Err(TrainError::Invalid(format!(
                "search.search_batch = \"heldout_levels\" needs a Procgen env ('{}' has no levels); use \"rollout_split\"",
                config.env
            )));
        }
        if config.procgen.num_levels <= 0 || s.heldout_num_levels <= 0 {
            return Err(TrainError::Invalid(format!(
                "search.search_batch = \"heldout_levels\" needs procgen.num_levels > 0 (training on a finite level set) and search.heldout_num_levels > 0; got {} and {}",
                config.procgen.num_levels, s.heldout_num_levels
            )));
        }
        let start = i64::from(config.procgen.start_level) + i64::from(config.procgen.num_levels);
        options.start_level = i32::try_from(start).map_err(|_| {
            TrainError::Invalid(format!(
                "held-out levels would start at {start}, beyond int32"
            ))
        })?;
        options.num_levels = s.heldout_num_levels;
    }
    Ok((seed, options))
}

/// The search envs of a bilevel strategy and their rollout storage.
struct SearchEnv {
    env: Box<dyn VecEnv>,
    storage: RolloutStorage,
    normalizer: Option<RewardNormalizer>,
}

/// The loop's side of the search: the search envs (built when a bilevel strategy first asks
/// for an alpha step; single-level strategies never need them) and the generator for their
/// actions and for the alpha steps' minibatches, all checkpointed.
pub(super) struct SearchLoop {
    env: Option<SearchEnv>,
    /// Actions of the search rollout and the alpha steps' minibatches.
    pub(super) rng: ChaCha8Rng,
}

#[derive(Serialize, Deserialize)]
struct SearchLoopState {
    rng: ChaCha8Rng,
    normalizer: Option<RewardNormalizer>,
    has_env: bool,
}

impl SearchLoop {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            env: None,
            rng: ChaCha8Rng::seed_from_u64(seed.wrapping_add(SEARCH_SEED_OFFSET)),
        }
    }

    fn build_env(config: &TrainConfig, device: Device) -> Result<SearchEnv, TrainError> {
        let (seed, options) = search_env_options(config)?;
        let search_envs = config.search.search_envs(config.ppo.num_envs);
        let env = make_vec_env(&config.env, search_envs, seed, &options)?;
        let storage = RolloutStorage::new(env.spec(), config.ppo.num_steps, device)?;
        let normalizer = config
            .ppo
            .norm_reward
            .then(|| RewardNormalizer::new(search_envs, config.ppo.gamma, config.ppo.reward_clip));
        Ok(SearchEnv {
            env,
            storage,
            normalizer,
        })
    }

    /// One rollout of the search envs with `policy` running `weights` (rewards normalised like
    /// the training rollout's, by their own running statistics, so the value loss sees one
    /// scale) and its PPO batch.
    pub(super) fn collect(
        &mut self,
        config: &TrainConfig,
        device: Device,
        policy: &ActorCritic<CellWeights>,
        weights: &CellWeights,
    ) -> Result<(Batch, Vec<EpisodeStats>), TrainError> {
        if self.env.is_none() {
            self.env = Some(Self::build_env(config, device)?);
        }
        let s = self.env.as_mut().expect("built above");
        let episodes = collect_rollout(
            s.env.as_mut(),
            policy,
            &mut s.storage,
            s.normalizer.as_mut(),
            &mut self.rng,
            weights,
        )?;
        let (_, next_value) = tch::no_grad(|| policy.forward(&s.storage.next_obs, weights));
        let batch =
            s.storage
                .compute_batch(&next_value, config.ppo.gamma, config.ppo.gae_lambda)?;
        Ok((batch, episodes))
    }

    pub(super) fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let state = SearchLoopState {
            rng: self.rng.clone(),
            normalizer: self.env.as_ref().and_then(|s| s.normalizer.clone()),
            has_env: self.env.is_some(),
        };
        if let Some(s) = &self.env {
            write(&dir.join(SEARCH_ENV_STATE_FILE), &s.env.save_state()?)?;
        }
        write(
            &dir.join(SEARCH_LOOP_FILE),
            &serde_json::to_vec_pretty(&state).expect("search loop state serialises"),
        )
    }

    pub(super) fn load(
        &mut self,
        dir: &Path,
        config: &TrainConfig,
        device: Device,
    ) -> Result<(), TrainError> {
        let path = dir.join(SEARCH_LOOP_FILE);
        let state: SearchLoopState =
            serde_json::from_slice(&read(&path)?).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        self.rng = state.rng;
        self.env = None;
        if state.has_env {
            let mut s = Self::build_env(config, device)?;
            s.env.load_state(&read(&dir.join(SEARCH_ENV_STATE_FILE))?)?;
            if state.normalizer.as_ref().map(|n| n.returns.len())
                != s.normalizer.as_ref().map(|n| n.returns.len())
            {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: "search reward normaliser state does not fit".into(),
                });
            }
            s.normalizer = state.normalizer;
            self.env = Some(s);
        }
        Ok(())
    }
}
