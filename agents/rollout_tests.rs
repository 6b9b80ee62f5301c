//! Unit tests of `rollout.rs` (kept apart so the module stays one concern).
use super::*;
use crate::envs::{EnvError, LevelInfo, StepView};
use crate::{FixedArch, Mlp, MlpConfig, NoHeartbeat};
use tch::{Kind, Tensor};

/// A deterministic test double: the observation is `[x, t, 0, 0]` where x counts steps in
/// the episode; action 1 earns reward 1, action 0 reward 0; episodes last `len` steps.
struct CountingEnv {
    spec: EnvSpec,
    len: u32,
    steps: Vec<u32>,
    obs: Tensor,
    reward: Vec<f32>,
    first: Vec<u8>,
    tracker: crate::envs::EpisodeTracker,
}

impl CountingEnv {
    fn new(num_envs: usize, len: u32) -> Self {
        Self {
            spec: EnvSpec {
                name: "counting".into(),
                num_envs,
                obs_shape: vec![4],
                obs_kind: Kind::Float,
                num_actions: 2,
            },
            len,
            steps: vec![0; num_envs],
            obs: Tensor::zeros([num_envs as i64, 4], (Kind::Float, Device::Cpu)),
            reward: vec![0.0; num_envs],
            first: vec![1; num_envs],
            tracker: crate::envs::EpisodeTracker::new(num_envs),
        }
    }
}

impl CountingEnv {
    fn write_obs(&mut self) {
        let x: Vec<f32> = self
            .steps
            .iter()
            .map(|&s| s as f32 / self.len as f32)
            .collect();
        self.obs
            .narrow(1, 0, 1)
            .copy_(&Tensor::from_slice(&x).unsqueeze(1));
    }
}

impl VecEnv for CountingEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }
    fn observe(&self) -> StepView<'_> {
        StepView {
            obs: &self.obs,
            reward: &self.reward,
            first: &self.first,
            finished: self.tracker.finished(),
            level: LevelInfo::default(),
        }
    }
    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError> {
        crate::envs::check_actions(&self.spec, actions)?;
        for (e, &a) in actions.iter().enumerate() {
            self.reward[e] = a as f32;
            self.steps[e] += 1;
            self.first[e] = u8::from(self.steps[e] == self.len);
            if self.steps[e] == self.len {
                self.steps[e] = 0;
            }
        }
        self.write_obs();
        self.tracker.record(&self.reward, &self.first, None);
        Ok(self.observe())
    }
    fn save_state(&self) -> Result<Vec<u8>, EnvError> {
        Ok(serde_json::to_vec(&(&self.steps, &self.reward, &self.first)).unwrap())
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError> {
        (self.steps, self.reward, self.first) = serde_json::from_slice(state).unwrap();
        self.write_obs();
        Ok(())
    }
}

fn trainer(config: PpoConfig, seed: u64) -> PpoTrainer {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = Mlp::new(vs.root() / "encoder", &[4], &MlpConfig::default()).unwrap();
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(enc), 2);
    let spec = CountingEnv::new(config.num_envs, 5).spec;
    PpoTrainer::new(vs, policy, &spec, config, seed).unwrap()
}

fn small_config() -> PpoConfig {
    PpoConfig {
        total_timesteps: 4 * 16 * 20,
        num_envs: 4,
        num_steps: 16,
        num_minibatches: 2,
        update_epochs: 2,
        learning_rate: 1e-2,
        anneal_lr: true,
        gamma: 0.9,
        ..PpoConfig::default()
    }
}

