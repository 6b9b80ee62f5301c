//! PPO training runs (Cobbe et al. 2020's Procgen recipe, CleanRL's tags): configuration,
//! the loop around `PpoTrainer` with logging, progress, checkpoints and exact resume, and
//! evaluation of a checkpoint on chosen levels.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::arch::{ArchSearch, RlDartsSearchConfig};
use super::run_dir::{run_of_checkpoint, RunDir};
use super::TrainError;
use crate::agents::{ActorCritic, Encoder, ImpalaCnn, ImpalaConfig, IterationStats, Mlp, MlpConfig, PpoConfig, PpoTrainer};
use crate::envs::procgen::{find_game, normalized_return, ProcgenOptions, ProcgenVecEnv};
use crate::envs::{gym::GYM_ENVS, make_vec_env, EnvSpec, EpisodeStats, VecEnv};
use crate::logging::{tags, MetricsSink};
use crate::nas::{Genotype, RlDartsConfig, RlDartsFixedEncoder, RlDartsSupernet};

/// Which network turns observations into features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case", deny_unknown_fields)]
pub enum EncoderConfig {
    /// IMPALA-CNN (Espeholt et al. 2018), the Procgen baseline.
    Impala(ImpalaConfig),
    /// A tanh MLP, for state-vector envs such as CartPole.
    Mlp(MlpConfig),
    /// RL-DARTS: a DARTS supernet whose alphas are searched jointly with PPO (first order).
    RlDarts(RlDartsSearchConfig),
    /// RL-DARTS retraining: the discrete cell derived by an `rl_darts` search, in the same
    /// layout, trained from scratch (Miao, Song et al. 2021, section 3).
    RlDartsFixed(RlDartsFixedConfig),
}

/// `[encoder] kind = "rl_darts_fixed"`: a derived genotype and the supernet layout it was
/// searched in (stages, channels, nodes, op set, cell output), which the discrete network
/// keeps; only the mixed ops become the genotype's chosen ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsFixedConfig {
    /// genotype.json (or the DARTS text form) written by an `rl_darts` search run. Required.
    pub genotype: PathBuf,
    /// The layout of the search's `encoder.params.supernet` (same keys and defaults).
    pub supernet: RlDartsConfig,
}

impl Default for RlDartsFixedConfig {
    fn default() -> Self {
        Self { genotype: PathBuf::new(), supernet: RlDartsConfig::default() }
    }
}

impl EncoderConfig {
    pub fn name(&self) -> &'static str {
        match self {
            EncoderConfig::Impala(_) => "impala",
            EncoderConfig::Mlp(_) => "mlp",
            EncoderConfig::RlDarts(_) => "rl_darts",
            EncoderConfig::RlDartsFixed(_) => "rl_darts_fixed",
        }
    }
}

/// Checkpoint cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many PPO iterations (and always at the end and on Ctrl-C).
    pub every: u64,
    /// Keep the newest this many checkpoints.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 10, keep: 3 }
    }
}

/// Everything a training run needs. TOML is the source of truth; see configs/.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A Procgen game (`coinrun`, ...) or a classic-control env (`cartpole`, `mountaincar`).
    pub env: String,
    /// Seeds libtorch, the Rust RNGs and procgen's `rand_seed` (unless set in [procgen]).
    pub seed: u64,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads (0 = libtorch's default: all cores).
    pub torch_threads: i32,
    pub encoder: EncoderConfig,
    pub ppo: PpoConfig,
    /// Training levels (Procgen only). Paper protocol: easy, 200 levels from 0.
    pub procgen: ProcgenOptions,
    pub checkpoint: CheckpointConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::procgen("coinrun")
    }
}

impl TrainConfig {
    /// The Procgen paper's setup: PPO defaults, IMPALA-CNN, easy mode, 200 training levels.
    pub fn procgen(env: &str) -> Self {
        Self {
            env: env.to_string(),
            seed: 1,
            device: "auto".into(),
            torch_threads: 0,
            encoder: EncoderConfig::Impala(ImpalaConfig::default()),
            ppo: PpoConfig::default(),
            procgen: ProcgenOptions { num_levels: 200, start_level: 0, ..ProcgenOptions::default() },
            checkpoint: CheckpointConfig::default(),
        }
    }

