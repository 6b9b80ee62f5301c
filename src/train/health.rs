//! Search health in every search loop (RL, vision, transformer): every `search.health.every`
//! iterations the dominant eigenvalue of the Hessian of the strategy's own search loss with
//! respect to its architecture parameters (RobustDARTS, Zela et al. ICLR 2020;
//! [`crate::search::health`]), each cell type's entropy, and the share of parameter-free ops
//! in the currently derived cell, under TensorBoard's `health/` tags; and, when asked,
//! RobustDARTS's early stop ([`crate::search::early_stop`]) with the architecture derived at
//! the stopping point.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::logging::arch::mean_entropy;
use crate::logging::MetricsSink;
use crate::nas::{ArchParams, Genotype};
use crate::search::early_stop::{robust_darts_stop, EarlyStopConfig};
use crate::search::health::{parameter_free_share, relaxation_hessian_eigenvalue};
use crate::search::perturb::WeightGuard;
use crate::search::{Objective, SearchError, SearchStrategy};

/// `[search.health]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Measure every this many iterations of the loop (PPO iterations in RL, weight steps in
    /// the vision and transformer searches); 0 turns search health off; unset: the loop's
    /// default (RL 10, vision 100, transformer 50). Each measurement costs one forward and
    /// `1 + power_iterations` backward passes on one batch.
    pub every: Option<u64>,
    /// Power-iteration steps per eigenvalue (each one exact Hessian-vector product, about the
    /// cost of one weight step: a measurement costs about `1 + power_iterations` of them).
    pub power_iterations: usize,
    /// RobustDARTS's early stop (off by default).
    pub early_stop: EarlyStopConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            every: None,
            power_iterations: 10,
            early_stop: EarlyStopConfig::default(),
        }
    }
}

impl HealthConfig {
    /// Measured every `every` iterations, 10 power-iteration steps, no early stop.
    pub fn every(every: u64) -> Self {
        Self {
            every: Some(every),
            ..Self::default()
        }
    }

    /// This config with an unset period resolved to the loop's `default_every`.
    pub fn resolved(&self, default_every: u64) -> Self {
        Self {
            every: Some(self.every.unwrap_or(default_every)),
            ..self.clone()
        }
    }

    /// Whether iteration `iteration` (the count of iterations done) is a measurement (an
    /// unset period counts as off: loops resolve it first, [`HealthConfig::resolved`]).
    pub fn due(&self, iteration: u64) -> bool {
        let every = self.every.unwrap_or(0);
        every > 0 && iteration.is_multiple_of(every)
    }

    pub fn validate(&self) -> Result<(), String> {
        let every = self.every.unwrap_or(0);
        if every > 0 && self.power_iterations == 0 {
            return Err("search.health.power_iterations must be at least 1".into());
        }
        if self.early_stop.enabled && every == 0 {
            return Err(
                "search.health.early_stop.enabled needs search.health.every > 0 (the rule reads \
                 the measured eigenvalues)"
                    .into(),
            );
        }
        self.early_stop.validate()
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthPoint {
    /// The loop's iteration count when measured.
    pub iteration: u64,
    pub eigenvalue: f64,
    /// The architecture the strategy derived at that moment (what an early stop returns).
    pub genotype: Genotype,
}

/// Why and where a search stopped early; written to `early_stop.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    /// Iteration of the measurement that decided.
    pub decided_at_iteration: u64,
    /// Iteration whose architecture the search returns (the earlier window's centre).
    pub architecture_from_iteration: u64,
    pub earlier_mean: f64,
    pub current_mean: f64,
    pub rule: EarlyStopConfig,
    pub genotype: Genotype,
}

impl EarlyStop {
    /// One sentence for logs and the report.
    pub fn reason(&self) -> String {
        format!(
            "RobustDARTS early stop at iteration {}: the mean dominant eigenvalue of the last {} \
             measurements ({:.4}) grew past 1/{} times the mean {} measurements earlier \
             ({:.4}); the architecture derived at iteration {} is returned",
            self.decided_at_iteration,
            self.rule.window,
            self.current_mean,
            self.rule.ratio,
            self.rule.lag,
            self.earlier_mean,
            self.architecture_from_iteration
        )
    }
}

pub const EARLY_STOP_FILE: &str = "early_stop.json";
const HEALTH_FILE: &str = "health.json";

/// The measurements of one search so far, checkpointed with it (`health.json`), and the early
/// stop once the rule fired.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthMonitor {
    pub points: Vec<HealthPoint>,
    pub stopped: Option<EarlyStop>,
}

