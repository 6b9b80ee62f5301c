//! The numerical core of iDARTS (Zhang et al., "iDARTS: Differentiable Architecture Search with
//! Stochastic Implicit Gradients", ICML 2021; REFERENCE.md section 5): the hypergradient by the
//! implicit function theorem with the inverse Hessian approximated by a truncated Neumann
//! series, and a power-iteration estimate of the top Hessian eigenvalue that says whether the
//! series can converge for the chosen step.
//!
//! At an inner solution `w*(alpha)` of the training loss,
//! `dL_val/dalpha = grad_alpha L_val - grad2_{alpha,w} L_train [grad2_{w,w} L_train]^{-1} grad_w L_val`,
//! and `H^{-1} ~= gamma * sum_{k=0}^{K} (I - gamma H)^k` (converges iff `0 < gamma * lambda < 2`
//! for every eigenvalue `lambda` of `H`). With `K = 0` this is DARTS's second-order formula
//! with `xi = gamma` evaluated at `w_T` (no virtual step).
//!
//! The functions here take the Hessian-vector and mixed products as closures so that the same
//! code serves a supernet (products by double backward through `perturb::exact_hvp`, or by
//! finite differences) and the closed-form checks in `tests/search_idarts.rs`. Each closure call
//! may use its own minibatch: that is the stochastic variant of the paper (one batch per term).
//!
//! The strategy [`IDarts`]: the loop's weight steps are the inner optimisation; every `T`-th
//! iteration (after `T` weight steps) it takes one alpha step with the implicit hypergradient
//! at the current weights `w_T`, each Hessian-vector product on the objective's current
//! training batch. Exact products by double backward; the mixed term exact or by DARTS's
//! central difference.

use crate::agents::compute;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_strategy, save_strategy};
use super::darts::HessianMode;
use super::optim::ordered_variables;
/// The eigenvalue estimate iDARTS's convergence check uses (it lives with the other
/// Hessian-vector tools, where search health uses it too).
pub use super::perturb::power_iteration;
use super::perturb::{self, exact_hvp, exact_mixed_hvp, fd_mixed_hvp, grad, WeightGuard};
use super::{
    softmax_weights, Adam, ArchAdamConfig, ArchStepStats, Objective, Phase, SearchError,
    SearchStrategy,
};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype};

/// The Neumann approximation of `H^{-1} v` and how far it was from converging.
#[derive(Debug)]
pub struct NeumannSolve {
    /// `gamma * sum_{k=0}^{K} (I - gamma H)^k v`.
    pub solution: Vec<Tensor>,
    /// Norm of the last term added, `gamma * ||(I - gamma H)^K v||`: a residual signal (it
    /// shrinks geometrically when the series converges, grows when `gamma` is too large).
    pub residual_norm: f64,
}

/// Approximates `H^{-1} v` by `K` Neumann terms with step `gamma`; `hvp(u)` returns `H u`.
/// Makes `K` Hessian-vector products.
pub fn neumann_inverse_hvp(
    v: &[Tensor],
    gamma: f64,
    terms: usize,
    mut hvp: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>, SearchError>,
) -> Result<NeumannSolve, SearchError> {
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err(SearchError::Invalid(format!(
            "iDARTS Neumann step gamma must be a positive finite number, got {gamma}"
        )));
    }
    let detached = |ts: &[Tensor]| ts.iter().map(Tensor::detach).collect::<Vec<_>>();
    let mut term = detached(v);
    let mut sum = detached(v);
    for _ in 0..terms {
        let h = hvp(&term)?;
        if h.len() != term.len() {
            return Err(SearchError::Invalid(format!(
                "Hessian-vector product returned {} tensors for a vector of {}",
                h.len(),
                term.len()
            )));
        }
        term = term
            .iter()
            .zip(&h)
            .map(|(t, hv)| (t - hv.detach() * gamma).detach())
            .collect();
        sum = sum.iter().zip(&term).map(|(s, t)| s + t).collect();
    }
    let residual_norm = gamma * perturb::norm(&term);
    Ok(NeumannSolve {
        solution: sum.iter().map(|s| s * gamma).collect(),
        residual_norm,
    })
}