    /// CleanRL's ppo.py setup for classic control.
    pub fn classic_control(env: &str) -> Self {
        Self {
            env: env.to_string(),
            encoder: EncoderConfig::Mlp(MlpConfig::default()),
            ppo: PpoConfig::cartpole(),
            checkpoint: CheckpointConfig { every: 20, keep: 3 },
            ..Self::procgen(env)
        }
    }

    /// Defaults fitting `env`: classic control or Procgen.
    pub fn defaults_for(env: &str) -> Self {
        if GYM_ENVS.contains(&env) {
            Self::classic_control(env)
        } else {
            Self::procgen(env)
        }
    }

    pub fn is_procgen(&self) -> bool {
        !GYM_ENVS.contains(&self.env.as_str())
    }
}

/// Builds the encoder `config` describes for observations of `spec`; a searched encoder
/// reads its op weights from `arch`.
pub fn build_encoder(
    p: nn::Path,
    spec: &EnvSpec,
    config: &EncoderConfig,
    arch: Option<&ArchSearch>,
) -> Result<Box<dyn Encoder>, TrainError> {
    let shape = crate::agents::policy::encoder_input_shape(spec);
    Ok(match config {
        EncoderConfig::RlDarts(c) => {
            let arch = arch.expect("build_policy creates the arch search for rl_darts");
            let net = RlDartsSupernet::new(p, &c.supernet, &shape, arch.slot.clone())
                .map_err(|e| TrainError::Invalid(format!("encoder.params.supernet: {e}")))?;
            Box::new(net)
        }
        EncoderConfig::Impala(c) => {
            if shape.len() != 3 {
                return Err(TrainError::Invalid(format!(
                    "the impala encoder needs image observations; '{}' gives vectors of shape {:?} (use kind = \"mlp\")",
                    spec.name, spec.obs_shape
                )));
            }
            Box::new(ImpalaCnn::new(p, &shape, c)?)
        }
        EncoderConfig::Mlp(c) => Box::new(Mlp::new(p, &shape, c)?),
        EncoderConfig::RlDartsFixed(c) => {
            if c.genotype.as_os_str().is_empty() {
                return Err(TrainError::Invalid(
                    "encoder.params.genotype is required: the genotype.json an rl_darts search wrote".into(),
                ));
            }
            let genotype = Genotype::load(&c.genotype)
                .map_err(|e| TrainError::Invalid(format!("encoder.params.genotype: {e}")))?;
            let net = RlDartsFixedEncoder::new(p, &c.supernet, &genotype, &shape).map_err(|e| {
                TrainError::Invalid(format!(
                    "encoder.params: genotype {} does not fit the supernet layout: {e}",
                    c.genotype.display()
                ))
            })?;
            Box::new(net)
        }
    })
}

fn make_env(config: &TrainConfig, procgen: &ProcgenOptions) -> Result<Box<dyn VecEnv>, TrainError> {
    Ok(make_vec_env(&config.env, config.ppo.num_envs, config.seed, procgen)?)
}

/// The weights store, the policy, and (for a searched encoder) the architecture parameters,
/// each in its own store.
pub fn build_policy(
    config: &TrainConfig,
    spec: &EnvSpec,
    device: Device,
) -> Result<(nn::VarStore, ActorCritic, Option<ArchSearch>), TrainError> {
    let arch = match &config.encoder {
        EncoderConfig::RlDarts(c) => Some(ArchSearch::new(c, device)?),
        _ => None,
    };
    let vs = nn::VarStore::new(device);
    let encoder = build_encoder(vs.root() / "encoder", spec, &config.encoder, arch.as_ref())?;
    let policy = ActorCritic::new(vs.root() / "policy", encoder, spec.num_actions);
    Ok((vs, policy, arch))
}

/// Builds the trainer for `config` on `device`; a searched encoder's alpha optimizer is
/// stepped on every PPO backward pass (RL-DARTS joint first-order mode).
pub fn build_trainer(
    config: &TrainConfig,
    spec: &EnvSpec,
    device: Device,
) -> Result<(PpoTrainer, Option<ArchSearch>), TrainError> {
    let (vs, policy, arch) = build_policy(config, spec, device)?;
    let mut trainer = PpoTrainer::new(vs, policy, spec, config.ppo.clone(), config.seed)?;
    if let Some(a) = &arch {
        trainer.add_joint_optimizer(a.joint_optimizer());
    }
    Ok((trainer, arch))
}

