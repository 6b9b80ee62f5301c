//! The PPO training loop (Cobbe et al. 2020's Procgen recipe, CleanRL's tags): logging,
//! progress, checkpoints and exact resume around one iteration at a time. With a supernet
//! encoder the same loop searches its architecture ([`super::search`]); what differs per
//! encoder lives in [`super::driver`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::build::{build_policy, make_env, Policy};
use super::config::TrainConfig;
use super::driver::{Driver, FixedDriver, SearchDriver};
use super::io::{read, write};
use super::memory::{plan_update, MemoryPlan};
use super::parallel::{
    any_process, check_in_sync, device_of, gather_rank_states, join, newest_checkpoint, own_state,
    write_rank_states, Process,
};
pub use super::report::{format_secs, hparams_of, HPARAM_METRICS};
use super::report::{log_hparams, IterationNews, LoopHeartbeat, Tally};
use super::search_envs::search_env_options;
use crate::agents::{AgentError, IterationStats, PpoTrainer};
use crate::envs::procgen::{find_game, normalized_return};
use crate::envs::VecEnv;
use crate::logging::{MetricsSink, MultiSink};
use crate::train::run_dir::RunDir;
use crate::train::TrainError;

const ENV_STATE_FILE: &str = "env_state.bin";
const LOOP_STATE_FILE: &str = "loop.json";
/// Episodes averaged for the reported "latest mean return" (the Procgen paper's window).
const RETURN_WINDOW: usize = 100;

/// Loop state beyond the trainer's, saved with each checkpoint so that logs of a resumed
/// run equal those of an uninterrupted one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct RlLoopState {
    pub(super) recent_returns: VecDeque<f64>,
    pub(super) episodes_done: u64,
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

pub use crate::train::progress::{NoProgress, Progress};

/// Options of one call to [`train`].
pub struct TrainRun<'a> {
    pub config: &'a TrainConfig,
    pub run_dir: &'a RunDir,
    /// Continue from the newest checkpoint of `run_dir`.
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    /// Set (by Ctrl-C or SIGTERM) to stop at the next env step or minibatch: the partial
    /// iteration is abandoned and the run keeps its last checkpoint (time-based checkpoints,
    /// `checkpoint.every_minutes`, bound what that loses).
    pub stop: &'a AtomicBool,
    /// Stop after this many iterations in this call (tests; None = until done).
    pub max_iterations: Option<u64>,
    /// Train on this env instead of building `config.env` (test doubles, wrappers).
    pub env: Option<Box<dyn VecEnv>>,
}

pub(super) fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Trains until `ppo.total_timesteps`, Ctrl-C, or `max_iterations`.
///
/// With `distributed.backend` set, this process is one of a data-parallel run
/// ([`crate::distributed`]): it steps its share of the envs with its own seeds, every update
/// all-reduces with the others, and only rank 0 logs, reports progress and writes checkpoints
/// and the summary into `run_dir` (the others' `run_dir` is scratch space for the checkpoint
/// rank 0 broadcasts on resume).
pub fn train(run: TrainRun<'_>) -> Result<TrainSummary, TrainError> {
    let config = run.config;
    let process = Process::of(config)?;
    let (rank, world) = process
        .as_ref()
        .map_or((0, 1), |p| (p.rank, p.comm.world_size()));
    // This process's envs, budget and seeds; the whole run's config with one process.
    let local = config.process_share(rank, world)?;
    let device = device_of(process.as_ref(), config)?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads);
    }
    // The weights and the architecture search start from the run's seed on every process
    // (and are broadcast from rank 0 below all the same).
    tch::manual_seed(config.seed as i64);
    let mut null_sink = MultiSink::new();
    let mut no_progress = NoProgress;
    let mut run = if rank == 0 {
        TrainRun {
            sink: run.sink,
            progress: run.progress,
            ..run
        }
    } else {
        TrainRun {
            sink: &mut null_sink,
            progress: &mut no_progress,
            ..run
        }
    };
    let mut env = match run.env.take() {
        Some(env) => env,
        None => make_env(&local, &local.procgen)?,
    };
    let spec = env.spec().clone();
    let shared = TrainConfig {
        seed: config.seed,
        procgen: config.procgen.clone(),
        ..local.clone()
    };
    let (vs, policy) = build_policy(&shared, &spec, device)?;
    // Every PPO run on the CPU, fixed encoder or supernet: the kept heap made the IMPALA update
    // 1.5x faster and the paper-size RL-DARTS search 2x faster (BENCHMARKS.md). Supervised
    // DARTS searches keep glibc's defaults (see the function's docs for why).
    if device == tch::Device::Cpu {
        if let Some(note) = crate::device::keep_freed_memory_for_reuse() {
            eprintln!("note: {note}");
        }
    }
    match policy {
        Policy::Fixed(policy) => {
            let trainer = PpoTrainer::new(vs, policy, &spec, local.ppo.clone(), local.seed)?;
            run_loop(run, &local, process, env.as_mut(), trainer, FixedDriver)
        }
        Policy::Searched(policy, search) => {
            search_env_options(&local)?;
            let trainer = PpoTrainer::new(vs, policy, &spec, local.ppo.clone(), local.seed)?;
            let driver = SearchDriver::new(search, &local, device);
            run_loop(run, &local, process, env.as_mut(), trainer, driver)
        }
    }
}

