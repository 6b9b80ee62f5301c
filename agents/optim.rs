//! The optimisers' shared plumbing, one of each: Adam (Kingma & Ba 2015) with the update of
//! `torch.optim.Adam`, and the global gradient-norm clip of `torch.nn.utils.clip_grad_norm_`.
//!
//! Adam is written over tensors we own so that its moments can be checkpointed: tch's
//! `nn::Optimizer` keeps them inside the C++ optimizer and exports nothing, so a resumed run
//! would restart Adam from zero. PPO trains the policy with it (PyTorch's defaults, no weight
//! decay); the architecture search trains the alphas with it (DARTS's `Adam(lr=3e-4,
//! betas=(0.5, 0.999), weight_decay=1e-3)`, configured in `search`), stepping them with
//! gradients it assembles itself ([`Adam::step_with`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::AgentError;

/// Errors of the optimisers: their checkpoints, libtorch, and gradients that do not fit.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// Gradients handed to [`Adam::step_with`] that do not match its parameters.
    #[error("{0}")]
    Gradients(String),
}

/// The agent layer reports an optimiser's checkpoint and tensor errors as its own, so that a
/// PPO checkpoint's messages and variants stay one family.
impl From<OptimError> for AgentError {
    fn from(e: OptimError) -> Self {
        match e {
            OptimError::Checkpoint { path, reason } => AgentError::Checkpoint { path, reason },
            OptimError::Tch(e) => AgentError::Tch(e),
            OptimError::Gradients(m) => AgentError::Optimizer(m),
        }
    }
}

/// `torch.optim.Adam` hyper-parameters (PyTorch names and defaults), with PyTorch's L2
/// `weight_decay` (added to the gradient, not decoupled as in AdamW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0 (PyTorch's default) skips the term.
    #[serde(default)]
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// What an [`Adam`] trains, in its fixed order (the order of [`Adam::parameters`] and of
/// [`Adam::step_with`]'s gradients); only tensors with `requires_grad` are kept.
pub trait AdamParams {
    fn into_named(self) -> Vec<(String, Tensor)>;
}

/// Every trainable variable of the store, in name order (PPO's weights).
impl AdamParams for &nn::VarStore {
    fn into_named(self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }
}

/// The given named tensors, in the given order (the search's alphas in creation order).
impl AdamParams for Vec<(String, Tensor)> {
    fn into_named(self) -> Vec<(String, Tensor)> {
        self.into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }
}

/// One trainable tensor and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam over a fixed, named set of variables (taken when it is built: variables added to the
/// store later are not trained by it, unlike `nn::Optimizer`, which adopts them silently).
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot>,
    /// Number of steps taken (PyTorch's `state['step']`, shared by all parameters here).
    step: i64,
}

