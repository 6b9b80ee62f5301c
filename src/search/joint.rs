//! Joint (single-level) first-order DARTS, the default of RL-DARTS (Miao, Song et al. 2021;
//! ../shared/REFERENCE.md section 3): the alphas are trained by the *same* loss and the same
//! backward pass as the weights (the PPO loss there), each minibatch, with their own Adam.
//! DARTS (Liu et al. 2019, section 3.3 and its ablation "single-level optimisation") calls this
//! optimising alpha on the training data instead of a held-out split.
//!
//! Through the plugin API: `op_weights(Weights)` zeroes the alpha gradients and returns
//! `softmax(alpha / T)` *with* its graph, so the loop's one backward reaches the alphas;
//! `after_weight_step` steps the alphas' Adam on those gradients; `wants_arch_step` is always
//! false. The alphas live in the [`ArchParams`] store, so the weights' optimizer never sees them
//! and this Adam never sees a weight.
//!
//! Departure from the RL-DARTS text ("alphas are ordinary trainable variables of the PPO loss,
//! updated by the same Adam"): a second Adam instance with the same settings (lr 5e-4, eps 1e-5,
//! betas (0.9, 0.999), no weight decay) over the alphas only. Adam is per-parameter, so the
//! updates are the same, except that PPO's global gradient-norm clip covers the weights only
//! (clipping alphas and weights together would let the much larger weight gradient shrink the
//! alpha steps to nothing).
//!
//! How the alphas' gradient is clipped: it is not. [`SearchStrategy::after_weight_step`] hands
//! the gradient the loop's backward left in the alphas to Adam as it is (a non-finite gradient
//! norm is an error); Adam's per-parameter normalisation bounds each step by about `lr`
//! anyway. In the official code the alphas are variables of the one PPO optimizer, so whatever
//! clip that optimizer applies acts on weights and alphas together.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::{load_arch_adam, save_arch_adam};
use super::optim::ordered_variables;
use super::perturb::{grad, norm};
use super::{
    softmax_weights, Adam, ArchAdamConfig, ArchSample, ArchStepStats, Objective, Phase,
    ReportField, SearchError, SearchStrategy, WeightStepReport,
};
use crate::nas::{ArchParams, CellWeights, DeriveRule, Genotype};

/// `[search.strategy.params]` of `kind = "joint"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JointParams {
    /// Mixed-op weights are `softmax(alpha / temperature)`. RL-DARTS: 1.
    pub temperature: f64,
    /// How the genotype is read off `softmax(alpha)`. RL-DARTS: `rl_darts` (drop `zero`,
    /// argmax op per edge, top-2 predecessors per node).
    pub derive: DeriveRule,
    /// Adam over the alphas. RL-DARTS: the PPO settings, lr 5e-4, betas (0.9, 0.999), eps 1e-5,
    /// no weight decay.
    pub optimizer: ArchAdamConfig,
}

impl Default for JointParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            derive: DeriveRule::RlDarts,
            optimizer: ArchAdamConfig {
                lr: 5e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-5,
                weight_decay: 0.0,
            },
        }
    }
}

/// The joint first-order strategy.
#[derive(Debug)]
pub struct Joint {
    params: JointParams,
    adam: Adam,
    /// Whether `op_weights(Weights)` handed out a graph that the next `after_weight_step`
    /// may read gradients from.
    pending: bool,
}

impl Joint {
    pub fn new(arch: &ArchParams, params: JointParams) -> Result<Self, SearchError> {
        if !(params.temperature > 0.0 && params.optimizer.lr > 0.0) {
            return Err(SearchError::Invalid(format!(
                "joint: temperature and optimizer.lr must be positive, got {} and {}",
                params.temperature, params.optimizer.lr
            )));
        }
        let adam = Adam::new(ordered_variables(arch.var_store())?, params.optimizer);
        Ok(Self {
            params,
            adam,
            pending: false,
        })
    }

    pub fn params(&self) -> &JointParams {
        &self.params
    }

    /// The tensors this strategy's Adam updates (the alphas; for the two-store test).
    pub fn optimizer_parameters(&self) -> Vec<Tensor> {
        self.adam.parameters()
    }

    fn step(&mut self, g: &[Tensor], loss: f64) -> Result<ArchStepStats, SearchError> {
        let grad_norm = norm(g);
        if !grad_norm.is_finite() {
            return Err(SearchError::Invalid(format!(
                "joint: alpha gradient norm is {grad_norm}"
            )));
        }
        self.adam.step_with(g)?;
        Ok(ArchStepStats { loss, grad_norm })
    }
}

impl SearchStrategy for Joint {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// Weights and Arch: `softmax(alpha / T)` with its graph (Weights also zeroes the alpha
    /// gradients, so the next `after_weight_step` sees this forward's gradient only). Eval:
    /// the same, detached.
    fn op_weights(&mut self, arch: &ArchParams, phase: Phase) -> Result<CellWeights, SearchError> {
        let t = self.params.temperature;
        Ok(match phase {
            Phase::Weights => {
                for mut a in arch.parameters() {
                    a.zero_grad();
                }
                self.pending = true;
                softmax_weights(arch, t)
            }
            Phase::Arch => softmax_weights(arch, t),
            Phase::Eval => tch::no_grad(|| softmax_weights(arch, t)),
        })
    }