/// The loop of [`train`] for either kind of encoder. `run.config` is the whole run's (what is
/// logged and reported), `local` this process's share (what its trainer and driver run).
fn run_loop<D: Driver>(
    mut run: TrainRun<'_>,
    local: &TrainConfig,
    process: Option<Process>,
    env: &mut dyn VecEnv,
    mut trainer: PpoTrainer<D::Arch>,
    mut driver: D,
) -> Result<TrainSummary, TrainError> {
    let config = run.config;
    // Rank 0 (or the only process) writes the run directory.
    let writer = process.as_ref().is_none_or(|p| p.rank == 0);
    if let Some(p) = &process {
        join(p, &mut trainer, &mut driver)?;
    }
    let game = config
        .is_procgen()
        .then(|| find_game(&config.env))
        .transpose()?;
    // Before the memory plan, which must measure the update in the precision it will run in.
    let policy = super::compute_probe::choose_compute(
        &mut trainer,
        &mut driver,
        config,
        run.run_dir,
        run.resume,
        writer,
        process.is_some(),
        run.stop,
    )?;
    // Every forward of the run (rollouts, updates, search steps) runs on this thread.
    let _compute = crate::agents::compute::enter(policy.compute());
    let started = Start {
        local,
        process: process.as_ref(),
        writer,
    };
    let (mut state, mut last_checkpoint) = started.run(&mut run, env, &mut trainer, &mut driver)?;
    let checkpoints = Checkpoints {
        process: process.as_ref(),
        run_dir: run.run_dir,
        keep: config.checkpoint.keep,
    };
    // The iteration of the last checkpoint, the same on every process (only rank 0 has its
    // path): a resumed run starts at its checkpoint.
    let mut saved_at = run.resume.then(|| trainer.iterations_done());

    let total = config.ppo.num_iterations() * config.ppo.batch_size() as u64;
    let mut tally = Tally::new();
    let mut last_save = Instant::now();
    let mut news = IterationNews {
        total,
        game,
        estimate_printed: false,
    };
    let mut interrupted = false;
    // A search that RobustDARTS's rule stopped ends the run (also when resumed).
    while !trainer.is_done() && !driver.stopped_early() {
        if run.max_iterations.is_some_and(|m| tally.iterations >= m) {
            break;
        }
        let next_iteration = trainer.iterations_done() + 1;
        let mut beat = LoopHeartbeat {
            progress: &mut *run.progress,
            stop: run.stop,
            iteration: next_iteration,
            base_step: trainer.global_step(),
            total,
            num_envs: config.ppo.num_envs as u64,
            last_report: Instant::now(),
        };
        let outcome = driver.iteration(&mut trainer, env, local, run.sink, &mut beat);
        let (stats, search_secs) = match outcome {
            Err(TrainError::Agent(AgentError::Interrupted)) => {
                interrupted = true;
                break;
            }
            other => other.map_err(|e| diverged(e, next_iteration, last_checkpoint.as_deref()))?,
        };
        check_finite(&stats, last_checkpoint.as_deref())?;
        tally.add(&stats, search_secs);
        state.add_episodes(&stats);
        driver.log(
            run.sink,
            trainer.iterations_done(),
            stats.global_step as i64,
        );
        news.iteration(&mut run, &state, &tally, &stats);

        let stop = run.stop.load(Ordering::SeqCst);
        let due = config
            .checkpoint
            .due(trainer.iterations_done(), last_save.elapsed());
        // Every process takes the same decisions: a stop, a due checkpoint or an early stop seen
        // by one process (each measures search health on its own batch) holds for all.
        let [stop, due, early] =
            any_process(process.as_ref(), [stop, due, driver.stopped_early()])?;
        if stop || due || trainer.is_done() || early {
            last_checkpoint = checkpoints
                .save(&trainer, &driver, env, &state)?
                .or(last_checkpoint);
            saved_at = Some(trainer.iterations_done());
            if writer {
                driver.after_checkpoint(&run.run_dir.root);
            }
            last_save = Instant::now();
        }
        if stop {
            interrupted = true;
            break;
        }
        if early {
            break;
        }
    }
    if interrupted {
        eprintln!("stopped: {}", resume_hint(last_checkpoint.as_deref()));
    } else if saved_at != Some(trainer.iterations_done()) {
        last_checkpoint = checkpoints
            .save(&trainer, &driver, env, &state)?
            .or(last_checkpoint);
    }
    if let Some(p) = &process {
        check_in_sync(p, &trainer, &driver)?;
    }
    if writer {
        driver.finish(&run.run_dir.root, run.sink, trainer.global_step() as i64)?;
    }
    let summary = summarize(
        &run,
        &trainer,
        &state,
        &tally,
        game,
        interrupted,
        last_checkpoint,
    );
    if writer {
        finish(run, &summary)?;
    }
    Ok(summary)
}