/// The implicit hypergradient `direct_alpha - mixed(H^{-1} val_grad_w)` with the inverse by
/// [`neumann_inverse_hvp`]. `direct_alpha` is `grad_alpha L_val` (zeros when the validation
/// loss does not depend on alpha directly), `val_grad_w` is `grad_w L_val` at `w_T`, `hvp(u)`
/// is `grad2_{w,w} L_train u` and `mixed(p)` is `grad2_{alpha,w} L_train p` (both at `w_T`).
/// Returns the hypergradient and the Neumann residual norm.
pub fn implicit_hypergradient(
    direct_alpha: &[Tensor],
    val_grad_w: &[Tensor],
    gamma: f64,
    terms: usize,
    hvp: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>, SearchError>,
    mut mixed: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>, SearchError>,
) -> Result<(Vec<Tensor>, f64), SearchError> {
    let solve = neumann_inverse_hvp(val_grad_w, gamma, terms, hvp)?;
    let m = mixed(&solve.solution)?;
    if m.len() != direct_alpha.len() {
        return Err(SearchError::Invalid(format!(
            "mixed product returned {} tensors for {} architecture tensors",
            m.len(),
            direct_alpha.len()
        )));
    }
    let hypergrad = direct_alpha
        .iter()
        .zip(&m)
        .map(|(d, mp)| d.detach() - mp.detach())
        .collect();
    Ok((hypergrad, solve.residual_norm))
}

/// Whether the Neumann series `sum (I - gamma H)^k` converges given the top eigenvalue
/// estimate `lambda_max` of a positive semidefinite `H`: `0 < gamma * lambda_max < 2`
/// (`gamma * lambda_max <= 1` additionally makes every term shrink monotonically).
pub fn neumann_converges(gamma: f64, lambda_max: f64) -> bool {
    let r = gamma * lambda_max;
    r > 0.0 && r < 2.0
}

/// iDARTS parameters (`[search.strategy.params]` with `kind = "idarts"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IDartsParams {
    /// Weight steps between alpha steps (`T`; the official code's default 4).
    pub inner_steps: u64,
    /// Neumann terms (`K`; default 2).
    pub neumann_terms: usize,
    /// Neumann step; `None` = the weight learning rate (the official code's choice).
    pub gamma: Option<f64>,
    /// How the mixed term `grad2_{alpha,w} L_train p` is computed.
    pub mixed: HessianMode,
    /// Finite-difference radius (as DARTS: `eps = fd_radius / ||p||`).
    pub fd_radius: f64,
    /// Power iterations for the top Hessian eigenvalue at each alpha step (0 = off); when on,
    /// a step `gamma` for which the series cannot converge is reported on stderr.
    pub power_iterations: usize,
    pub temperature: f64,
    pub derive: DeriveRule,
    pub optimizer: ArchAdamConfig,
}

impl Default for IDartsParams {
    fn default() -> Self {
        Self {
            inner_steps: 4,
            neumann_terms: 2,
            gamma: None,
            mixed: HessianMode::Exact,
            fd_radius: 0.01,
            power_iterations: 0,
            temperature: 1.0,
            derive: DeriveRule::Darts,
            optimizer: ArchAdamConfig::default(),
        }
    }
}

const STATE_FILE: &str = "idarts.json";

/// The last alpha step's diagnostics, checkpointed (as JSON, so `None` until a step set them),
/// so that a resumed search logs the same scalars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    residual_norm: Option<f64>,
    eigenvalue: Option<f64>,
    gamma_used: Option<f64>,
}

/// iDARTS as a search strategy.
#[derive(Debug)]
pub struct IDarts {
    params: IDartsParams,
    adam: Adam,
    state: State,
}