const ENV_STATE_FILE: &str = "env_state.bin";
const LOOP_STATE_FILE: &str = "loop.json";
/// Episodes averaged for the reported "latest mean return" (the Procgen paper's window).
const RETURN_WINDOW: usize = 100;

/// Loop state beyond the trainer's, saved with each checkpoint so that logs of a resumed
/// run equal those of an uninterrupted one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoopState {
    recent_returns: VecDeque<f64>,
    episodes_done: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub iterations: u64,
    pub global_step: u64,
    /// Mean raw return of the last (up to) 100 training episodes.
    pub mean_return: Option<f64>,
    pub mean_normalized_return: Option<f64>,
    pub episodes: u64,
    pub interrupted: bool,
    pub last_checkpoint: Option<PathBuf>,
    /// Env steps per second over this process's iterations.
    pub steps_per_sec: f64,
    pub rollout_secs: f64,
    pub update_secs: f64,
}

/// Progress reporting for the loop (a bar in the CLI, nothing in tests).
pub trait Progress {
    fn update(&mut self, global_step: u64, total_steps: u64, message: &str);
    fn finish(&mut self, message: &str);
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {
    fn update(&mut self, _: u64, _: u64, _: &str) {}
    fn finish(&mut self, _: &str) {}
}

/// Options of one call to [`train`].
pub struct TrainRun<'a> {
    pub config: &'a TrainConfig,
    pub run_dir: &'a RunDir,
    /// Continue from the newest checkpoint of `run_dir`.
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    /// Set (by Ctrl-C) to stop after the current iteration with a checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop after this many iterations in this call (tests; None = until done).
    pub max_iterations: Option<u64>,
    /// Train on this env instead of building `config.env` (test doubles, wrappers).
    pub env: Option<Box<dyn VecEnv>>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Trains until `ppo.total_timesteps`, Ctrl-C, or `max_iterations`.
pub fn train(run: TrainRun<'_>) -> Result<TrainSummary, TrainError> {
    let config = run.config;
    let device = crate::device::parse_device(&config.device)?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads);
    }
    tch::manual_seed(config.seed as i64);
    let mut env = match run.env {
        Some(env) => env,
        None => make_env(config, &config.procgen)?,
    };
    let spec = env.spec().clone();
    let (mut trainer, mut arch) = build_trainer(config, &spec, device)?;
    let game = config.is_procgen().then(|| find_game(&config.env)).transpose()?;

    let mut state = LoopState::default();
    let mut last_checkpoint = None;
    if run.resume {
        let Some(ckpt) = run.run_dir.latest_checkpoint()? else {
            return Err(TrainError::Checkpoint {
                path: run.run_dir.checkpoints_dir(),
                reason: "no complete checkpoint to resume from".into(),
            });
        };
        trainer.load(&ckpt)?;
        if let Some(a) = arch.as_mut() {
            a.load(&ckpt)?;
        }
        let env_state = read(&ckpt.join(ENV_STATE_FILE))?;
        env.load_state(&env_state)?;
        let loop_path = ckpt.join(LOOP_STATE_FILE);
        state = serde_json::from_slice(&read(&loop_path)?)
            .map_err(|e| TrainError::Checkpoint { path: loop_path, reason: e.to_string() })?;
        last_checkpoint = Some(ckpt);
    } else {
        let markdown = crate::config::to_markdown(config)?;
        run.sink.text("config", &markdown, 0);
    }

    let save = |trainer: &PpoTrainer, arch: Option<&ArchSearch>, env: &dyn VecEnv, state: &LoopState| -> Result<PathBuf, TrainError> {
        run.run_dir.save_checkpoint(trainer.iterations_done(), config.checkpoint.keep, |dir| {
            trainer.save(dir)?;
            if let Some(a) = arch {
                a.save(dir)?;
            }
            write(&dir.join(ENV_STATE_FILE), &env.save_state()?)?;
            let json = serde_json::to_vec_pretty(state).expect("loop state serialises");
            write(&dir.join(LOOP_STATE_FILE), &json)
        })
    };

    let total = config.ppo.num_iterations() * config.ppo.batch_size() as u64;
    let batch = config.ppo.batch_size();
    let (mut rollout_secs, mut update_secs, mut iterations_here) = (0.0, 0.0, 0u64);
    let started = Instant::now();
    let mut interrupted = false;
    while !trainer.is_done() {
        if run.max_iterations.is_some_and(|m| iterations_here >= m) {
            break;
        }
        let stats = trainer.iteration(env.as_mut())?;
        iterations_here += 1;
        rollout_secs += stats.rollout_secs;
        update_secs += stats.update_secs;
        check_finite(&stats, last_checkpoint.as_deref())?;
        for ep in &stats.episodes {
            state.recent_returns.push_back(ep.episode_return);
            if state.recent_returns.len() > RETURN_WINDOW {
                state.recent_returns.pop_front();
            }
            state.episodes_done += 1;
        }
        log_iteration(run.sink, &stats, batch, game.map(|g| (g, config.procgen.distribution_mode)));
        if let Some(a) = &arch {
            if trainer.iterations_done() % a.config.log_every.max(1) == 0 {
                a.log(run.sink, stats.global_step as i64);
            }
        }
        let mean_return = mean(state.recent_returns.iter().copied());
        if let Some(m) = mean_return {
            run.sink.scalar("charts/mean_return_last100", m, stats.global_step as i64);
        }
        run.sink.flush();

        let elapsed = started.elapsed().as_secs_f64();
        let done_here = iterations_here * batch as u64;
        let sps = done_here as f64 / elapsed.max(1e-9);
        let eta = (total.saturating_sub(stats.global_step)) as f64 / sps.max(1e-9);
        run.progress.update(
            stats.global_step,
            total,
            &format!(
                "{sps:.0} steps/s | ETA {} | return {} | vloss {:.3} | kl {:.4}",
                format_secs(eta),
                mean_return.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into()),
                stats.ppo.value_loss,
                stats.ppo.approx_kl
            ),
        );

        let stop = run.stop.load(Ordering::SeqCst);
        if stop || trainer.iterations_done() % config.checkpoint.every.max(1) == 0 || trainer.is_done() {
            last_checkpoint = Some(save(&trainer, arch.as_ref(), env.as_ref(), &state)?);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    if !interrupted && last_checkpoint.as_ref().map_or(true, |c| !c.ends_with(format!("iter_{:08}", trainer.iterations_done()))) {
        last_checkpoint = Some(save(&trainer, arch.as_ref(), env.as_ref(), &state)?);
    }
    if let Some(a) = &arch {
        let g = a.write_genotype(&run.run_dir.root)?;
        run.sink.text("arch/final_genotype", &format!("`{}`", g.to_darts_string()), trainer.global_step() as i64);
    }
    let mean_return = mean(state.recent_returns.iter().copied());
    let summary = TrainSummary {
        run_dir: run.run_dir.root.clone(),
        iterations: trainer.iterations_done(),
        global_step: trainer.global_step(),
        mean_return,
        mean_normalized_return: game
            .zip(mean_return)
            .map(|(g, m)| normalized_return(g, config.procgen.distribution_mode, m)),
        episodes: state.episodes_done,
        interrupted,
        last_checkpoint,
        steps_per_sec: (iterations_here * batch as u64) as f64 / (rollout_secs + update_secs).max(1e-9),
        rollout_secs,
        update_secs,
    };
    run.progress.finish(&format!(
        "{} after {} steps: mean return (last 100) {}",
        if interrupted { "stopped" } else { "done" },
        summary.global_step,
        mean_return.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into())
    ));
    let path = run.run_dir.root.join("summary.json");
    write(&path, &serde_json::to_vec_pretty(&summary).expect("summary serialises"))?;
    Ok(summary)
}