    /// Deterministic: `softmax(alpha / T)` of the current alphas, with its graph when learning
    /// (so the PPO loss's backward reaches the alphas, which step in `after_weight_step`).
    fn sampled_op_weights(
        &mut self,
        arch: &ArchParams,
        sample: &ArchSample,
        learn: bool,
    ) -> Result<CellWeights, SearchError> {
        if !matches!(sample, ArchSample::Deterministic) {
            return Err(SearchError::Invalid(format!(
                "joint draws no architecture; got {sample:?}"
            )));
        }
        let t = self.params.temperature;
        Ok(if learn {
            self.pending = true;
            softmax_weights(arch, t)
        } else {
            tch::no_grad(|| softmax_weights(arch, t))
        })
    }

    /// Never: the alphas step in `after_weight_step`.
    fn wants_arch_step(&self, _iteration: u64) -> bool {
        false
    }

    /// The same single-level update without a weight step, on the objective's *training* loss
    /// (for loops or tests that take alpha steps explicitly; loops never call it since
    /// `wants_arch_step` is false).
    fn arch_step(
        &mut self,
        arch: &ArchParams,
        objective: &mut dyn Objective,
    ) -> Result<ArchStepStats, SearchError> {
        let loss = objective.train_loss(&softmax_weights(arch, self.params.temperature))?;
        let value = loss.f_double_value(&[])?;
        let g = grad(&loss, &arch.parameters(), false)?;
        self.step(&g, value)
    }

    /// Adam on the gradient the loop's backward left in the alphas, then zeroes it.
    fn after_weight_step(
        &mut self,
        arch: &ArchParams,
        report: &WeightStepReport,
    ) -> Result<Option<ArchStepStats>, SearchError> {
        report.check_finite(Self::NAME, &[ReportField::Loss])?;
        if !std::mem::take(&mut self.pending) {
            return Err(SearchError::Invalid(
                "joint: after_weight_step without a preceding op_weights(Phase::Weights): the \
                 weight step's forward must use the strategy's op weights"
                    .into(),
            ));
        }
        let a = arch.parameters();
        let g: Vec<Tensor> = a
            .iter()
            .map(|t| {
                let g = t.grad();
                if g.defined() {
                    g.detach().copy()
                } else {
                    // The loss did not depend on this cell type (no such cells in the batch's
                    // forward): a zero gradient, as PyTorch would leave `None` and skip it.
                    t.zeros_like()
                }
            })
            .collect();
        let stats = self.step(&g, report.loss)?;
        for mut t in a {
            t.zero_grad();
        }
        Ok(Some(stats))
    }

    fn derive(&self, arch: &ArchParams) -> Result<Genotype, SearchError> {
        super::derive_from_softmax(arch, self.params.derive)
    }

    /// Single level: the training loss the alphas follow, at this strategy's temperature.
    fn health_relaxation(
        &self,
        arch: &ArchParams,
    ) -> Result<super::health::HealthRelaxation, SearchError> {
        Ok(super::health::HealthRelaxation::softmax(
            arch,
            self.params.temperature,
            super::health::HealthLoss::Train,
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
        self.pending = false;
        load_arch_adam(dir, &mut self.adam)
    }

    /// Single level: the alphas' gradient comes from the loop's weight-step backward, which
    /// the loop all-reduces with the weights' (the loss in the report is the reduced one).
    fn data_parallel_support(&self) -> Result<(), SearchError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{AlphaInit, CellSpace, OpSet};
    use tch::{Device, Kind};

    /// One backward through `op_weights(Weights)` then `after_weight_step` is exactly one Adam
    /// step of `torch.optim.Adam` on `d loss / d alpha`: the first step moves every alpha with
    /// a nonzero gradient by `lr` against the gradient's sign (m / sqrt(v) = sign(g) at step 1).
    #[test]
    fn weight_step_backward_trains_the_alphas_by_one_adam_step() {
        tch::manual_seed(0);
        let arch = ArchParams::new(
            Device::Cpu,
            CellSpace::rl_darts(OpSet::Mlp).with_nodes(2),
            false,
            AlphaInit::default(),
        )
        .unwrap();
        let mut s = Joint::new(&arch, JointParams::default()).unwrap();
        let before = arch.alpha_normal().copy();
        let w = s.op_weights(&arch, Phase::Weights).unwrap();
        // A loss that prefers op 0 on every edge.
        let target = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]);
        (w.normal.weights() - target)
            .square()
            .sum(Kind::Float)
            .backward();
        let g = arch.alpha_normal().grad().copy();
        let report = WeightStepReport {
            iteration: 0,
            loss: 1.0,
            grad_norm_sq: 0.0,
            lr: 5e-4,
        };
        s.after_weight_step(&arch, &report).unwrap().unwrap();
        let moved = arch.alpha_normal() - &before;
        let expected = -g.sign() * 5e-4;
        assert!(
            moved.allclose(&expected, 1e-6, 1e-7, false),
            "{moved} vs {expected}"
        );
        assert_eq!(
            arch.alpha_normal()
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        // A second report without a forward is a wiring error, not a silent no-op.
        assert!(s.after_weight_step(&arch, &report).is_err());
        assert!(!s.wants_arch_step(0));

        // A non-finite loss in the report is an error naming it, and no step is taken.
        let w = s.op_weights(&arch, Phase::Weights).unwrap();
        w.normal.weights().sum(Kind::Float).backward();
        let before = arch.alpha_normal().copy();
        let nan = WeightStepReport {
            iteration: 3,
            loss: f64::NAN,
            ..report
        };
        let err = s.after_weight_step(&arch, &nan).unwrap_err().to_string();
        assert!(
            err.contains("joint") && err.contains("loss = NaN") && err.contains("iteration 3"),
            "{err}"
        );
        assert!(arch.alpha_normal().equal(&before));
    }
}
