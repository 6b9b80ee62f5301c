//! DARTS (Liu et al., ICLR 2019): softmax relaxation, first-order and second-order
//! (unrolled) alpha gradients as in the official `architect.py`, with the Hessian-vector
//! product by central differences (the paper's eq. 8) or, as an option, exact by double
//! backward.

use crate::agents::compute;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_arch_adam, save_arch_adam};
use super::optim::ordered_variables;
use super::perturb::{exact_mixed_hvp, fd_mixed_hvp, grad, norm, WeightGuard};
use super::{
    softmax_weights, Adam, ArchAdamConfig, ArchStepStats, Objective, Phase, SearchError,
    SearchStrategy,
};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype};

/// First order: `grad_alpha L_val(w, alpha)`. Second order: through one virtual weight step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DartsOrder {
    First,
    Second,
}

/// How the second-order term `grad2_{alpha,w} L_train * v` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HessianMode {
    /// Central difference at `w +- eps v`, `eps = fd_radius / ||v||` (the paper, 2 extra
    /// forward/backward passes).
    FiniteDifference,
    /// Double backward (exact; more memory).
    Exact,
}

/// `[search.strategy.params]` of `kind = "darts"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DartsParams {
    /// `first` (DARTS 1st order, 1.5 GPU-days on CIFAR-10) or `second` (`--unrolled`).
    pub order: DartsOrder,
    /// `finite_difference` (the paper) or `exact`; second order only.
    pub hessian: HessianMode,
    /// Numerator of the finite-difference step, `eps = fd_radius / ||v||`. DARTS: 0.01.
    pub fd_radius: f64,
    /// Softmax temperature of the relaxation. DARTS: 1.
    pub temperature: f64,
    /// How the genotype is read off `softmax(alpha)`. DARTS: `darts` (top-2 edges per node,
    /// `none` excluded).
    pub derive: DeriveRule,
    /// Adam over the alphas. DARTS: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.
    pub optimizer: ArchAdamConfig,
}

impl Default for DartsParams {
    fn default() -> Self {
        Self {
            order: DartsOrder::First,
            hessian: HessianMode::FiniteDifference,
            fd_radius: 0.01,
            temperature: 1.0,
            derive: DeriveRule::Darts,
            optimizer: ArchAdamConfig::default(),
        }
    }
}

/// The DARTS strategy.
#[derive(Debug)]
pub struct Darts {
    params: DartsParams,
    adam: Adam,
}