fn check_finite(stats: &IterationStats, last_checkpoint: Option<&Path>) -> Result<(), TrainError> {
    let p = &stats.ppo;
    for (name, v) in [("policy_loss", p.policy_loss), ("value_loss", p.value_loss), ("entropy", p.entropy)] {
        if !v.is_finite() {
            return Err(TrainError::NonFinite {
                iteration: stats.iteration,
                what: name.to_string(),
                value: v,
                last_checkpoint: last_checkpoint.map(Path::to_path_buf),
            });
        }
    }
    Ok(())
}

fn log_iteration(
    sink: &mut dyn MetricsSink,
    stats: &IterationStats,
    batch: usize,
    procgen: Option<(&'static crate::envs::procgen::Game, crate::envs::procgen::DistributionMode)>,
) {
    let step = stats.global_step as i64;
    for ep in &stats.episodes {
        sink.scalar(tags::EPISODIC_RETURN, ep.episode_return, step);
        sink.scalar(tags::EPISODIC_LENGTH, ep.length as f64, step);
        if let Some((game, mode)) = procgen {
            sink.scalar(tags::NORMALIZED_RETURN, normalized_return(game, mode, ep.episode_return), step);
        }
    }
    let p = &stats.ppo;
    sink.scalars(
        &[
            (tags::LEARNING_RATE, stats.learning_rate),
            (tags::SPS, stats.steps_per_sec(batch)),
            (tags::VALUE_LOSS, p.value_loss),
            (tags::POLICY_LOSS, p.policy_loss),
            (tags::ENTROPY, p.entropy),
            (tags::OLD_APPROX_KL, p.old_approx_kl),
            (tags::APPROX_KL, p.approx_kl),
            (tags::CLIPFRAC, p.clipfrac),
            (tags::EXPLAINED_VARIANCE, p.explained_variance),
            ("perf/rollout_secs", stats.rollout_secs),
            ("perf/update_secs", stats.update_secs),
        ],
        step,
    );
}

pub fn format_secs(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TrainError> {
    std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })
}