/// Where the loop's checkpoints go: only the writer (rank 0, or the only process) writes; in
/// a data-parallel run every other process's own state is gathered into it
/// (`checkpoints/iter_N/rank_R/`), committed with rank 0's by the checkpoint's one rename.
struct Checkpoints<'a> {
    process: Option<&'a Process>,
    run_dir: &'a RunDir,
    keep: usize,
}

impl Checkpoints<'_> {
    /// A checkpoint of everything a resume needs; None on a process that does not write.
    fn save<D: Driver>(
        &self,
        trainer: &PpoTrainer<D::Arch>,
        driver: &D,
        env: &dyn VecEnv,
        state: &RlLoopState,
    ) -> Result<Option<PathBuf>, TrainError> {
        let own = |dir: &Path| -> Result<(), TrainError> {
            trainer.save(dir)?;
            driver.save(dir)?;
            write(&dir.join(ENV_STATE_FILE), &env.save_state()?)?;
            let json = serde_json::to_vec_pretty(state).expect("loop state serialises");
            write(&dir.join(LOOP_STATE_FILE), &json)
        };
        let others = gather_rank_states(self.process, &self.run_dir.root, own)?;
        if self.process.is_some_and(|p| p.rank != 0) {
            return Ok(None);
        }
        self.run_dir
            .save_checkpoint(trainer.iterations_done(), self.keep, |dir| {
                own(dir)?;
                match &others {
                    Some(states) => write_rank_states(dir, states),
                    None => Ok(()),
                }
            })
            .map(Some)
    }
}

/// How a loop starts: this process's share of the config, its place in a data-parallel run,
/// and whether it writes the run directory.
struct Start<'a> {
    local: &'a TrainConfig,
    process: Option<&'a Process>,
    writer: bool,
}

