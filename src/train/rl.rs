//! PPO training runs (Cobbe et al. 2020's Procgen recipe, CleanRL's tags): configuration,
//! the loop around `PpoTrainer` with logging, progress, checkpoints and exact resume, and
//! evaluation of a checkpoint on chosen levels. With a supernet encoder (`rl_darts`,
//! `mlp_darts`) the same loop searches its architecture with any strategy of
//! [`crate::search`] (RL-DARTS, Miao, Song et al. 2021; how PPO drives a strategy: see
//! [`super::arch`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::arch::{ArchSearch, RlDartsSearchConfig, RlSearchConfig, SearchBatch};
use super::run_dir::{run_of_checkpoint, RunDir};
use super::TrainError;
use crate::agents::{
    collect_rollout, ActorCritic, Batch, Encoder, ImpalaCnn, ImpalaConfig, IterationStats, Mlp,
    MlpConfig, PpoConfig, PpoTrainer, RewardNormalizer, RolloutStorage,
};
use crate::envs::procgen::{find_game, normalized_return, ProcgenOptions, ProcgenVecEnv};
use crate::envs::{gym::GYM_ENVS, make_vec_env, EnvSpec, EpisodeStats, VecEnv};
use crate::logging::{tags, MetricsSink};
use crate::nas::{
    Genotype, MlpDartsConfig, MlpFixedEncoder, MlpSupernet, RlDartsConfig, RlDartsFixedEncoder,
    RlDartsSupernet, Supernet,
};

/// Which network turns observations into features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum EncoderConfig {
    /// IMPALA-CNN (Espeholt et al. 2018), the Procgen baseline.
    Impala(ImpalaConfig),
    /// A tanh MLP, for state-vector envs such as CartPole.
    Mlp(MlpConfig),
    /// RL-DARTS: a DARTS supernet over images whose alphas are searched during PPO by the
    /// strategy of `[search.strategy]` (default: joint first order, as RL-DARTS).
    RlDarts(RlDartsSearchConfig),
    /// RL-DARTS retraining: the discrete cell derived by an `rl_darts` search, in the same
    /// layout, trained from scratch (Miao, Song et al. 2021, section 3).
    RlDartsFixed(RlDartsFixedConfig),
    /// The RL-DARTS search over state vectors (CartPole): an MLP supernet of cells over the
    /// `mlp` op set (linear_relu, linear_tanh, skip_connect, none), searched like `rl_darts`.
    MlpDarts(MlpDartsSearchConfig),
    /// The discrete cell derived by an `mlp_darts` search, in the same layout, from scratch.
    MlpDartsFixed(MlpDartsFixedConfig),
}

/// `[encoder] kind = "mlp_darts"`: the searched vector encoder. How its alphas learn is
/// `[search]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MlpDartsSearchConfig {
    /// Cells, nodes, width, op set (default: 2 cells of 4 nodes, 64 features, `mlp` ops).
    pub supernet: MlpDartsConfig,
}

/// `[encoder] kind = "mlp_darts_fixed"`: a genotype derived by an `mlp_darts` search and the
/// supernet layout it was searched in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MlpDartsFixedConfig {
    /// genotype.json (or the DARTS text form) written by an `mlp_darts` search run. Required.
    pub genotype: PathBuf,
    /// The layout of the search's `encoder.params.supernet` (same keys and defaults).
    pub supernet: MlpDartsConfig,
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
        Self {
            genotype: PathBuf::new(),
            supernet: RlDartsConfig::default(),
        }
    }
}

