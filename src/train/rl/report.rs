//! What the PPO loop tells its user: progress and ETA within and across iterations, the
//! per-iteration logs (CleanRL's tags), the job-time estimate, and the HParams record of a
//! finished run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::config::{EncoderConfig, TrainConfig};
use super::run::{mean, RlLoopState, TrainRun, TrainSummary};
use crate::agents::{Heartbeat, IterationPhase, IterationStats};
use crate::envs::procgen::{normalized_return, DistributionMode, Game};
use crate::logging::{tags, HParam, MetricsSink};
use crate::train::progress::Progress;

/// Wall-clock accounting of this process's iterations.
pub(super) struct Tally {
    pub(super) started: Instant,
    pub(super) iterations: u64,
    pub(super) rollout_secs: f64,
    pub(super) update_secs: f64,
    pub(super) search_secs: f64,
}

impl Tally {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            iterations: 0,
            rollout_secs: 0.0,
            update_secs: 0.0,
            search_secs: 0.0,
        }
    }

    pub(super) fn add(&mut self, stats: &IterationStats, search_secs: f64) {
        self.iterations += 1;
        self.rollout_secs += stats.rollout_secs;
        self.update_secs += stats.update_secs;
        self.search_secs += search_secs;
    }

    /// Env steps per second of rollout, update and search time.
    pub(super) fn steps_per_sec(&self, batch: usize) -> f64 {
        (self.iterations * batch as u64) as f64
            / (self.rollout_secs + self.update_secs + self.search_secs).max(1e-9)
    }
}

/// The mean return of the window to TensorBoard, and the progress line after an iteration
/// (steps/s over this process's wall time, ETA, return, value loss, KL); returns the ETA in
/// seconds.
pub(super) fn report(
    sink: &mut dyn MetricsSink,
    progress: &mut dyn Progress,
    state: &RlLoopState,
    tally: &Tally,
    stats: &IterationStats,
    config: &TrainConfig,
) -> f64 {
    let mean_return = mean(state.recent_returns.iter().copied());
    if let Some(m) = mean_return {
        sink.scalar("charts/mean_return_last100", m, stats.global_step as i64);
    }
    sink.flush();
    let total = config.ppo.num_iterations() * config.ppo.batch_size() as u64;
    let done_here = tally.iterations * config.ppo.batch_size() as u64;
    let sps = done_here as f64 / tally.started.elapsed().as_secs_f64().max(1e-9);
    let eta = (total.saturating_sub(stats.global_step)) as f64 / sps.max(1e-9);
    progress.update(
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
    eta
}

/// Tags of the final metrics the HParams dashboard compares runs by (steps/s under `perf/`
/// with the other wall-clock measurements).
pub const HPARAM_METRICS: [&str; 3] = [
    "hparams/mean_return",
    "hparams/normalized_return",
    "perf/steps_per_sec",
];

/// The run's hyperparameters for TensorBoard's HParams dashboard: what tells the runs of a
/// sweep apart (env, seed, encoder, strategy) and the PPO settings people vary.
pub fn hparams_of(config: &TrainConfig) -> Vec<(String, HParam)> {
    let text = |k: &str, v: &str| (k.to_string(), HParam::Text(v.to_string()));
    let num = |k: &str, v: f64| (k.to_string(), HParam::Number(v));
    let searched = matches!(
        config.encoder,
        EncoderConfig::RlDarts(_) | EncoderConfig::MlpDarts(_)
    );
    let p = &config.ppo;
    let mut out = vec![
        text("env", &config.env),
        num("seed", config.seed as f64),
        text("encoder", config.encoder.name()),
        text(
            "strategy",
            if searched {
                config.search.strategy.name()
            } else {
                "none"
            },
        ),
        text("device", &config.device),
        num("ppo.learning_rate", p.learning_rate),
        num("ppo.num_envs", p.num_envs as f64),
        num("ppo.num_steps", p.num_steps as f64),
        num("ppo.num_minibatches", p.num_minibatches as f64),
        num("ppo.update_epochs", p.update_epochs as f64),
        num("ppo.ent_coef", p.ent_coef),
        num("ppo.total_timesteps", p.total_timesteps as f64),
    ];
    if config.is_procgen() {
        out.push(text(
            "procgen.distribution_mode",
            config.procgen.distribution_mode.name(),
        ));
        out.push(num("procgen.num_levels", config.procgen.num_levels as f64));
    }
    out
}

/// The final metrics and the hyperparameters of a run that reached its end (once: a run
/// stopped and resumed writes them when it completes).
pub(super) fn log_hparams(
    sink: &mut dyn MetricsSink,
    config: &TrainConfig,
    summary: &TrainSummary,
) {
    let step = summary.global_step as i64;
    let metrics = [
        summary.mean_return,
        summary.mean_normalized_return,
        Some(summary.steps_per_sec),
    ];
    for (tag, value) in HPARAM_METRICS.iter().zip(metrics) {
        if let Some(v) = value {
            sink.scalar(tag, v, step);
        }
    }
    let tags: Vec<String> = HPARAM_METRICS.iter().map(|t| t.to_string()).collect();
    sink.hparams(&hparams_of(config), &tags);
}

/// The line printed after the first minute: the whole run's estimated time, and how to get a
/// result sooner when that is more than a day.
pub(super) fn job_estimate(eta_secs: f64, total: u64, config: &TrainConfig) -> String {
    let mut line = format!(
        "estimated time for all {total} env steps: {} more",
        format_secs(eta_secs)
    );
    if eta_secs > 86_400.0 && !config.device.starts_with("cuda") {
        line.push_str(
            "; on this CPU that is more than a day. Sooner: `--quick` (the toy preset), a GPU \
             (--device cuda), or a smaller budget (--total-steps, or pipeline.*_timesteps)",
        );
    }
    line
}

/// Progress during an iteration (a paper-size one takes minutes): a line at most once a
/// second, and the stop flag checked at every env step and minibatch.
pub(super) struct LoopHeartbeat<'a> {
    pub(super) progress: &'a mut dyn Progress,
    pub(super) stop: &'a AtomicBool,
    pub(super) iteration: u64,
    pub(super) base_step: u64,
    pub(super) total: u64,
    pub(super) num_envs: u64,
    pub(super) last_report: Instant,
}