/// Where and how to evaluate a checkpoint.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Defaults to the training env.
    pub env: Option<String>,
    /// Levels to evaluate on: `num_levels = 0` is the full distribution (the test protocol).
    pub num_levels: i32,
    pub start_level: i32,
    pub episodes: usize,
    pub num_envs: usize,
    /// argmax actions instead of sampling (the paper evaluates the stochastic policy).
    pub greedy: bool,
    pub seed: u64,
    /// Write GIFs of the first episodes of env 0 here.
    pub video: Option<PathBuf>,
    pub device: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub env: String,
    pub episodes: usize,
    pub mean_return: f64,
    pub std_return: f64,
    pub mean_normalized_return: Option<f64>,
    pub std_normalized_return: Option<f64>,
    pub num_levels: i32,
    pub start_level: i32,
    pub greedy: bool,
}

/// Loads the policy of `checkpoint` (a `checkpoints/iter_N` folder, or a run directory for its
/// newest checkpoint) and plays `episodes` episodes. Each env contributes the same number of
/// episodes, so short episodes are not over-represented.
pub fn evaluate(checkpoint: &Path, opts: &EvalOptions) -> Result<EvalResult, TrainError> {
    let (run_root, ckpt) = match run_of_checkpoint(checkpoint) {
        Some(run) => (run, checkpoint.to_path_buf()),
        None => {
            let run = RunDir::open(checkpoint)?;
            let ckpt = run.latest_checkpoint()?.ok_or_else(|| TrainError::Checkpoint {
                path: checkpoint.to_path_buf(),
                reason: "the run has no complete checkpoint".into(),
            })?;
            (run.root, ckpt)
        }
    };
    let config: TrainConfig = crate::config::load_config(
        Some(&run_root.join(super::run_dir::CONFIG_FILE)),
        TrainConfig::default(),
        &[],
    )?;
    let env_name = opts.env.clone().unwrap_or_else(|| config.env.clone());
    if opts.episodes == 0 || opts.num_envs == 0 {
        return Err(TrainError::Invalid("--episodes and --num-envs must be at least 1".into()));
    }
    let device = crate::device::parse_device(&opts.device)?;
    tch::manual_seed(opts.seed as i64);
    let procgen = ProcgenOptions {
        num_levels: opts.num_levels,
        start_level: opts.start_level,
        render_human: opts.video.is_some(),
        rand_seed: Some((opts.seed % i32::MAX as u64) as i32),
        ..config.procgen.clone()
    };
    let mut env: Box<dyn VecEnv> = if GYM_ENVS.contains(&env_name.as_str()) {
        make_vec_env(&env_name, opts.num_envs, opts.seed, &procgen)?
    } else {
        Box::new(ProcgenVecEnv::new(&env_name, opts.num_envs, procgen.clone())?)
    };
    let spec = env.spec().clone();
    let (mut vs, policy, mut arch) = build_policy(&config, &spec, device)?;
    if let Some(a) = arch.as_mut() {
        a.load_alphas(&ckpt)?;
    }
    let weights = ckpt.join("weights.safetensors");
    vs.load(&weights).map_err(|e| TrainError::Checkpoint {
        path: weights.clone(),
        reason: format!("{e} (was the checkpoint written for env '{}' with this encoder?)", config.env),
    })?;

    let per_env = opts.episodes.div_ceil(opts.num_envs);
    let mut counted = vec![0usize; opts.num_envs];
    let mut returns: Vec<f64> = Vec::with_capacity(per_env * opts.num_envs);
    let mut video = VideoRecorder::new(opts.video.as_deref(), 3)?;
    let step_limit = 100_000usize;
    for _ in 0..step_limit {
        if counted.iter().all(|&c| c >= per_env) {
            break;
        }
        let obs = env.observe().obs.to_device(device);
        let actions = tch::no_grad(|| {
            if opts.greedy {
                let (logits, _) = policy.forward(&obs, false);
                logits.argmax(-1, false)
            } else {
                policy.act(&obs).action
            }
        });
        let actions = Vec::<i64>::try_from(actions.to_device(Device::Cpu).to_kind(Kind::Int64))?;
        let view = env.step(&actions)?;
        for ep in view.finished {
            if counted[ep.env] < per_env {
                counted[ep.env] += 1;
                returns.push(ep.episode_return);
            }
        }
        let finished_env0 = view.finished.iter().any(|e: &EpisodeStats| e.env == 0);
        video.frame(env.as_ref(), finished_env0)?;
    }
    if returns.len() < per_env * opts.num_envs {
        return Err(TrainError::Invalid(format!(
            "only {} of {} episodes finished within {step_limit} steps",
            returns.len(),
            per_env * opts.num_envs
        )));
    }
    let stats = |xs: &[f64]| -> (f64, f64) {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        (m, var.sqrt())
    };
    let (mean_return, std_return) = stats(&returns);
    let normalized = if GYM_ENVS.contains(&env_name.as_str()) {
        None
    } else {
        let game = find_game(&env_name)?;
        let n: Vec<f64> = returns.iter().map(|&r| normalized_return(game, procgen.distribution_mode, r)).collect();
        Some(stats(&n))
    };
    Ok(EvalResult {
        env: env_name,
        episodes: returns.len(),
        mean_return,
        std_return,
        mean_normalized_return: normalized.map(|n| n.0),
        std_normalized_return: normalized.map(|n| n.1),
        num_levels: opts.num_levels,
        start_level: opts.start_level,
        greedy: opts.greedy,
    })
}

