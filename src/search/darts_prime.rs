//! DARTS-PRIME (Maile, Lecarpentier, Luga & Wilson 2021, "DARTS-PRIME: Regularization and
//! Scheduling Improve Constrained Optimization in Differentiable NAS"; ../shared/REFERENCE.md
//! section 8; official code `k8lion/DARTS-PRIME`, `train_scheduled_hard_statebn.py` and
//! `model_admm_hard_statebn.py`): first-order DARTS with two changes.
//!
//! **Dynamic schedule.** After every weight step the loop reports
//! `FI = sum_p ||grad_w L_train||^2` (before clipping, as the official `track_FI` runs before
//! `clip_grad_norm_`); the strategy keeps its EWMA (`ewma <- c FI + (1 - c) ewma`, seeded with
//! the first `FI`). Before each iteration's weight step an alpha step happens iff
//! `0 < ewma < threshold`; then `threshold *= m^(-sched_freq)`, otherwise `threshold *= m`
//! (`m` = 1.05). On a stationary signal the threshold settles where
//! `fires * sched_freq = non-fires`, i.e. one alpha step per `sched_freq + 1` iterations, and it
//! follows the signal when it moves (multiplicatively, 5% per iteration upwards).
//!
//! **Proximity regularisation.** The alpha step minimises
//! `L_val + (t/T) (rho/2) sum_c ||softmax(alpha_c) - P_c||` (Frobenius norm, not squared, summed
//! over the normal and reduce matrices as the official `prox_loss` does), with `P_c` the one-hot
//! mask of the genotype currently derived from the alphas (kept edges carry a 1 at their op,
//! dropped edges are all zero; held constant, as the official `.detach()` does) and `t/T` the
//! search's progress in epochs. The **ADMM** variant (`regularizer = "admm"`) replaces it by
//! `(rho/2) sum_c ||softmax(alpha_c) - Z_c + U_c||` with the scaled-form updates
//! `Z = mask(derive(softmax(alpha) + U))`, `U <- U + softmax(alpha) - Z` every `admm_every`
//! alpha steps.
//!
//! # How it maps onto the trait
//!
//! The decision for iteration `i + 1` is taken in `after_weight_step` of iteration `i` (that is
//! when the official loop has the new EWMA; it decides at the top of the next iteration, with
//! nothing in between) and recorded; `wants_arch_step(i + 1)` reads it. Iterations not decided
//! yet answer `true` ("may want"): a loop that asks ahead (the RL loop, before collecting the
//! search rollout of a PPO update) prepares a search batch, and one that never reports weight
//! steps degrades to an alpha step every iteration (DARTS).
//!
//! # Departures, each for a reason
//! - Defaults: `rho` 0.1 and the EWMA weight 0.2 are the official DARTS-PRIME script's own
//!   defaults (`train_scheduled_hard_statebn.py`: `--rho 1e-1`, `--ewma 0.2`); `sched_freq` 10
//!   is what its README command passes (`--schedfreq 10`; the script's default is 1), and the
//!   schedule is on by default here (the official `--dyno_schedule` flag, also in that
//!   command). The older `train_scheduled.py` in the same repository has `--rho 1e-3` and
//!   `--ewma 1.0`; it is not the DARTS-PRIME entry point.
//! - `t/T`: the official clock advances `1/batches` per iteration and is divided by a
//!   hard-coded 50 (= its epochs). Here `T` is the loop's epoch count and the fraction within
//!   an epoch is measured against the previous epoch's number of weight steps; in the first
//!   epoch, whose length is not known yet, the fraction is 0 (the official ramp reaches 1/T
//!   there, so the difference is at most `rho / (2T)`).
//! - ADMM works on `softmax(alpha)` throughout (penalty, `Z` and `U`); the official code
//!   mixes raw alphas into `U`'s update and the `Z` projection, and starts from `Z = alpha`.
//!   Here `Z` starts at `softmax(alpha)` and `U` at 0 (no pull until the first projection).
//!   The official loop updates every `admm_freq - 1` alpha steps (its counter check runs
//!   before the reset); here exactly every `admm_every`.
//! - A loop that cannot report the gradient norm is an error, not a fallback: a non-finite
//!   `loss` or `grad_norm_sq` in the [`WeightStepReport`] stops the search with a message that
//!   names the value (the RL loop reports the real ones).
//! - The official `--dyno_split` sets `train_portion = 1 / (1 + schedfreq)`; the split is the
//!   loop's business here (`[search] train_portion`, the presets use 10/11 as REFERENCE.md).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_strategy, save_strategy};
use super::optim::ordered_variables;
use super::perturb::{grad, norm};
use super::{
    alphas, softmax_weights, Adam, ArchAdamConfig, ArchStepStats, Objective, Phase, ReportField,
    SearchError, SearchStrategy, WeightStepReport,
};
use crate::nas::{ArchParams, CellSpace, CellWeights, DeriveRule, Gene, Genotype};