impl Start<'_> {
    /// The loop's state at its first iteration: resumed from the newest checkpoint, or fresh
    /// (the config logged); then the update fitted into memory (the plan written beside the
    /// run by the writer).
    fn run<D: Driver>(
        &self,
        run: &mut TrainRun<'_>,
        env: &mut dyn VecEnv,
        trainer: &mut PpoTrainer<D::Arch>,
        driver: &mut D,
    ) -> Result<(RlLoopState, Option<PathBuf>), TrainError> {
        let started = if run.resume {
            resume(run.run_dir, self.local, self.process, trainer, driver, env)?
        } else {
            let markdown = crate::config::to_markdown(run.config)?;
            run.sink.text("config", &markdown, 0);
            (RlLoopState::default(), None)
        };
        if let Some(plan) = fit_update_in_memory(trainer, driver, self.local, self.writer)? {
            if self.writer {
                let json = serde_json::to_vec_pretty(&plan).expect("memory plan serialises");
                write(&run.run_dir.root.join(MEMORY_PLAN_FILE), &json)?;
            }
        }
        Ok(started)
    }
}

/// What a stopped run tells its user about resuming.
fn resume_hint(last_checkpoint: Option<&Path>) -> String {
    match last_checkpoint {
        Some(c) => format!(
            "the run continues from {} with --resume (work after it was not saved)",
            c.display()
        ),
        None => "no checkpoint was written yet".into(),
    }
}

/// The run's summary once the loop has ended.
fn summarize<A>(
    run: &TrainRun<'_>,
    trainer: &PpoTrainer<A>,
    state: &RlLoopState,
    tally: &Tally,
    game: Option<&'static crate::envs::procgen::Game>,
    interrupted: bool,
    last_checkpoint: Option<PathBuf>,
) -> TrainSummary {
    let config = run.config;
    let mean_return = mean(state.recent_returns.iter().copied());
    TrainSummary {
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
        steps_per_sec: tally.steps_per_sec(config.ppo.batch_size()),
        rollout_secs: tally.rollout_secs,
        update_secs: tally.update_secs,
        search_secs: tally.search_secs,
    }
}

/// Restores the trainer, the architecture, the env and the loop state from the run's newest
/// checkpoint; returns the loop state and that checkpoint.
/// Restores the trainer, the architecture, the env and the loop state from the run's newest
/// checkpoint; returns the loop state and that checkpoint.
///
/// Data-parallel: rank 0 reads its checkpoint and broadcasts it; every process restores its
/// own part (`rank_R/` for rank R > 0: its envs, random streams, reward normaliser and search
/// rollout, beside the shared weights, alphas, Adam, strategy and counters), so a resumed run
/// continues exactly as the uninterrupted one. A checkpoint without the rank folders (written
/// before processes saved their own state) restores rank 0's shared state everywhere, and the
/// other processes restart their envs from their seeds and their random streams from a seed
/// of their rank and the iteration (not bit-exact).
fn resume<D: Driver>(
    run_dir: &RunDir,
    config: &TrainConfig,
    process: Option<&Process>,
    trainer: &mut PpoTrainer<D::Arch>,
    driver: &mut D,
    env: &mut dyn VecEnv,
) -> Result<(RlLoopState, Option<PathBuf>), TrainError> {
    let rank = process.map_or(0, |p| p.rank);
    let ckpt = newest_checkpoint(run_dir, process)?;
    let Some(ckpt) = ckpt else {
        return Err(TrainError::Checkpoint {
            path: run_dir.checkpoints_dir(),
            reason: "no complete checkpoint to resume from".into(),
        });
    };
    let own = own_state(&ckpt, rank);
    let from = own.as_deref().unwrap_or(&ckpt);
    trainer.load(from).map_err(|e| match (e, process) {
        // The checkpoint holds one process's share of the envs (`ppo.num_envs / N`).
        (crate::agents::AgentError::Checkpoint { path, reason }, Some(p)) => {
            TrainError::Checkpoint {
                path,
                reason: format!(
                    "{reason}\n(a data-parallel run resumes on the number of processes it was \
                     started with; {} now)",
                    p.comm.world_size()
                ),
            }
        }
        (e, _) => e.into(),
    })?;
    driver.load(from, config)?;
    if own.is_none() {
        // `config.seed` is this process's (offset by rank); mixed with the iteration so that
        // a resumed process does not replay the streams it started the run with.
        let seed = config.seed ^ trainer.iterations_done().rotate_left(17);
        trainer.reseed(seed);
        driver.join_data_parallel(Some(seed))?;
        return Ok((RlLoopState::default(), None));
    }
    env.load_state(&read(&from.join(ENV_STATE_FILE))?)?;
    let loop_path = from.join(LOOP_STATE_FILE);
    let state = serde_json::from_slice(&read(&loop_path)?).map_err(|e| TrainError::Checkpoint {
        path: loop_path,
        reason: e.to_string(),
    })?;
    Ok((state, Some(ckpt)))
}