impl Adam {
    /// Over `params` ([`AdamParams`]: a VarStore's trainable variables in name order, or a
    /// named list in its own order).
    pub fn new(params: impl AdamParams, config: impl Into<AdamConfig>) -> Self {
        let slots = params
            .into_named()
            .into_iter()
            .map(|(name, param)| {
                let exp_avg = param.zeros_like();
                let exp_avg_sq = param.zeros_like();
                Slot {
                    name,
                    param,
                    exp_avg,
                    exp_avg_sq,
                }
            })
            .collect();
        Self {
            config: config.into(),
            slots,
            step: 0,
        }
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The current step size.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// The parameters this optimizer updates (shallow clones: same storage), in its order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// The first and second moments (`exp_avg`, `exp_avg_sq`) of each parameter, shallow
    /// clones in [`Adam::parameters`] order (PyTorch's `optimizer.state`).
    pub fn moments(&self) -> Vec<(Tensor, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.exp_avg.shallow_clone(), s.exp_avg_sq.shallow_clone()))
            .collect()
    }

    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// One Adam step on the current gradients; parameters without a gradient are skipped (their
    /// moments stay as they are, as in PyTorch).
    pub fn step(&mut self) {
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.param.grad()).collect();
        self.update(&grads);
    }

    /// One step with explicitly given gradients, in [`Adam::parameters`] order (a
    /// hypergradient that was assembled rather than backpropagated); undefined ones are skipped.
    /// A gradient whose shape differs from its parameter's (a caller listing its gradients in
    /// another order than the optimizer's parameters) is an error, found before any update.
    pub fn step_with(&mut self, grads: &[Tensor]) -> Result<(), OptimError> {
        if grads.len() != self.slots.len() {
            return Err(OptimError::Gradients(format!(
                "alpha optimizer: {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        for (i, (slot, g)) in self.slots.iter().zip(grads).enumerate() {
            if g.defined() && g.size() != slot.param.size() {
                return Err(OptimError::Gradients(format!(
                    "alpha optimizer: gradient {i} is {:?} but parameter `{}` is {:?} (gradients \
                     must follow the optimizer's parameter order)",
                    g.size(),
                    slot.name,
                    slot.param.size()
                )));
            }
        }
        self.update(grads);
        Ok(())
    }

    /// The update of `torch.optim.Adam` (`amsgrad = False`, `maximize = False`) with `grads`
    /// in slot order.
    fn update(&mut self, grads: &[Tensor]) {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        self.step += 1;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        tch::no_grad(|| {
            for (slot, grad) in self.slots.iter_mut().zip(grads) {
                if !grad.defined() {
                    continue;
                }
                // L2 weight decay enters the gradient (PyTorch's `grad.add(param, alpha=wd)`).
                let grad = if weight_decay != 0.0 {
                    grad + &slot.param * weight_decay
                } else {
                    grad.shallow_clone()
                };
                // m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
                let _ = slot
                    .exp_avg
                    .g_mul_scalar_(beta1)
                    .g_add_(&(&grad * (1.0 - beta1)));
                let _ = slot
                    .exp_avg_sq
                    .g_mul_scalar_(beta2)
                    .g_add_(&(&grad * &grad * (1.0 - beta2)));
                // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), torch.optim.Adam's order.
                let denom = slot.exp_avg_sq.sqrt() / bias_correction2_sqrt + eps;
                let _ = slot
                    .param
                    .g_sub_(&(&slot.exp_avg / denom * (lr / bias_correction1)));
            }
        });
    }

    /// Writes the moments and the step count (safetensors; names `exp_avg.<var>`,
    /// `exp_avg_sq.<var>`, `step`).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.slots.len() + 1);
        for slot in &self.slots {
            named.push((
                format!("exp_avg.{}", slot.name),
                slot.exp_avg.shallow_clone(),
            ));
            named.push((
                format!("exp_avg_sq.{}", slot.name),
                slot.exp_avg_sq.shallow_clone(),
            ));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        Tensor::write_safetensors(&named, path).map_err(|e| OptimError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Restores what [`Adam::save`] wrote, for the same set of variables; nothing changes when
    /// the file does not fit.
    pub fn load(&mut self, path: &Path) -> Result<(), OptimError> {
        let bad = |reason: String| OptimError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        if saved.len() != 2 * self.slots.len() + 1 {
            return Err(bad(format!(
                "holds {} tensors, this optimizer has {} variables (expected {})",
                saved.len(),
                self.slots.len(),
                2 * self.slots.len() + 1
            )));
        }
        let step = saved
            .remove("step")
            .ok_or_else(|| bad("no `step` entry".into()))?;
        let step = step
            .f_int64_value(&[0])
            .map_err(|e| bad(format!("bad `step`: {e}")))?;
        // Every entry is checked before any moment is overwritten.
        let mut restored = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            for (prefix, dst) in [("exp_avg", &slot.exp_avg), ("exp_avg_sq", &slot.exp_avg_sq)] {
                let key = format!("{prefix}.{}", slot.name);
                let src = saved
                    .remove(&key)
                    .ok_or_else(|| bad(format!("missing `{key}`")))?;
                if src.size() != dst.size() {
                    return Err(bad(format!(
                        "`{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        dst.size()
                    )));
                }
                restored.push(src);
            }
        }
        let mut restored = restored.into_iter();
        for slot in &mut self.slots {
            for dst in [&mut slot.exp_avg, &mut slot.exp_avg_sq] {
                let src = restored.next().expect("two moments per slot were checked");
                tch::no_grad(|| dst.f_copy_(&src.to_kind(dst.kind())))?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// How [`clip_grad_norm`] computes the global norm. The two differ in the last bits, and each
/// caller keeps the one its results were produced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormArithmetic {
    /// `torch.nn.utils.clip_grad_norm_` exactly: each gradient's norm in its own kind, the norm
    /// of those norms, `coef = min(1, max_norm / (norm + 1e-6))` and every gradient scaled by
    /// it, all on the device with no host sync (PPO; the official DARTS code calls the same).
    Device,
    /// The sum of squares accumulated in f64 and read to the host, and gradients scaled by
    /// `max_norm / (norm + 1e-6)` only when that is below 1 (the vision search and
    /// retraining, which report the squared norm to the strategy).
    HostF64,
}

/// The global gradient norm before clipping, as [`clip_grad_norm`] computed it.
#[derive(Debug)]
pub enum GradNorm {
    /// [`NormArithmetic::Device`]: the norm, a `[]` tensor on the gradients' device.
    Device(Tensor),
    /// [`NormArithmetic::HostF64`]: the squared norm.
    HostSquared(f64),
}

impl GradNorm {
    /// The norm as a `[]` tensor (no host sync for [`GradNorm::Device`]).
    pub fn into_tensor(self) -> Tensor {
        match self {
            GradNorm::Device(norm) => norm,
            GradNorm::HostSquared(sq) => Tensor::from(sq.sqrt()),
        }
    }

    /// The squared norm on the host.
    pub fn squared(&self) -> f64 {
        match self {
            GradNorm::Device(norm) => norm.double_value(&[]).powi(2),
            GradNorm::HostSquared(sq) => *sq,
        }
    }
}

/// Scales the gradients of `params` in place so that their global L2 norm (all gradients
/// concatenated, as `torch.nn.utils.clip_grad_norm_`) is at most `max_norm`; returns the norm
/// before clipping, computed as `arithmetic` says. Parameters without a gradient are skipped.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64, arithmetic: NormArithmetic) -> GradNorm {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        match arithmetic {
            NormArithmetic::Device => {
                let Some(first) = grads.first() else {
                    return GradNorm::Device(Tensor::zeros([], (Kind::Float, Device::Cpu)));
                };
                let norms: Vec<Tensor> = grads
                    .iter()
                    .map(|g| g.norm().to_kind(first.kind()))
                    .collect();
                let total = Tensor::stack(&norms, 0).norm().to_device(first.device()); // []
                let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
                for g in &grads {
                    let mut g = g.shallow_clone();
                    let _ = g.g_mul_(&coef.to_kind(g.kind()));
                }
                GradNorm::Device(total)
            }
            NormArithmetic::HostF64 => {
                let sq: f64 = grads
                    .iter()
                    .map(|g| g.square().sum(Kind::Double).double_value(&[]))
                    .sum();
                let coef = max_norm / (sq.sqrt() + 1e-6);
                if coef < 1.0 {
                    for g in &grads {
                        let _ = g.shallow_clone().g_mul_scalar_(coef);
                    }
                }
                GradNorm::HostSquared(sq)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind};

    /// Deterministic values without libtorch's global generator (tests run in parallel
    /// threads that share it): `sin(3 i + seed)`.
    fn quadratic_store(seed: i64) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let values =
            |n: i64| (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 3.0 + seed as f64).sin();
        let _ = root.var_copy("a", &values(12).reshape([3, 4]));
        let _ = root.var_copy("b", &values(5));
        vs
    }

    fn loss(vs: &nn::VarStore) -> Tensor {
        let v = vs.variables();
        // A loss whose gradients differ in scale between coordinates.
        (&v["a"] * &v["a"] * 3.0).sum(Kind::Float)
            + (&v["b"] - 1.0).pow_tensor_scalar(4).sum(Kind::Float)
    }

    #[test]
    fn matches_libtorch_adam() {
        let cfg = AdamConfig {
            lr: 0.05,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-5,
            weight_decay: 0.0,
        };
        let vs_ours = quadratic_store(0);
        let vs_torch = quadratic_store(0);
        let mut ours = Adam::new(&vs_ours, cfg);
        let mut theirs = nn::Adam {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            wd: 0.0,
            eps: cfg.eps,
            amsgrad: false,
        }
        .build(&vs_torch, cfg.lr)
        .unwrap();
        for _ in 0..25 {
            ours.zero_grad();
            loss(&vs_ours).backward();
            ours.step();
            theirs.zero_grad();
            loss(&vs_torch).backward();
            theirs.step();
        }
        for (name, t) in vs_ours.variables() {
            let u = &vs_torch.variables()[&name];
            assert!(t.allclose(u, 1e-5, 1e-6, false), "{name}: {t} vs {u}");
        }
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        let vs = quadratic_store(1);
        let mut opt = Adam::new(&vs, cfg);
        for _ in 0..3 {
            opt.zero_grad();
            loss(&vs).backward();
            opt.step();
        }
        vs.save(dir.path().join("w.safetensors")).unwrap();
        opt.save(&dir.path().join("adam.safetensors")).unwrap();
        // Continue the original 2 more steps.
        for _ in 0..2 {
            opt.zero_grad();
            loss(&vs).backward();
            opt.step();
        }
        // Resume a fresh copy from the checkpoint and take the same 2 steps.
        let mut vs2 = quadratic_store(99);
        vs2.load(dir.path().join("w.safetensors")).unwrap();
        let mut opt2 = Adam::new(&vs2, cfg);
        opt2.load(&dir.path().join("adam.safetensors")).unwrap();
        assert_eq!(opt2.steps_taken(), 3);
        for _ in 0..2 {
            opt2.zero_grad();
            loss(&vs2).backward();
            opt2.step();
        }
        for (name, t) in vs.variables() {
            assert!(
                t.equal(&vs2.variables()[&name]),
                "{name} differs after resume"
            );
        }
    }

    #[test]
    fn load_rejects_a_different_model() {
        let dir = tempfile::tempdir().unwrap();
        let vs = quadratic_store(2);
        Adam::new(&vs, AdamConfig::default())
            .save(&dir.path().join("adam.safetensors"))
            .unwrap();
        let other = nn::VarStore::new(Device::Cpu);
        let _ = other.root().zeros("c", &[2]);
        let err =
            Adam::new(&other, AdamConfig::default()).load(&dir.path().join("adam.safetensors"));
        assert!(matches!(err, Err(OptimError::Checkpoint { .. })));
    }

    /// The vision loops' arithmetic: the squared norm is the f64 sum of squares, gradients
    /// over `max_norm` end at `max_norm` with their directions kept, and gradients under it
    /// are left exactly as they were (no multiply by 1). Its norm agrees with torch's
    /// arithmetic to f32 precision.
    #[test]
    fn host_f64_clip_reports_the_squared_norm_and_scales_only_above_the_limit() {
        let grads_of = |values: &[f32]| {
            let p = Tensor::from_slice(values).set_requires_grad(true);
            (&p * &p * 0.5).sum(Kind::Float).backward(); // grad = p
            p
        };
        let p = grads_of(&[3.0, 4.0]);
        let norm = clip_grad_norm(&[p.shallow_clone()], 1.0, NormArithmetic::HostF64);
        assert_eq!(norm.squared(), 25.0);
        let after = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert!(
            (after[0] - 0.6).abs() < 1e-6 && (after[1] - 0.8).abs() < 1e-6,
            "{after:?}"
        );

        let q = grads_of(&[0.1, 0.2]);
        let _ = clip_grad_norm(&[q.shallow_clone()], 10.0, NormArithmetic::HostF64);
        assert!(q.grad().equal(&Tensor::from_slice(&[0.1f32, 0.2])));

        let r = grads_of(&[3.0, 4.0]);
        let torch = clip_grad_norm(&[r.shallow_clone()], 1.0, NormArithmetic::Device);
        assert!(
            (torch.into_tensor().double_value(&[]) - norm.into_tensor().double_value(&[])).abs()
                < 1e-6
        );
    }
}