/// What pulls the alphas towards a discrete architecture in the alpha step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimeRegularizer {
    /// Proximity to the currently derived genotype, ramped in linearly (DARTS-PRIME, the
    /// official `--reg prox`).
    Prox,
    /// ADMM towards a discrete `Z` with a scaled dual `U` (the official `--reg admm`).
    Admm,
    /// Plain first-order DARTS loss (the schedule alone; the paper's ablation).
    None,
}

/// `[search.strategy.params]` of `kind = "darts_prime"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DartsPrimeParams {
    /// `true`: the dynamic schedule decides when an alpha step happens (`--dyno_schedule`).
    /// `false`: an alpha step before every weight step, as DARTS.
    pub dynamic_schedule: bool,
    /// Weight steps per alpha step the schedule aims at (`--schedfreq`); on a stationary signal
    /// it takes one alpha step per `sched_freq + 1` iterations. DARTS-PRIME: 10.
    pub sched_freq: f64,
    /// Weight of the newest `FI` in its moving average, in (0, 1]; 1 = no smoothing. REFERENCE.md
    /// section 8: 0.2.
    pub ewma: f64,
    /// Threshold before the first iteration (`--init_alpha_threshold`). DARTS-PRIME: 1.
    pub initial_threshold: f64,
    /// Factor `m > 1` the threshold grows by per iteration without an alpha step; one with an
    /// alpha step divides it by `m^sched_freq` (`--threshold_multiplier`). DARTS-PRIME: 1.05.
    pub threshold_multiplier: f64,
    /// `prox` (DARTS-PRIME), `admm` or `none`.
    pub regularizer: PrimeRegularizer,
    /// Penalty weight `rho` (the term is `rho/2` times a norm). REFERENCE.md section 8: 0.1.
    pub rho: f64,
    /// ADMM only: alpha steps between `Z`/`U` updates (`--admm_freq`). Official: 10.
    pub admm_every: u32,
    /// How the genotype (and so the proximity target) is read off `softmax(alpha)`.
    /// DARTS-PRIME: `darts` (top-2 edges per node, `none` excluded).
    pub derive: DeriveRule,
    /// Adam over the alphas. DARTS-PRIME keeps DARTS's: lr 3e-4, betas (0.5, 0.999), weight
    /// decay 1e-3.
    pub optimizer: ArchAdamConfig,
}

impl Default for DartsPrimeParams {
    fn default() -> Self {
        Self {
            dynamic_schedule: true,
            sched_freq: 10.0,
            ewma: 0.2,
            initial_threshold: 1.0,
            threshold_multiplier: 1.05,
            regularizer: PrimeRegularizer::Prox,
            rho: 0.1,
            admm_every: 10,
            derive: DeriveRule::Darts,
            optimizer: ArchAdamConfig::default(),
        }
    }
}

#[path = "darts_prime_schedule.rs"]
mod schedule;
pub use schedule::PrimeSchedule;
#[cfg(test)]
use schedule::THRESHOLD_BOUNDS;

/// ADMM's discrete target and scaled dual per cell type, `[num_edges][num_ops]`, normal first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AdmmState {
    z: Vec<Vec<Vec<f64>>>,
    u: Vec<Vec<Vec<f64>>>,
    /// Alpha steps since the last `Z`/`U` update.
    steps_since_update: u32,
}

/// Everything but Adam, checkpointed as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    schedule: PrimeSchedule,
    epoch: usize,
    /// `None` until the loop calls `begin_epoch`.
    num_epochs: Option<usize>,
    steps_in_epoch: u64,
    prev_epoch_steps: Option<u64>,
    arch_steps: u64,
    /// The regulariser's value and weight at the last alpha step.
    last_penalty: Option<f64>,
    last_penalty_weight: Option<f64>,
    admm: Option<AdmmState>,
}

const STATE_FILE: &str = "darts_prime.json";

/// The DARTS-PRIME strategy.
#[derive(Debug)]
pub struct DartsPrime {
    params: DartsPrimeParams,
    adam: Adam,
    state: State,
}