/// Writes env 0's episodes as GIFs (512x512 with Procgen's render_human, else the frames).
struct VideoRecorder {
    dir: Option<PathBuf>,
    max_episodes: usize,
    episode: usize,
    writer: Option<crate::media::GifWriter>,
}

impl VideoRecorder {
    fn new(dir: Option<&Path>, max_episodes: usize) -> Result<Self, TrainError> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(|source| TrainError::Io { path: d.to_path_buf(), source })?;
        }
        Ok(Self { dir: dir.map(Path::to_path_buf), max_episodes, episode: 0, writer: None })
    }

    fn frame(&mut self, env: &dyn VecEnv, episode_ended: bool) -> Result<(), TrainError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if self.episode >= self.max_episodes {
            return Ok(());
        }
        if episode_ended {
            self.writer = None; // closes the file
            self.episode += 1;
            if self.episode >= self.max_episodes {
                return Ok(());
            }
        }
        // Only envs that render (Procgen with render_human) have a picture to record.
        let Some(frames) = env.render_frames() else { return Ok(()) };
        let frame: Tensor = frames.get(0);
        let (h, w) = (frame.size()[0] as usize, frame.size()[1] as usize);
        if self.writer.is_none() {
            let path = dir.join(format!("episode_{:02}.gif", self.episode));
            self.writer = Some(crate::media::GifWriter::create(&path, h, w, 15)?);
        }
        let rgb = Vec::<u8>::try_from(frame.flatten(0, -1))?;
        self.writer.as_mut().expect("set above").add_frame(&rgb)?;
        Ok(())
    }
}