impl IDarts {
    pub fn new(arch: &ArchParams, params: IDartsParams) -> Result<Self, SearchError> {
        let gamma_ok = params.gamma.is_none_or(|g| g.is_finite() && g > 0.0);
        if params.inner_steps == 0
            || !gamma_ok
            || !(params.temperature > 0.0 && params.fd_radius > 0.0)
        {
            return Err(SearchError::Invalid(format!(
                "idarts: inner_steps must be >= 1 and gamma, temperature and fd_radius positive; \
                 got {}, {:?}, {}, {}",
                params.inner_steps, params.gamma, params.temperature, params.fd_radius
            )));
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        Ok(Self {
            params,
            adam,
            state: State::default(),
        })
    }

    /// The implicit hypergradient at the objective's current weights; returns the validation
    /// loss and the gradient. Weights and buffers are restored bit-exactly.
    ///
    /// Runs in fp32 whatever the run's precision ([`compute::full_precision`]): the Neumann
    /// series sums `K` Hessian-vector products, each a double backward, and bf16 rounding in
    /// every term would accumulate into the hypergradient.
    pub fn hypergradient(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        compute::full_precision(|| self.hypergradient_fp32(arch, objective))
    }

    fn hypergradient_fp32(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        let t = self.params.temperature;
        let a = arch.parameters();
        let w = objective.parameters();
        let gamma = self.params.gamma.unwrap_or(objective.virtual_step().lr);
        let mut guarded: Vec<Tensor> = w.iter().map(Tensor::shallow_clone).collect();
        guarded.extend(objective.buffers());
        let mut guard = WeightGuard::snapshot(&guarded);

        let weights = softmax_weights(arch, t);
        let l_val = objective.search_loss(&weights)?;
        let l_val_value = objective.average_value_over_processes(l_val.f_double_value(&[])?)?;
        let mut inputs: Vec<Tensor> = w.iter().map(Tensor::shallow_clone).collect();
        inputs.extend(a.iter().map(Tensor::shallow_clone));
        let mut grads = grad(&l_val, &inputs, false)?;
        objective.average_over_processes(&grads)?;
        let d_alpha = grads.split_off(w.len());
        let v = grads;

        let detached = tch::no_grad(|| softmax_weights(arch, t));
        let mut hvp = |u: &[Tensor]| -> Result<Vec<Tensor>, SearchError> {
            let loss = objective.train_loss(&detached)?;
            // The whole batch's Hessian is the mean of the processes' (equal shares).
            let h = exact_hvp(&loss, &w, u)?;
            objective.average_over_processes(&h)?;
            Ok(h)
        };
        if self.params.power_iterations > 0 && perturb::norm(&v) > 0.0 {
            let eigenvalue = power_iteration(&v, self.params.power_iterations, &mut hvp)?;
            self.state.eigenvalue = Some(eigenvalue).filter(|e| e.is_finite());
            if !neumann_converges(gamma, eigenvalue) {
                eprintln!(
                    "idarts: Neumann series cannot converge: gamma {gamma} x top Hessian \
                     eigenvalue {eigenvalue:.4} is outside (0, 2); lower gamma"
                );
            }
        }
        let solve = neumann_inverse_hvp(&v, gamma, self.params.neumann_terms, &mut hvp)?;
        self.state.residual_norm = Some(solve.residual_norm).filter(|r| r.is_finite());
        self.state.gamma_used = Some(gamma);
        let p = solve.solution;
        let mixed = match self.params.mixed {
            HessianMode::Exact => {
                let weights = softmax_weights(arch, t);
                let loss = objective.train_loss(&weights)?;
                let m = exact_mixed_hvp(&loss, &w, &a, &p)?;
                objective.average_over_processes(&m)?;
                m
            }
            HessianMode::FiniteDifference => {
                let p_norm = perturb::norm(&p);
                if p_norm == 0.0 {
                    a.iter().map(Tensor::zeros_like).collect()
                } else {
                    let eps = self.params.fd_radius / p_norm;
                    fd_mixed_hvp(&mut guard, &p, eps, || {
                        let weights = softmax_weights(arch, t);
                        let loss = objective.train_loss(&weights)?;
                        let g = grad(&loss, &a, false)?;
                        objective.average_over_processes(&g)?;
                        Ok(g)
                    })?
                }
            }
        };
        drop(guard);
        let g = d_alpha.iter().zip(&mixed).map(|(d, m)| d - m).collect();
        Ok((l_val_value, g))
    }
}

impl SearchStrategy for IDarts {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        Ok(super::bilevel_softmax_weights(
            arch,
            self.params.temperature,
            phase,
        ))
    }

    /// The loop asks before the weight step of `iteration`, so iteration `kT` comes after
    /// `kT` weight steps: `T` since the previous alpha step.
    fn wants_arch_step(&self, iteration: u64) -> bool {
        iteration > 0 && iteration.is_multiple_of(self.params.inner_steps)
    }

    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let (loss, g) = self.hypergradient(arch, objective)?;
        self.adam.step_with(&g)?;
        Ok(ArchStepStats {
            loss,
            grad_norm: perturb::norm(&g),
        })
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    /// The search (outer) loss at this strategy's temperature.
    fn health_relaxation(
        &self,
        arch: &ArchParams,
    ) -> Result<super::health::HealthRelaxation, SearchError> {
        Ok(super::health::HealthRelaxation::softmax(
            arch,
            self.params.temperature,
            super::health::HealthLoss::Search,
        ))
    }

    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut s = vec![("arch_lr", self.adam.lr())];
        s.push(("arch_steps", self.adam.steps_taken() as f64));
        for (k, v) in [
            ("neumann_residual", self.state.residual_norm),
            ("hessian_eigenvalue", self.state.eigenvalue),
            ("neumann_gamma", self.state.gamma_used),
        ] {
            if let Some(v) = v {
                s.push((k, v));
            }
        }
        s
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_strategy(dir, Some(&self.adam), STATE_FILE, &self.state)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        self.state = load_strategy(dir, Some(&mut self.adam), STATE_FILE)?;
        Ok(())
    }

    /// `grad L_val`, every Hessian-vector product of the Neumann series and of the power
    /// iteration, and the mixed term are averaged where they are computed; the series then
    /// runs on the whole batch's products.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}