impl DartsPrime {
    pub fn new(arch: &ArchParams, params: DartsPrimeParams) -> Result<Self, SearchError> {
        let p = &params;
        let bad = |what: String| Err(SearchError::Invalid(format!("darts_prime: {what}")));
        if !(p.sched_freq.is_finite() && p.sched_freq > 0.0) {
            return bad(format!("sched_freq must be positive, got {}", p.sched_freq));
        }
        if !(p.ewma > 0.0 && p.ewma <= 1.0) {
            return bad(format!("ewma must lie in (0, 1], got {}", p.ewma));
        }
        if !(p.initial_threshold.is_finite() && p.initial_threshold > 0.0) {
            return bad(format!(
                "initial_threshold must be positive, got {}",
                p.initial_threshold
            ));
        }
        if !(p.threshold_multiplier.is_finite() && p.threshold_multiplier > 1.0) {
            return bad(format!(
                "threshold_multiplier must be > 1, got {}",
                p.threshold_multiplier
            ));
        }
        if !(p.rho.is_finite() && p.rho >= 0.0) {
            return bad(format!("rho must be >= 0, got {}", p.rho));
        }
        if p.admm_every == 0 {
            return bad("admm_every must be at least 1".into());
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        let admm = match params.regularizer {
            PrimeRegularizer::Admm => {
                let z = probabilities(arch)?;
                let u = z
                    .iter()
                    .map(|m| m.iter().map(|r| vec![0.0; r.len()]).collect())
                    .collect();
                Some(AdmmState {
                    z,
                    u,
                    steps_since_update: 0,
                })
            }
            _ => None,
        };
        let state = State {
            schedule: PrimeSchedule::new(&params),
            epoch: 0,
            num_epochs: None,
            steps_in_epoch: 0,
            prev_epoch_steps: None,
            arch_steps: 0,
            last_penalty: None,
            last_penalty_weight: None,
            admm,
        };
        Ok(Self {
            params,
            adam,
            state,
        })
    }

    pub fn params(&self) -> &DartsPrimeParams {
        &self.params
    }

    pub fn schedule(&self) -> &PrimeSchedule {
        &self.state.schedule
    }

    /// Search progress `t/T` in [0, 1] at the current iteration (see the module doc).
    pub fn progress(&self) -> f64 {
        let Some(total) = self.state.num_epochs.filter(|&n| n > 0) else {
            return 0.0;
        };
        let within = self
            .state
            .prev_epoch_steps
            .filter(|&n| n > 0)
            .map_or(0.0, |n| {
                ((self.state.steps_in_epoch + 1) as f64 / n as f64).min(1.0)
            });
        ((self.state.epoch as f64 + within) / total as f64).clamp(0.0, 1.0)
    }

    /// The weight in front of the regulariser's norms now: `(t/T) rho/2` (prox), `rho/2`
    /// (ADMM), 0 (none).
    pub fn penalty_weight(&self) -> f64 {
        match self.params.regularizer {
            PrimeRegularizer::Prox => self.progress() * self.params.rho / 2.0,
            PrimeRegularizer::Admm => self.params.rho / 2.0,
            PrimeRegularizer::None => 0.0,
        }
    }

    /// The regulariser at the current alphas, with its graph to them: the proximity term
    /// `(t/T)(rho/2) sum_c ||softmax(alpha_c) - P_c||` or the ADMM term
    /// `(rho/2) sum_c ||softmax(alpha_c) - Z_c + U_c||`; `None` without a regulariser.
    pub fn penalty(&self, arch: &ArchParams) -> Result<Option<Tensor>, SearchError> {
        let weight = self.penalty_weight();
        let a = alphas(arch);
        let targets: Vec<Tensor> = match self.params.regularizer {
            PrimeRegularizer::None => return Ok(None),
            PrimeRegularizer::Prox => {
                let genotype = self.derive(arch)?;
                genotype_masks(arch.space(), &genotype, a.len())?
                    .iter()
                    .zip(&a)
                    .map(|(m, alpha)| matrix(m, alpha))
                    .collect::<Result<_, _>>()?
            }
            PrimeRegularizer::Admm => {
                let admm = self.admm()?;
                admm.z
                    .iter()
                    .zip(&admm.u)
                    .zip(&a)
                    .map(|((z, u), alpha)| Ok(matrix(z, alpha)? - matrix(u, alpha)?))
                    .collect::<Result<_, SearchError>>()?
            }
        };
        let mut total: Option<Tensor> = None;
        for (alpha, target) in a.iter().zip(&targets) {
            let term = distance(alpha, target);
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
        Ok(total.map(|t| t * weight))
    }

    fn admm(&self) -> Result<&AdmmState, SearchError> {
        self.state.admm.as_ref().ok_or_else(|| {
            SearchError::Invalid(
                "darts_prime: ADMM state missing (checkpoint of another regularizer?)".into(),
            )
        })
    }

    /// ADMM's projection and dual update: `Z = mask(derive(p + U))`, `U <- U + p - Z`, with
    /// `p = softmax(alpha)` after the alpha step.
    fn admm_update(&mut self, arch: &ArchParams) -> Result<(), SearchError> {
        let p = probabilities(arch)?;
        let rule = self.params.derive;
        let space = *arch.space();
        let admm = self
            .state
            .admm
            .as_mut()
            .ok_or_else(|| SearchError::Invalid("darts_prime: ADMM state missing".into()))?;
        let shifted: Vec<Tensor> = p
            .iter()
            .zip(&admm.u)
            .map(|(pc, uc)| {
                let rows: Vec<f64> = pc
                    .iter()
                    .zip(uc)
                    .flat_map(|(pr, ur)| pr.iter().zip(ur).map(|(a, b)| a + b))
                    .collect();
                Tensor::from_slice(&rows).view([pc.len() as i64, -1])
            })
            .collect();
        let genotype = Genotype::derive(&space, &shifted[0], shifted.get(1), rule)?;
        let z = genotype_masks(&space, &genotype, p.len())?;
        for ((uc, pc), zc) in admm.u.iter_mut().zip(&p).zip(&z) {
            for ((ur, pr), zr) in uc.iter_mut().zip(pc).zip(zc) {
                for ((u, p), z) in ur.iter_mut().zip(pr).zip(zr) {
                    *u += p - z;
                }
            }
        }
        admm.z = z;
        admm.steps_since_update = 0;
        Ok(())
    }

    /// ADMM's current `Z` and `U` (normal first), `[num_edges][num_ops]` each.
    #[allow(clippy::type_complexity)]
    pub fn admm_state(&self) -> Option<(&[Vec<Vec<f64>>], &[Vec<Vec<f64>>])> {
        self.state.admm.as_ref().map(|a| (&a.z[..], &a.u[..]))
    }
}

/// `||softmax(alpha) - target||_F` over one `[num_edges, num_ops]` matrix, in alpha's precision.
///
/// Its gradient (what tests/search_prime.rs checks by finite differences): with
/// `s = softmax(alpha)` per row and `r = s - target`, `d/d alpha_eo = s_eo (r_eo - <r_e, s_e>) / ||r||`
/// (the softmax Jacobian `diag(s) - s s^T` applied to `r / ||r||`).
pub fn distance(alpha: &Tensor, target: &Tensor) -> Tensor {
    let s = alpha.softmax(-1, alpha.kind());
    (s - target).norm()
}

/// The one-hot masks of `genotype`, one per cell type (normal, then reduce when `cells` is 2):
/// a 1 at `(edge, op)` for every gene, zeros on edges the genotype drops.
pub fn genotype_masks(
    space: &CellSpace,
    genotype: &Genotype,
    cells: usize,
) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
    let one = |nodes: &[Vec<Gene>]| -> Result<Vec<Vec<f64>>, SearchError> {
        let mut mask = vec![vec![0.0; space.num_ops()]; space.num_edges()];
        if nodes.len() != space.num_nodes {
            return Err(SearchError::Invalid(format!(
                "darts_prime: genotype has {} nodes, the space {}",
                nodes.len(),
                space.num_nodes
            )));
        }
        for (node, genes) in nodes.iter().enumerate() {
            let edges = space.node_edges(node);
            for &(op, from) in genes {
                let row = edges.start + from;
                let col = space.op_set.check_member(op)?;
                if row >= edges.end {
                    return Err(SearchError::Invalid(format!(
                        "darts_prime: node {node} reads state {from}, which it cannot see"
                    )));
                }
                mask[row][col] = 1.0;
            }
        }
        Ok(mask)
    };
    let mut out = vec![one(&genotype.normal)?];
    if cells > 1 {
        out.push(one(&genotype.reduce)?);
    }
    Ok(out)
}

/// `rows` as a tensor shaped, typed and placed like `like`.
fn matrix(rows: &[Vec<f64>], like: &Tensor) -> Result<Tensor, SearchError> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_slice(&flat)
        .f_view(like.size().as_slice())?
        .to_kind(like.kind())
        .to_device(like.device()))
}