impl HealthMonitor {
    /// Measures the strategy's search health on `objective`'s current batches, logs it at
    /// `step` and, when the early stop is enabled and fires, records and returns it. The
    /// measurement leaves no trace: forward passes may update BatchNorm statistics, which are
    /// restored bit-exactly, and no gradient is accumulated (derivatives via
    /// `autograd.grad`-style calls).
    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        &mut self,
        config: &HealthConfig,
        strategy: &dyn SearchStrategy,
        arch: &ArchParams,
        objective: &mut dyn Objective,
        sink: &mut dyn MetricsSink,
        iteration: u64,
        step: i64,
    ) -> Result<Option<&EarlyStop>, SearchError> {
        let relaxation = strategy.health_relaxation(arch)?;
        if self.points.is_empty() {
            sink.text("health/loss", &relaxation.description, step);
        }
        let buffers = objective.buffers();
        let mut guard = WeightGuard::snapshot(&buffers);
        let eigenvalue = tch::with_grad(|| {
            relaxation_hessian_eigenvalue(objective, relaxation, config.power_iterations)
        });
        guard.restore();
        let eigenvalue = match eigenvalue {
            Ok(v) => v,
            // Without the early stop, health is a log: a loss that cannot be differentiated
            // twice (e.g. a memory-saving surrogate) costs the curve, not the run.
            Err(e) if !config.early_stop.enabled => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| eprintln!("warning: no search-health eigenvalue ({e})"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        sink.scalar("health/eigenvalue", eigenvalue, step);
        let genotype = strategy.derive(arch)?;
        for (name, rows) in ["normal", "reduce"]
            .into_iter()
            .zip(strategy.expected_op_weights(arch)?)
        {
            sink.scalar(&format!("health/{name}/entropy"), mean_entropy(&rows), step);
        }
        let cells = [("normal", &genotype.normal), ("reduce", &genotype.reduce)];
        for (name, genes) in cells {
            if let Some(share) = parameter_free_share(genes) {
                sink.scalar(&format!("health/{name}/parameter_free_share"), share, step);
            }
        }
        self.points.push(HealthPoint {
            iteration,
            eigenvalue,
            genotype,
        });
        if config.early_stop.enabled && self.stopped.is_none() {
            let series: Vec<(u64, f64)> = self
                .points
                .iter()
                .map(|p| (p.iteration, p.eigenvalue))
                .collect();
            if let Some(d) = robust_darts_stop(&series, &config.early_stop) {
                let at = &self.points[d.return_index];
                let stop = EarlyStop {
                    decided_at_iteration: iteration,
                    architecture_from_iteration: at.iteration,
                    earlier_mean: d.earlier_mean,
                    current_mean: d.current_mean,
                    rule: config.early_stop.clone(),
                    genotype: at.genotype.clone(),
                };
                sink.text("health/early_stop", &stop.reason(), step);
                sink.scalar(
                    "health/early_stop_architecture_iteration",
                    at.iteration as f64,
                    step,
                );
                self.stopped = Some(stop);
            }
        }
        Ok(self.stopped.as_ref())
    }

    /// Writes the measurements into a checkpoint folder.
    pub fn save(&self, dir: &Path) -> Result<(), SearchError> {
        let path = dir.join(HEALTH_FILE);
        let json =
            serde_json::to_vec(self).map_err(|e| SearchError::checkpoint(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|source| SearchError::Io { path, source })
    }

    /// Restores what [`HealthMonitor::save`] wrote; a checkpoint without the file (written
    /// before search health existed) starts an empty series.
    pub fn load(dir: &Path) -> Result<Self, SearchError> {
        let path = dir.join(HEALTH_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| SearchError::checkpoint(&path, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SearchError::Io { path, source }),
        }
    }

    /// Writes `early_stop.json` into `run_root` when the search stopped early, and says why on
    /// stderr.
    pub fn write_stop(&self, run_root: &Path) -> Result<(), SearchError> {
        let Some(stop) = &self.stopped else {
            return Ok(());
        };
        eprintln!("{}", stop.reason());
        let path = run_root.join(EARLY_STOP_FILE);
        let json = serde_json::to_vec_pretty(stop)
            .map_err(|e| SearchError::checkpoint(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|source| SearchError::Io { path, source })
    }
}

/// The first `n` rows of a batch tensor (a fixed health batch that draws nothing from the
/// loop's random streams, so turning health on does not change the run).
pub fn head(t: &Tensor, n: i64) -> Tensor {
    t.narrow(0, 0, n.min(t.size()[0]))
}
