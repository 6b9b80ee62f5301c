//! Classic control from gym-rs (CartPole, MountainCar) behind the `VecEnv` trait: N
//! instances, auto-reset, Gym's time limits and reset distributions.
//!
//! gym-rs 0.3.0 quirks handled here: CartPole resets to U(-0.5, 0.5) instead of Gym's
//! U(-0.05, 0.05), and `truncated` is never set. Initial states are therefore drawn from our
//! own seeded RNG with Gym's bounds, and the time limit is enforced here.

use gym_rs::core::Env;
use gym_rs::envs::classical_control::cartpole::{CartPoleEnv, CartPoleObservation};
use gym_rs::envs::classical_control::mountain_car::{MountainCarEnv, MountainCarObservation};
use gym_rs::utils::renderer::RenderMode;
use ordered_float::OrderedFloat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::error::did_you_mean;
use super::{check_actions, EnvError, EnvSpec, EpisodeTracker, LevelInfo, StepView, VecEnv};

/// Names accepted by `--env` for this module.
pub const GYM_ENVS: [&str; 2] = ["cartpole", "mountaincar"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GymEnvKind {
    /// CartPole-v1: 4 state floats, 2 actions, reward 1 per step, 500-step limit.
    CartPole,
    /// MountainCar-v0: 2 state floats, 3 actions, reward -1 per step, 200-step limit.
    MountainCar,
}

impl GymEnvKind {
    pub fn from_name(name: &str) -> Result<Self, EnvError> {
        match name {
            "cartpole" => Ok(GymEnvKind::CartPole),
            "mountaincar" => Ok(GymEnvKind::MountainCar),
            _ => Err(EnvError::UnknownEnv {
                name: name.to_string(),
                hint: did_you_mean(name, super::all_env_names()),
                valid: super::all_env_names().join(", "),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GymEnvKind::CartPole => "cartpole",
            GymEnvKind::MountainCar => "mountaincar",
        }
    }

    /// Gym's registered `max_episode_steps`.
    pub fn default_time_limit(self) -> u64 {
        match self {
            GymEnvKind::CartPole => 500,
            GymEnvKind::MountainCar => 200,
        }
    }

    fn obs_dim(self) -> usize {
        match self {
            GymEnvKind::CartPole => 4,
            GymEnvKind::MountainCar => 2,
        }
    }

    fn num_actions(self) -> i64 {
        match self {
            GymEnvKind::CartPole => 2,
            GymEnvKind::MountainCar => 3,
        }
    }
}

#[derive(Debug, Clone)]
enum Instance {
    CartPole(Box<CartPoleEnv>),
    MountainCar(Box<MountainCarEnv>),
}

impl Instance {
    fn new(kind: GymEnvKind) -> Self {
        match kind {
            GymEnvKind::CartPole => {
                Instance::CartPole(Box::new(CartPoleEnv::new(RenderMode::None)))
            }
            GymEnvKind::MountainCar => {
                Instance::MountainCar(Box::new(MountainCarEnv::new(RenderMode::None)))
            }
        }
    }

    /// Resets internal flags, then sets Gym's initial-state distribution from `rng`.
    fn reset(&mut self, rng: &mut ChaCha8Rng, obs: &mut [f32]) {
        let seed = rng.gen::<u64>();
        match self {
            Instance::CartPole(env) => {
                env.reset(Some(seed), false, None);
                let mut u = || OrderedFloat(rng.gen_range(-0.05..0.05));
                env.state = CartPoleObservation::new(u(), u(), u(), u());
            }
            Instance::MountainCar(env) => {
                env.reset(Some(seed), false, None);
                env.state = MountainCarObservation::new(
                    OrderedFloat(rng.gen_range(-0.6..-0.4)),
                    OrderedFloat(0.0),
                );
            }
        }
        self.write_obs(obs);
    }

    /// The exact (f64) physical state, for snapshots.
    fn state(&self) -> Vec<f64> {
        match self {
            Instance::CartPole(env) => env.state.into(),
            Instance::MountainCar(env) => env.state.into(),
        }
    }

    fn set_state(&mut self, s: &[f64]) {
        let f = |i: usize| OrderedFloat(s[i]);
        match self {
            Instance::CartPole(env) => env.state = CartPoleObservation::new(f(0), f(1), f(2), f(3)),
            Instance::MountainCar(env) => env.state = MountainCarObservation::new(f(0), f(1)),
        }
    }

    fn write_obs(&self, obs: &mut [f32]) {
        for (dst, v) in obs.iter_mut().zip(self.state()) {
            *dst = v as f32;
        }
    }

    /// Returns (reward, terminated).
    fn step(&mut self, action: usize, obs: &mut [f32]) -> (f32, bool) {
        let (reward, done) = match self {
            Instance::CartPole(env) => {
                let r = env.step(action);
                (r.reward.into_inner(), r.done)
            }
            Instance::MountainCar(env) => {
                let r = env.step(action);
                (r.reward.into_inner(), r.done)
            }
        };
        self.write_obs(obs);
        (reward as f32, done)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GymSnapshot {
    kind: GymEnvKind,
    states: Vec<Vec<f64>>,
    rng: ChaCha8Rng,
    steps: Vec<u64>,
    reward: Vec<f32>,
    first: Vec<u8>,
    tracker: EpisodeTracker,
}

/// N independent classic-control envs with gym3 semantics: after a terminal or truncated
/// step the returned observation is already the first of the next episode and `first = 1`.
pub struct GymVecEnv {
    kind: GymEnvKind,
    spec: EnvSpec,
    envs: Vec<Instance>,
    rng: ChaCha8Rng,
    time_limit: u64,
    steps: Vec<u64>,
    obs_buf: Vec<f32>,
    /// [N, obs_dim] f32, refreshed from `obs_buf` after each step.
    obs: Tensor,
    reward: Vec<f32>,
    first: Vec<u8>,
    tracker: EpisodeTracker,
}

// SAFETY: gym-rs envs hold SDL handles (Rc, raw pointers) only inside `Screen::gui`, which is
// created lazily by a render in a visible mode. Every instance here is built with
// `RenderMode::None` and never rendered otherwise, so `gui` stays `None` and no SDL object
// exists; what remains (floats, RNGs, Vecs) is plain owned data, safe to move across threads.
unsafe impl Send for GymVecEnv {}

impl GymVecEnv {
    /// `seed` drives every reset, so equal seeds and actions give equal trajectories.
    pub fn new(kind: GymEnvKind, num_envs: usize, seed: u64) -> Result<Self, EnvError> {
        Self::with_time_limit(kind, num_envs, seed, kind.default_time_limit())
    }

    pub fn with_time_limit(
        kind: GymEnvKind,
        num_envs: usize,
        seed: u64,
        time_limit: u64,
    ) -> Result<Self, EnvError> {
        if num_envs == 0 {
            return Err(EnvError::InvalidOption {
                option: "num_envs",
                value: "0".into(),
                reason: "must be >= 1".into(),
            });
        }
        if time_limit == 0 {
            return Err(EnvError::InvalidOption {
                option: "time_limit",
                value: "0".into(),
                reason: "must be >= 1".into(),
            });
        }
        let dim = kind.obs_dim();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut envs: Vec<Instance> = (0..num_envs).map(|_| Instance::new(kind)).collect();
        let mut obs_buf = vec![0f32; num_envs * dim];
        for (env, obs) in envs.iter_mut().zip(obs_buf.chunks_mut(dim)) {
            env.reset(&mut rng, obs);
        }
        let obs = Tensor::from_slice(&obs_buf).view([num_envs as i64, dim as i64]);
        Ok(Self {
            kind,
            spec: EnvSpec {
                name: kind.name().to_string(),
                num_envs,
                obs_shape: vec![dim as i64],
                obs_kind: Kind::Float,
                num_actions: kind.num_actions(),
            },
            envs,
            rng,
            time_limit,
            steps: vec![0; num_envs],
            obs_buf,
            obs,
            reward: vec![0.0; num_envs],
            first: vec![1; num_envs],
            tracker: EpisodeTracker::new(num_envs),
        })
    }

    pub fn kind(&self) -> GymEnvKind {
        self.kind
    }

    fn view(&self) -> StepView<'_> {
        StepView {
            obs: &self.obs,
            reward: &self.reward,
            first: &self.first,
            finished: self.tracker.finished(),
            level: LevelInfo::default(),
        }
    }
}

impl VecEnv for GymVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn observe(&self) -> StepView<'_> {
        self.view()
    }

    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError> {
        check_actions(&self.spec, actions)?;
        let dim = self.kind.obs_dim();
        for (i, (env, obs)) in self
            .envs
            .iter_mut()
            .zip(self.obs_buf.chunks_mut(dim))
            .enumerate()
        {
            let (reward, terminated) = env.step(actions[i] as usize, obs);
            self.steps[i] += 1;
            let truncated = self.steps[i] >= self.time_limit;
            self.reward[i] = reward;
            self.first[i] = u8::from(terminated || truncated);
            if terminated || truncated {
                self.steps[i] = 0;
                env.reset(&mut self.rng, obs);
            }
        }
        self.obs = Tensor::from_slice(&self.obs_buf).view([self.spec.num_envs as i64, dim as i64]);
        self.tracker.record(&self.reward, &self.first, None);
        Ok(self.view())
    }

    fn save_state(&self) -> Result<Vec<u8>, EnvError> {
        let snap = GymSnapshot {
            kind: self.kind,
            states: self.envs.iter().map(Instance::state).collect(),
            rng: self.rng.clone(),
            steps: self.steps.clone(),
            reward: self.reward.clone(),
            first: self.first.clone(),
            tracker: self.tracker.clone(),
        };
        bincode::serialize(&snap).map_err(|e| EnvError::State(e.to_string()))
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError> {
        let snap: GymSnapshot = bincode::deserialize(state)
            .map_err(|e| EnvError::State(format!("corrupt {} state: {e}", self.kind.name())))?;
        let n = self.spec.num_envs;
        let dim = self.kind.obs_dim();
        if snap.kind != self.kind
            || snap.states.len() != n
            || snap.states.iter().any(|s| s.len() != dim)
            || [snap.steps.len(), snap.reward.len(), snap.first.len()]
                .iter()
                .any(|&l| l != n)
        {
            return Err(EnvError::State(format!(
                "saved for another env than {} x {n}",
                self.kind.name()
            )));
        }
        for ((env, s), obs) in self
            .envs
            .iter_mut()
            .zip(&snap.states)
            .zip(self.obs_buf.chunks_mut(dim))
        {
            env.set_state(s);
            env.write_obs(obs);
        }
        self.obs = Tensor::from_slice(&self.obs_buf).view([n as i64, dim as i64]);
        self.rng = snap.rng;
        self.steps = snap.steps;
        self.reward = snap.reward;
        self.first = snap.first;
        self.tracker = snap.tracker;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cartpole_resets_within_gym_bounds_and_is_deterministic() {
        let a = GymVecEnv::new(GymEnvKind::CartPole, 16, 7).unwrap();
        let b = GymVecEnv::new(GymEnvKind::CartPole, 16, 7).unwrap();
        assert_eq!(a.obs_buf, b.obs_buf);
        assert!(a.obs_buf.iter().all(|v| v.abs() <= 0.05));
        assert_eq!(a.observe().obs.size(), [16, 4]);
    }

    #[test]
    fn random_cartpole_episodes_average_about_22_steps() {
        // Gym's CartPole under a uniformly random policy averages ~22 steps per episode.
        let mut env = GymVecEnv::new(GymEnvKind::CartPole, 8, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut lengths = Vec::new();
        while lengths.len() < 2000 {
            let actions: Vec<i64> = (0..8).map(|_| rng.gen_range(0..2)).collect();
            let step = env.step(&actions).unwrap();
            lengths.extend(step.finished.iter().map(|e| e.length as f64));
        }
        let mean = lengths.iter().sum::<f64>() / lengths.len() as f64;
        assert!(
            (19.0..25.0).contains(&mean),
            "mean random episode length {mean}"
        );
        // Return equals length: +1 per step including the terminal one.
    }

    #[test]
    fn time_limit_truncates_and_autoresets() {
        let mut env = GymVecEnv::with_time_limit(GymEnvKind::MountainCar, 2, 0, 200).unwrap();
        let mut finished = Vec::new();
        for t in 1..=200 {
            let step = env.step(&[1, 1]).unwrap();
            if t < 200 {
                assert!(step.first.iter().all(|&f| f == 0));
            }
            finished.extend_from_slice(step.finished);
        }
        assert_eq!(finished.len(), 2);
        assert!(finished
            .iter()
            .all(|e| e.length == 200 && e.episode_return == -200.0));
        let obs = Vec::<f32>::try_from(env.observe().obs.flatten(0, -1)).unwrap();
        assert!((-0.6..=-0.4).contains(&obs[0]) && obs[1] == 0.0, "{obs:?}");
    }

    #[test]
    fn snapshot_restores_the_exact_trajectory() {
        let mut a = GymVecEnv::new(GymEnvKind::CartPole, 4, 3).unwrap();
        let acts = |t: usize| -> Vec<i64> { (0..4).map(|i| ((t * 3 + i) % 2) as i64).collect() };
        for t in 0..37 {
            a.step(&acts(t)).unwrap();
        }
        let saved = a.save_state().unwrap();
        let mut b = GymVecEnv::new(GymEnvKind::CartPole, 4, 99).unwrap();
        b.load_state(&saved).unwrap();
        for t in 37..200 {
            let ra = a.step(&acts(t)).unwrap().obs.copy();
            let rb = b.step(&acts(t)).unwrap().obs.copy();
            assert!(ra.equal(&rb), "diverged at step {t}");
        }
        assert!(b.load_state(&saved[..10]).is_err());
        let mut c = GymVecEnv::new(GymEnvKind::MountainCar, 4, 0).unwrap();
        assert!(c.load_state(&saved).is_err());
    }

    #[test]
    fn bad_actions_are_errors() {
        let mut env = GymVecEnv::new(GymEnvKind::CartPole, 2, 0).unwrap();
        assert!(matches!(env.step(&[0]), Err(EnvError::ActionCount { .. })));
        assert!(matches!(
            env.step(&[0, 2]),
            Err(EnvError::ActionOutOfRange { .. })
        ));
        assert!(GymEnvKind::from_name("cartpol")
            .unwrap_err()
            .to_string()
            .contains("did you mean 'cartpole'"));
    }
}