impl EncoderConfig {
    pub fn name(&self) -> &'static str {
        match self {
            EncoderConfig::Impala(_) => "impala",
            EncoderConfig::Mlp(_) => "mlp",
            EncoderConfig::RlDarts(_) => "rl_darts",
            EncoderConfig::RlDartsFixed(_) => "rl_darts_fixed",
            EncoderConfig::MlpDarts(_) => "mlp_darts",
            EncoderConfig::MlpDartsFixed(_) => "mlp_darts_fixed",
        }
    }

    /// Whether this encoder is a supernet whose architecture the run searches.
    pub fn is_supernet(&self) -> bool {
        matches!(self, EncoderConfig::RlDarts(_) | EncoderConfig::MlpDarts(_))
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
    /// Architecture search: read only with a supernet encoder (`rl_darts`, `mlp_darts`).
    pub search: RlSearchConfig,
    /// Budgets and evaluation of the RL-DARTS pipeline (`rl-darts train` without --encoder);
    /// unused by a single PPO run. See train::pipeline.
    pub pipeline: super::pipeline::PipelineConfig,
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
            procgen: ProcgenOptions {
                num_levels: 200,
                start_level: 0,
                ..ProcgenOptions::default()
            },
            checkpoint: CheckpointConfig::default(),
            search: RlSearchConfig::default(),
            pipeline: super::pipeline::PipelineConfig::default(),
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
/// reads its op weights from `arch` (and hands its per-op costs to `arch`'s strategy).
pub fn build_encoder(
    p: nn::Path,
    spec: &EnvSpec,
    config: &EncoderConfig,
    arch: Option<&ArchSearch>,
) -> Result<Box<dyn Encoder>, TrainError> {
    let shape = crate::agents::policy::encoder_input_shape(spec);
    let need_arch = || {
        arch.ok_or_else(|| {
            TrainError::Invalid(format!(
                "the {} encoder reads its op weights from an architecture search; build it with build_policy",
                config.name()
            ))
        })
    };
    let supernet_err =
        |e: crate::nas::NasError| TrainError::Invalid(format!("encoder.params.supernet: {e}"));
    Ok(match config {
        EncoderConfig::RlDarts(c) => {
            let arch = need_arch()?;
            let device = p.device();
            let net = RlDartsSupernet::new(p, &c.supernet, &shape, arch.slot.clone())
                .map_err(supernet_err)?;
            if let &[ch, h, w] = shape.as_slice() {
                arch.set_op_costs(net.op_costs([ch, h, w]))?;
                arch.set_latency_from(&net, [ch, h, w], device)?;
            }
            Box::new(net)
        }
        EncoderConfig::MlpDarts(c) => {
            let arch = need_arch()?;
            let device = p.device();
            let net = MlpSupernet::new(p, &c.supernet, &shape, arch.slot.clone())
                .map_err(supernet_err)?;
            arch.set_op_costs(net.op_costs([shape[0], 1, 1]))?;
            // Fails with a clear message if a latency penalty is asked for: MLP cells are not
            // timed alone.
            arch.set_latency_from(&net, [shape[0], 1, 1], device)?;
            Box::new(net)
        }
        EncoderConfig::MlpDartsFixed(c) => {
            let genotype = load_genotype(&c.genotype, "mlp_darts")?;
            let net = MlpFixedEncoder::new(p, &c.supernet, &genotype, &shape).map_err(|e| {
                TrainError::Invalid(format!(
                    "encoder.params: genotype {} does not fit the supernet layout: {e}",
                    c.genotype.display()
                ))
            })?;
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
            let genotype = load_genotype(&c.genotype, "rl_darts")?;
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

/// The genotype a `*_fixed` encoder retrains.
fn load_genotype(path: &Path, search_kind: &str) -> Result<Genotype, TrainError> {
    if path.as_os_str().is_empty() {
        return Err(TrainError::Invalid(format!(
            "encoder.params.genotype is required: the genotype.json an {search_kind} search wrote"
        )));
    }
    Genotype::load(path).map_err(|e| TrainError::Invalid(format!("encoder.params.genotype: {e}")))
}

fn make_env(config: &TrainConfig, procgen: &ProcgenOptions) -> Result<Box<dyn VecEnv>, TrainError> {
    Ok(make_vec_env(
        &config.env,
        config.ppo.num_envs,
        config.seed,
        procgen,
    )?)
}

/// The weights store, the policy, and (for a searched encoder) the architecture parameters,
/// each in its own store.
pub fn build_policy(
    config: &TrainConfig,
    spec: &EnvSpec,
    device: Device,
) -> Result<(nn::VarStore, ActorCritic, Option<ArchSearch>), TrainError> {
    // (cell space, has reduction cells) of a searched encoder.
    let searched = match &config.encoder {
        EncoderConfig::RlDarts(c) => Some((c.supernet.space(), c.supernet.has_reduction_cells())),
        EncoderConfig::MlpDarts(c) => Some((c.supernet.space(), c.supernet.has_reduction_cells())),
        _ => None,
    };
    let arch = searched
        .map(|(space, reduce)| ArchSearch::new(&config.search, space, reduce, device, config.seed))
        .transpose()?;
    let vs = nn::VarStore::new(device);
    let encoder = build_encoder(vs.root() / "encoder", spec, &config.encoder, arch.as_ref())?;
    let policy = ActorCritic::new(vs.root() / "policy", encoder, spec.num_actions);
    Ok((vs, policy, arch))
}

/// Builds the trainer for `config` on `device`; with a searched encoder, the strategy's
/// `after_weight_step` runs after every PPO minibatch (where single-level strategies, such as
/// RL-DARTS's joint first-order default, step the alphas on the same backward pass).
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
    /// Seconds in the architecture search outside the PPO update (search rollouts and alpha
    /// steps of bilevel strategies); counted in `steps_per_sec`.
    pub search_secs: f64,
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
    // Every PPO run on the CPU, fixed encoder or supernet: the kept heap made the IMPALA update
    // 1.5x faster and the paper-size RL-DARTS search 2x faster (BENCHMARKS.md). Supervised
    // DARTS searches keep glibc's defaults (see the function's docs for why).
    if device == tch::Device::Cpu {
        if let Some(note) = crate::device::keep_freed_memory_for_reuse() {
            eprintln!("note: {note}");
        }
    }
    let game = config
        .is_procgen()
        .then(|| find_game(&config.env))
        .transpose()?;
    if arch.is_some() {
        search_env_options(config)?;
    }
    let mut search = SearchLoop::new(config.seed);

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
            search.load(&ckpt, config, device)?;
        }
        let env_state = read(&ckpt.join(ENV_STATE_FILE))?;
        env.load_state(&env_state)?;
        let loop_path = ckpt.join(LOOP_STATE_FILE);
        state = serde_json::from_slice(&read(&loop_path)?).map_err(|e| TrainError::Checkpoint {
            path: loop_path,
            reason: e.to_string(),
        })?;
        last_checkpoint = Some(ckpt);
    } else {
        let markdown = crate::config::to_markdown(config)?;
        run.sink.text("config", &markdown, 0);
    }

    let save = |trainer: &PpoTrainer,
                arch: Option<&ArchSearch>,
                search: &SearchLoop,
                env: &dyn VecEnv,
                state: &LoopState|
     -> Result<PathBuf, TrainError> {
        run.run_dir
            .save_checkpoint(trainer.iterations_done(), config.checkpoint.keep, |dir| {
                trainer.save(dir)?;
                if let Some(a) = arch {
                    a.save(dir)?;
                    search.save(dir)?;
                }
                write(&dir.join(ENV_STATE_FILE), &env.save_state()?)?;
                let json = serde_json::to_vec_pretty(state).expect("loop state serialises");
                write(&dir.join(LOOP_STATE_FILE), &json)
            })
    };

    let total = config.ppo.num_iterations() * config.ppo.batch_size() as u64;
    let batch = config.ppo.batch_size();
    let (mut rollout_secs, mut update_secs, mut search_secs, mut iterations_here) =
        (0.0, 0.0, 0.0, 0u64);
    // Weight steps per PPO update (fewer after a target_kl stop).
    let planned_steps = (config.ppo.update_epochs * config.ppo.num_minibatches) as u64;
    let started = Instant::now();
    let mut interrupted = false;
    while !trainer.is_done() {
        if run.max_iterations.is_some_and(|m| iterations_here >= m) {
            break;
        }
        // Architecture search, before the update: the strategy's epoch, and for bilevel
        // strategies the search rollout, collected by the policy that collects the training
        // rollout next (see train::arch).
        let search_start = Instant::now();
        let mut search_batch = None;
        let first_step = arch.as_ref().map_or(0, |a| a.weight_steps());
        if let Some(a) = &arch {
            a.begin_iteration(trainer.iterations_done(), config.ppo.num_iterations());
            a.set_weight_lr(trainer.learning_rate());
            if a.wants_arch_steps(first_step, planned_steps) {
                let (batch, episodes) = search.collect(config, device, &trainer.policy)?;
                a.take_error()?;
                log_search_episodes(
                    run.sink,
                    &episodes,
                    trainer.global_step() as i64 + batch_steps(config),
                );
                search_batch = Some(batch);
            }
        }
        let mut search_here = search_start.elapsed().as_secs_f64();

        let stats = trainer.iteration(env.as_mut())?;
        if let Some(a) = &arch {
            a.take_error()?;
        }
        iterations_here += 1;
        rollout_secs += stats.rollout_secs;
        update_secs += stats.update_secs;
        check_finite(&stats, last_checkpoint.as_deref())?;

        // Alpha steps of bilevel strategies, after the update (train::arch explains the order).
        if let (Some(a), Some(search_batch)) = (&arch, &search_batch) {
            let arch_start = Instant::now();
            let steps = (first_step, stats.ppo.minibatches as u64);
            let (_, next_value) =
                tch::no_grad(|| trainer.policy.forward(&trainer.storage.next_obs, false));
            // The trainer's own batch bootstrapped from the pre-update value, which it does not
            // keep; this one bootstraps the last step of each env from the updated critic.
            let train_batch = trainer.storage.compute_batch(
                &next_value,
                config.ppo.gamma,
                config.ppo.gae_lambda,
            )?;
            let minibatch = (search_batch.len() as usize / config.ppo.num_minibatches).max(1);
            let arch_stats = a.arch_phase(
                &trainer.policy,
                &config.ppo,
                trainer.optimizer.parameters(),
                buffers(&trainer.vs),
                &train_batch,
                search_batch,
                minibatch,
                &mut search.rng,
                steps,
            )?;
            a.take_error()?;
            if let Some((s, count)) = arch_stats {
                log_arch_steps(run.sink, "bilevel", &s, count, stats.global_step as i64);
            }
            search_here += arch_start.elapsed().as_secs_f64();
        }
        if let Some(a) = &arch {
            if let Some((s, count)) = a.take_hook_stats() {
                log_arch_steps(
                    run.sink,
                    "single_level",
                    &s,
                    count,
                    stats.global_step as i64,
                );
            }
            run.sink
                .scalar("perf/search_secs", search_here, stats.global_step as i64);
        }
        search_secs += search_here;
        for ep in &stats.episodes {
            state.recent_returns.push_back(ep.episode_return);
            if state.recent_returns.len() > RETURN_WINDOW {
                state.recent_returns.pop_front();
            }
            state.episodes_done += 1;
        }
        log_iteration(
            run.sink,
            &stats,
            batch,
            game.map(|g| (g, config.procgen.distribution_mode)),
        );
        if let Some(a) = &arch {
            if trainer.iterations_done() % a.config.log_every.max(1) == 0 {
                a.log(run.sink, stats.global_step as i64);
            }
        }
        let mean_return = mean(state.recent_returns.iter().copied());
        if let Some(m) = mean_return {
            run.sink
                .scalar("charts/mean_return_last100", m, stats.global_step as i64);
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
                mean_return
                    .map(|m| format!("{m:.2}"))
                    .unwrap_or_else(|| "-".into()),
                stats.ppo.value_loss,
                stats.ppo.approx_kl
            ),
        );

        let stop = run.stop.load(Ordering::SeqCst);
        if stop
            || trainer.iterations_done() % config.checkpoint.every.max(1) == 0
            || trainer.is_done()
        {
            last_checkpoint = Some(save(
                &trainer,
                arch.as_ref(),
                &search,
                env.as_ref(),
                &state,
            )?);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    if !interrupted
        && last_checkpoint
            .as_ref()
            .is_none_or(|c| !c.ends_with(format!("iter_{:08}", trainer.iterations_done())))
    {
        last_checkpoint = Some(save(
            &trainer,
            arch.as_ref(),
            &search,
            env.as_ref(),
            &state,
        )?);
    }
    if let Some(a) = &arch {
        let g = a.write_genotype(&run.run_dir.root)?;
        run.sink.text(
            "arch/final_genotype",
            &format!("`{}`", g.to_darts_string()),
            trainer.global_step() as i64,
        );
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
        steps_per_sec: (iterations_here * batch as u64) as f64
            / (rollout_secs + update_secs + search_secs).max(1e-9),
        rollout_secs,
        update_secs,
        search_secs,
    };
    run.progress.finish(&format!(
        "{} after {} steps: mean return (last 100) {}",
        if interrupted { "stopped" } else { "done" },
        summary.global_step,
        mean_return
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "-".into())
    ));
    let path = run.run_dir.root.join("summary.json");
    write(
        &path,
        &serde_json::to_vec_pretty(&summary).expect("summary serialises"),
    )?;
    Ok(summary)
}

/// Env steps of one training rollout.
fn batch_steps(config: &TrainConfig) -> i64 {
    config.ppo.batch_size() as i64
}

/// BatchNorm running statistics of the weight store (every non-trainable variable), in name
/// order: what a virtual weight step must restore.
fn buffers(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

fn log_arch_steps(
    sink: &mut dyn MetricsSink,
    kind: &str,
    s: &crate::search::ArchStepStats,
    count: u32,
    step: i64,
) {
    let tags = [
        format!("search/{kind}_arch_loss"),
        format!("search/{kind}_arch_grad_norm"),
        format!("search/{kind}_arch_steps"),
    ];
    sink.scalars(
        &[
            (tags[0].as_str(), s.loss),
            (tags[1].as_str(), s.grad_norm),
            (tags[2].as_str(), f64::from(count)),
        ],
        step,
    );
}

fn log_search_episodes(sink: &mut dyn MetricsSink, episodes: &[EpisodeStats], step: i64) {
    for ep in episodes {
        sink.scalar("search/episodic_return", ep.episode_return, step);
    }
}

const SEARCH_ENV_STATE_FILE: &str = "search_env_state.bin";
const SEARCH_LOOP_FILE: &str = "search_loop.json";
/// Offsets the search envs' level-seed generator from the training envs' one, so the two sets
/// of envs never replay each other's level sequence.
const SEARCH_SEED_OFFSET: u64 = 1_000_003;

/// The env options of the search rollout (`[search] search_batch`), or why they cannot work.
fn search_env_options(config: &TrainConfig) -> Result<(u64, ProcgenOptions), TrainError> {
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
struct SearchLoop {
    env: Option<SearchEnv>,
    rng: ChaCha8Rng,
}

#[derive(Serialize, Deserialize)]
struct SearchLoopState {
    rng: ChaCha8Rng,
    normalizer: Option<RewardNormalizer>,
    has_env: bool,
}

impl SearchLoop {
    fn new(seed: u64) -> Self {
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

    /// One rollout of the search envs with `policy` (rewards normalised like the training
    /// rollout's, by their own running statistics, so the value loss sees one scale) and its
    /// PPO batch.
    fn collect(
        &mut self,
        config: &TrainConfig,
        device: Device,
        policy: &ActorCritic,
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
        )?;
        let (_, next_value) = tch::no_grad(|| policy.forward(&s.storage.next_obs, false));
        let batch =
            s.storage
                .compute_batch(&next_value, config.ppo.gamma, config.ppo.gae_lambda)?;
        Ok((batch, episodes))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
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

    fn load(&mut self, dir: &Path, config: &TrainConfig, device: Device) -> Result<(), TrainError> {
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

fn check_finite(stats: &IterationStats, last_checkpoint: Option<&Path>) -> Result<(), TrainError> {
    let p = &stats.ppo;
    for (name, v) in [
        ("policy_loss", p.policy_loss),
        ("value_loss", p.value_loss),
        ("entropy", p.entropy),
    ] {
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
    procgen: Option<(
        &'static crate::envs::procgen::Game,
        crate::envs::procgen::DistributionMode,
    )>,
) {
    let step = stats.global_step as i64;
    for ep in &stats.episodes {
        sink.scalar(tags::EPISODIC_RETURN, ep.episode_return, step);
        sink.scalar(tags::EPISODIC_LENGTH, ep.length as f64, step);
        if let Some((game, mode)) = procgen {
            sink.scalar(
                tags::NORMALIZED_RETURN,
                normalized_return(game, mode, ep.episode_return),
                step,
            );
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
    std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
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
            let ckpt = run
                .latest_checkpoint()?
                .ok_or_else(|| TrainError::Checkpoint {
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
        return Err(TrainError::Invalid(
            "--episodes and --num-envs must be at least 1".into(),
        ));
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
        Box::new(ProcgenVecEnv::new(
            &env_name,
            opts.num_envs,
            procgen.clone(),
        )?)
    };
    let spec = env.spec().clone();
    let (mut vs, policy, mut arch) = build_policy(&config, &spec, device)?;
    if let Some(a) = arch.as_mut() {
        a.load(&ckpt)?;
    }
    let weights = ckpt.join("weights.safetensors");
    vs.load(&weights).map_err(|e| TrainError::Checkpoint {
        path: weights.clone(),
        reason: format!(
            "{e} (was the checkpoint written for env '{}' with this encoder?)",
            config.env
        ),
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
        let n: Vec<f64> = returns
            .iter()
            .map(|&r| normalized_return(game, procgen.distribution_mode, r))
            .collect();
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
            std::fs::create_dir_all(d).map_err(|source| TrainError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            max_episodes,
            episode: 0,
            writer: None,
        })
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
        let Some(frames) = env.render_frames() else {
            return Ok(());
        };
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