#[test]
fn rollout_fills_storage_and_reports_episodes() {
    let mut t = trainer(small_config(), 0);
    let mut env = CountingEnv::new(4, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let episodes = collect_rollout(
        &mut env,
        &t.policy,
        &mut t.storage,
        None,
        &mut rng,
        &(),
        &mut NoHeartbeat,
    )
    .unwrap();
    // 16 steps of 5-step episodes: 3 endings per env.
    assert_eq!(episodes.len(), 12);
    assert!(episodes.iter().all(|e| e.length == 5));
    // The raw reward equals the action taken.
    let actions = Vec::<i64>::try_from(t.storage.actions.flatten(0, -1)).unwrap();
    assert!(t
        .storage
        .rewards
        .iter()
        .zip(&actions)
        .all(|(&r, &a)| r == a as f32));
    // first flags: obs 0 starts episodes; then every 5th.
    assert!(t.storage.firsts[..4].iter().all(|&f| f == 1));
    assert!(t.storage.firsts[5 * 4..6 * 4].iter().all(|&f| f == 1));
    assert!(t.storage.firsts[4..5 * 4].iter().all(|&f| f == 0));
    // Stored log-probabilities are those of the stored actions.
    let ev = t.policy.evaluate(
        &t.storage.obs.flatten(0, 1),
        &t.storage.actions.flatten(0, 1),
        &(),
    );
    assert!(ev
        .logprob
        .allclose(&t.storage.logprobs.flatten(0, 1), 1e-5, 1e-5, false));
}

#[test]
fn training_learns_the_rewarding_action() {
    let mut t = trainer(small_config(), 1);
    let mut env = CountingEnv::new(4, 5);
    let mut last = None;
    while !t.is_done() {
        last = Some(
            t.iteration(&mut env, &mut FixedArch, &mut NoHeartbeat)
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.iteration, 20);
    assert_eq!(last.global_step, 20 * 64);
    // The last iteration's learning rate is 1/20 of the initial one.
    assert!((last.learning_rate - 1e-2 / 20.0).abs() < 1e-12);
    let mean_return: f64 =
        last.episodes.iter().map(|e| e.episode_return).sum::<f64>() / last.episodes.len() as f64;
    assert!(mean_return > 4.5, "mean return {mean_return} of 5");
}

#[test]
fn resumed_training_matches_uninterrupted_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = PpoConfig {
        norm_reward: true,
        ..small_config()
    };
    let mut a = trainer(config.clone(), 2);
    let mut env_a = CountingEnv::new(4, 5);
    for _ in 0..3 {
        a.iteration(&mut env_a, &mut FixedArch, &mut NoHeartbeat)
            .unwrap();
    }
    a.save(dir.path()).unwrap();
    let env_state = env_a.save_state().unwrap();
    // Another process: same config, different init, resumes from the checkpoint.
    let mut b = trainer(config, 77);
    b.load(dir.path()).unwrap();
    let mut env_b = CountingEnv::new(4, 5);
    env_b.load_state(&env_state).unwrap();
    assert_eq!(b.iterations_done(), 3);
    assert_eq!(b.global_step(), 3 * 64);
    assert_eq!(b.normalizer, a.normalizer);
    let sa = a
        .iteration(&mut env_a, &mut FixedArch, &mut NoHeartbeat)
        .unwrap();
    let sb = b
        .iteration(&mut env_b, &mut FixedArch, &mut NoHeartbeat)
        .unwrap();
    assert_eq!(sa.ppo, sb.ppo);
    for (name, w) in a.vs.variables() {
        assert!(w.equal(&b.vs.variables()[&name]), "{name} differs");
    }
}

#[test]
fn load_rejects_another_config() {
    let dir = tempfile::tempdir().unwrap();
    trainer(small_config(), 3).save(dir.path()).unwrap();
    let mut other = trainer(
        PpoConfig {
            gamma: 0.5,
            ..small_config()
        },
        3,
    );
    assert!(matches!(
        other.load(dir.path()),
        Err(AgentError::Checkpoint { .. })
    ));
    let mut longer = trainer(
        PpoConfig {
            total_timesteps: 1 << 20,
            ..small_config()
        },
        3,
    );
    longer.load(dir.path()).unwrap();
}

#[test]
fn mismatched_env_is_an_error() {
    let config = small_config();
    let mut t = trainer(config, 4);
    let mut env = CountingEnv::new(3, 5);
    assert!(matches!(
        t.iteration(&mut env, &mut FixedArch, &mut NoHeartbeat),
        Err(AgentError::Config(_))
    ));
}