impl RlLoopState {
    /// Counts the iteration's finished episodes and keeps the last [`RETURN_WINDOW`] returns.
    fn add_episodes(&mut self, stats: &IterationStats) {
        for ep in &stats.episodes {
            self.recent_returns.push_back(ep.episode_return);
            if self.recent_returns.len() > RETURN_WINDOW {
                self.recent_returns.pop_front();
            }
            self.episodes_done += 1;
        }
    }
}

fn finish(run: TrainRun<'_>, summary: &TrainSummary) -> Result<(), TrainError> {
    if !summary.interrupted && summary.iterations >= run.config.ppo.num_iterations() {
        log_hparams(&mut *run.sink, run.config, summary);
    }

    run.progress.finish(&format!(
        "{} after {} steps: mean return (last 100) {}",
        if summary.interrupted {
            "stopped"
        } else {
            "done"
        },
        summary.global_step,
        summary
            .mean_return
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "-".into())
    ));
    let path = run.run_dir.root.join("summary.json");
    write(
        &path,
        &serde_json::to_vec_pretty(summary).expect("summary serialises"),
    )
}

/// What the memory planner decided, in the run directory (rewritten by every process).
pub const MEMORY_PLAN_FILE: &str = "memory_plan.json";

/// Plans the PPO update's passes for the machine (see [`super::memory`]) and prints the
/// decision when `report`; a fixed `memory.micro_batch_size` is used as given.
fn fit_update_in_memory<D: Driver>(
    trainer: &mut PpoTrainer<D::Arch>,
    driver: &mut D,
    config: &TrainConfig,
    report: bool,
) -> Result<Option<MemoryPlan>, TrainError> {
    let probe_obs = trainer.storage.obs.flatten(0, 1);
    let plan = plan_update(
        &trainer.policy,
        &mut || driver.probe_arch(),
        &probe_obs,
        &config.ppo,
        &config.memory,
    )?;
    // The probe's gradients are not the first minibatch's.
    trainer.optimizer.zero_grad();
    let micro = match &plan {
        Some(plan) => {
            if report {
                eprintln!("{}", plan.describe());
            }
            Some(plan.micro_batch)
        }
        None => config.memory.micro_batch_size,
    };
    trainer.set_micro_batch(micro)?;
    driver.set_micro_batch(micro.filter(|&m| m < config.ppo.minibatch_size()));
    Ok(plan)
}

/// A minibatch whose loss or gradient norm was not finite stopped the update before its step:
/// the run stops without saving, and says where the last good checkpoint is.
fn diverged(e: TrainError, iteration: u64, last_checkpoint: Option<&Path>) -> TrainError {
    match e {
        TrainError::Agent(AgentError::NonFinite {
            what,
            value,
            minibatch,
        }) => TrainError::NonFinite {
            iteration,
            what: format!("{what} of the update's minibatch {minibatch}"),
            value,
            last_checkpoint: last_checkpoint.map(Path::to_path_buf),
        },
        other => other,
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