impl Heartbeat for LoopHeartbeat<'_> {
    fn beat(&mut self, phase: IterationPhase, done: usize, total: usize) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        if self.last_report.elapsed().as_secs_f64() >= 1.0 {
            self.last_report = Instant::now();
            let (what, step) = match phase {
                IterationPhase::Rollout => {
                    ("rollout", self.base_step + done as u64 * self.num_envs)
                }
                IterationPhase::SearchRollout => ("search rollout", self.base_step),
                IterationPhase::Update => ("update, minibatch", self.base_step),
            };
            self.progress.update(
                step,
                self.total,
                &format!("iteration {}: {what} {done}/{total}", self.iteration),
            );
        }
        true
    }
}

pub(super) fn log_iteration(
    sink: &mut dyn MetricsSink,
    stats: &IterationStats,
    batch: usize,
    procgen: Option<(&'static Game, DistributionMode)>,
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

/// What the loop says after each iteration: CleanRL's logs, the progress line, and once,
/// after the first minute, the estimated time of the whole job.
pub(super) struct IterationNews {
    pub(super) total: u64,
    pub(super) game: Option<&'static Game>,
    pub(super) estimate_printed: bool,
}

impl IterationNews {
    pub(super) fn iteration(
        &mut self,
        run: &mut TrainRun<'_>,
        state: &RlLoopState,
        tally: &Tally,
        stats: &IterationStats,
    ) {
        let config = run.config;
        let distribution = config.procgen.distribution_mode;
        log_iteration(
            run.sink,
            stats,
            config.ppo.batch_size(),
            self.game.map(|g| (g, distribution)),
        );
        let eta = report(
            &mut *run.sink,
            &mut *run.progress,
            state,
            tally,
            stats,
            config,
        );
        if !self.estimate_printed && tally.started.elapsed().as_secs() >= 60 {
            self.estimate_printed = true;
            eprintln!("{}", job_estimate(eta, self.total, config));
        }
    }
}