/// `softmax(alpha)` per cell type as f64 rows (no graph).
fn probabilities(arch: &ArchParams) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
    alphas(arch)
        .iter()
        .map(super::alpha_probabilities)
        .collect()
}

impl SearchStrategy for DartsPrime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// `softmax(alpha)`, detached outside the arch step (bilevel, as DARTS).
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        Ok(super::bilevel_softmax_weights(arch, 1.0, phase))
    }

    fn begin_epoch(&mut self, epoch: usize, num_epochs: usize) {
        let s = &mut self.state;
        if s.steps_in_epoch > 0 {
            s.prev_epoch_steps = Some(s.steps_in_epoch);
        }
        s.steps_in_epoch = 0;
        s.epoch = epoch;
        s.num_epochs = Some(num_epochs);
        s.schedule.epoch_decisions = 0;
        s.schedule.epoch_fires = 0;
    }

    /// The dynamic schedule's decision for `iteration` (always, without the schedule).
    fn wants_arch_step(&self, iteration: u64) -> bool {
        !self.params.dynamic_schedule || self.state.schedule.wants(iteration)
    }

    /// First-order DARTS step on `L_val + regulariser` (the official `Architect.step` with
    /// `model._loss`); ADMM projects and updates its dual every `admm_every` steps.
    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let weights = softmax_weights(arch, 1.0);
        let l_val = objective.search_loss_for_alphas(&weights)?;
        let penalty = self.penalty(arch)?;
        let total = match &penalty {
            Some(p) => &l_val + p,
            None => l_val,
        };
        // The regulariser reads only the alphas, the same on every process: averaging the
        // total averages the validation part and keeps the regulariser's.
        let loss = objective.average_value_over_processes(total.f_double_value(&[])?)?;
        let g = grad(&total, &arch.parameters(), false)?;
        objective.average_over_processes(&g)?;
        self.adam.step_with(&g)?;
        self.state.arch_steps += 1;
        self.state.last_penalty = penalty.map(|p| p.double_value(&[]));
        self.state.last_penalty_weight = Some(self.penalty_weight());
        if let Some(admm) = self.state.admm.as_mut() {
            admm.steps_since_update += 1;
            if admm.steps_since_update >= self.params.admm_every {
                self.admm_update(arch)?;
            }
        }
        Ok(ArchStepStats {
            loss,
            grad_norm: norm(&g),
        })
    }

    /// Feeds the schedule and decides the next iteration. A non-finite `grad_norm_sq` (or
    /// loss) in the report is an error naming the value (the schedule has no sensible answer
    /// to it, and a fixed fallback would hide a loop that does not report).
    fn after_weight_step(
        &mut self,
        _arch: &ArchParams,
        report: &WeightStepReport,
    ) -> Result<Option<ArchStepStats>, SearchError> {
        if self.params.dynamic_schedule {
            report.check_finite(Self::NAME, &[ReportField::Loss, ReportField::GradNormSq])?;
        }
        self.state.steps_in_epoch += 1;
        if self.params.dynamic_schedule {
            self.state
                .schedule
                .observe(&self.params, report.iteration, report.grad_norm_sq)?;
        }
        Ok(None)
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let s = &self.state;
        let sched = &s.schedule;
        let mut out = vec![("arch_lr", self.adam.lr())];
        out.push(("alpha_steps", s.arch_steps as f64));
        if self.params.dynamic_schedule {
            if let Some(fi) = sched.last_fi {
                out.push(("schedule_fi", fi));
            }
            if let Some(e) = sched.ewma {
                out.push(("schedule_fi_ewma", e));
            }
            out.push(("schedule_threshold", sched.threshold));
            out.push(("schedule_alpha_step", f64::from(u8::from(sched.last_fired))));
            if sched.epoch_decisions > 0 {
                out.push((
                    "schedule_alpha_step_rate",
                    sched.epoch_fires as f64 / sched.epoch_decisions as f64,
                ));
            }
        }
        let (term, weight) = match self.params.regularizer {
            PrimeRegularizer::Prox => ("proximity_term", "proximity_weight"),
            PrimeRegularizer::Admm => ("admm_term", "admm_weight"),
            PrimeRegularizer::None => return out,
        };
        if let Some(v) = s.last_penalty {
            out.push((term, v));
        }
        out.push((
            weight,
            s.last_penalty_weight.unwrap_or(self.penalty_weight()),
        ));
        out
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_strategy(dir, Some(&self.adam), STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        let state: State = load_strategy(dir, Some(&mut self.adam), STATE_FILE)?;
        if state.admm.is_some() != (self.params.regularizer == PrimeRegularizer::Admm) {
            return Err(SearchError::checkpoint(
                &dir.join(STATE_FILE),
                format!(
                    "written with a different regularizer than the configured {:?}",
                    self.params.regularizer
                ),
            ));
        }
        self.state = state;
        Ok(())
    }

    /// First order, averaged over the processes; the dynamic schedule reads the weight
    /// step's gradient norm, which the loop computes after its all-reduce, so every process
    /// decides the same.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "darts_prime_tests.rs"]
mod tests;