impl Darts {
    pub fn new(arch: &ArchParams, params: DartsParams) -> Result<Self, SearchError> {
        if !(params.temperature > 0.0 && params.fd_radius > 0.0) {
            return Err(SearchError::Invalid(format!(
                "darts: temperature and fd_radius must be positive, got {} and {}",
                params.temperature, params.fd_radius
            )));
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        Ok(Self { params, adam })
    }

    pub fn params(&self) -> &DartsParams {
        &self.params
    }

    /// The second-order hypergradient (`architect.py` `_backward_step_unrolled`):
    /// `grad_alpha L_val(w', alpha) - xi * grad2_{alpha,w} L_train(w, alpha) * v`,
    /// `w' = w - xi (mu buf + grad_w L_train(w, alpha) + wd w)`, `v = grad_w' L_val(w', alpha)`.
    /// Returns `(L_val(w'), gradient per alpha)`; the weights and buffers are bit-identical
    /// afterwards.
    ///
    /// Runs in fp32 whatever the run's precision ([`compute::full_precision`]): the finite
    /// difference perturbs the weights by `fd_radius / ||v||`, far below what a bf16 operand
    /// resolves, and the exact product differentiates twice through every cast.
    pub fn unrolled_gradient(
        &self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        compute::full_precision(|| self.unrolled_gradient_fp32(arch, objective))
    }

    fn unrolled_gradient_fp32(
        &self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        let t = self.params.temperature;
        let a = arch.parameters();
        let w = objective.parameters();
        let vs = objective.virtual_step();
        if vs.momentum_buffers.len() != w.len() {
            return Err(SearchError::Invalid(format!(
                "objective gave {} momentum buffers for {} parameters",
                vs.momentum_buffers.len(),
                w.len()
            )));
        }
        let mut guarded: Vec<Tensor> = w.iter().map(Tensor::shallow_clone).collect();
        guarded.extend(objective.buffers());
        let mut guard = WeightGuard::snapshot(&guarded);

        // Virtual step. The op weights need no graph to alpha here: only grad_w is used.
        let detached = tch::no_grad(|| softmax_weights(arch, t));
        let l_train = objective.train_loss(&detached)?;
        let g_train = grad(&l_train, &w, false)?;
        objective.average_over_processes(&g_train)?;
        let xi = vs.lr;
        let w_prime: Vec<Tensor> = tch::no_grad(|| {
            w.iter()
                .zip(&g_train)
                .zip(&vs.momentum_buffers)
                .map(|((p, g), buf)| {
                    let mut d = g + p * vs.weight_decay;
                    if let Some(b) = buf {
                        d += b * vs.momentum;
                    }
                    p.detach() - d * xi
                })
                .collect()
        });
        guard.set(&w_prime)?;

        // grad_alpha and v = grad_w' of L_val at w', in one backward.
        let weights = softmax_weights(arch, t);
        let l_val = objective.search_loss(&weights)?;
        let l_val_value = objective.average_value_over_processes(l_val.f_double_value(&[])?)?;
        let mut inputs: Vec<Tensor> = w.iter().map(Tensor::shallow_clone).collect();
        inputs.extend(a.iter().map(Tensor::shallow_clone));
        let mut grads = grad(&l_val, &inputs, false)?;
        objective.average_over_processes(&grads)?;
        let d_alpha = grads.split_off(w.len());
        let v = grads;
        guard.restore();

        let mixed = match self.params.hessian {
            HessianMode::FiniteDifference => {
                let v_norm = norm(&v);
                if v_norm == 0.0 {
                    a.iter().map(Tensor::zeros_like).collect()
                } else {
                    let eps = self.params.fd_radius / v_norm;
                    // Averaging each side averages their difference: the mixed term of the
                    // whole batch (v, and so eps, are already the whole batch's).
                    fd_mixed_hvp(&mut guard, &v, eps, || {
                        let weights = softmax_weights(arch, t);
                        let loss = objective.train_loss(&weights)?;
                        let g = grad(&loss, &a, false)?;
                        objective.average_over_processes(&g)?;
                        Ok(g)
                    })?
                }
            }
            HessianMode::Exact => {
                let weights = softmax_weights(arch, t);
                let loss = objective.train_loss(&weights)?;
                let m = exact_mixed_hvp(&loss, &w, &a, &v)?;
                objective.average_over_processes(&m)?;
                m
            }
        };
        drop(guard); // restores buffers the last forward touched
        let g = d_alpha
            .iter()
            .zip(&mixed)
            .map(|(d, m)| d - m * xi)
            .collect();
        Ok((l_val_value, g))
    }

    /// First-order gradient `grad_alpha L_val(w, alpha)`.
    pub fn first_order_gradient(
        &self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<(f64, Vec<Tensor>), SearchError> {
        let weights = softmax_weights(arch, self.params.temperature);
        let loss = objective.search_loss_for_alphas(&weights)?;
        let value = objective.average_value_over_processes(loss.f_double_value(&[])?)?;
        let g = grad(&loss, &arch.parameters(), false)?;
        objective.average_over_processes(&g)?;
        Ok((value, g))
    }
}

impl SearchStrategy for Darts {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// `softmax(alpha / T)`; detached outside the arch step, since bilevel DARTS never
    /// backpropagates the weight loss into alpha (the official code computes those gradients
    /// and throws them away with `zero_grad`).
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        Ok(super::bilevel_softmax_weights(
            arch,
            self.params.temperature,
            phase,
        ))
    }

    /// Every iteration, as in `train_search.py`.
    fn wants_arch_step(&self, _iteration: u64) -> bool {
        true
    }

    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let (loss, g) = match self.params.order {
            DartsOrder::First => self.first_order_gradient(arch, objective)?,
            DartsOrder::Second => self.unrolled_gradient(arch, objective)?,
        };
        self.adam.step_with(&g)?;
        Ok(ArchStepStats {
            loss,
            grad_norm: norm(&g),
        })
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    /// The search loss of the alpha step at this strategy's temperature (first order's gradient; second order differentiates it at the virtual weights).
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
        vec![
            ("temperature", self.params.temperature),
            ("arch_lr", self.adam.lr()),
            ("arch_steps", self.adam.steps_taken() as f64),
        ]
    }

    fn save(&self, dir: &Path) -> Result<(), SearchError> {
        save_arch_adam(dir, &self.adam)
    }

    fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        load_arch_adam(dir, &mut self.adam)
    }

    /// Every gradient either order computes is linear in the batch's mean loss (the virtual
    /// step's, the validation gradients at `w'`, each side of the finite difference or the
    /// double-backward mixed term), and each is averaged over the processes where it is
    /// computed, before anything nonlinear (the norm of `v`, the step) reads it.
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}
