//! Adam (Kingma & Ba 2015) with the update of `torch.optim.Adam`, written over tensors we own
//! so that its moments can be checkpointed: tch's `nn::Optimizer` keeps them inside the C++
//! optimizer and exports nothing, so a resumed run would restart Adam from zero.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::AgentError;

/// Adam hyper-parameters (PyTorch names and defaults, no weight decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
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
    /// All trainable variables of `vs` (those with `requires_grad`), in name order.
    pub fn new(vs: &nn::VarStore, config: AdamConfig) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
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
            config,
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

    /// The parameters this optimizer updates (shallow clones: same storage).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// One Adam step on the current gradients; parameters without a gradient are skipped (their
    /// moments stay as they are, as in PyTorch).
    pub fn step(&mut self) {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        self.step += 1;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
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
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
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
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// Restores what [`Adam::save`] wrote, for the same set of variables.
    pub fn load(&mut self, path: &Path) -> Result<(), AgentError> {
        let bad = |reason: String| AgentError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
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
        for slot in &mut self.slots {
            for (prefix, dst) in [
                ("exp_avg", &mut slot.exp_avg),
                ("exp_avg_sq", &mut slot.exp_avg_sq),
            ] {
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
                tch::no_grad(|| dst.f_copy_(&src.to_kind(dst.kind())))?;
            }
        }
        self.step = step;
        Ok(())
    }
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
        assert!(matches!(err, Err(AgentError::Checkpoint { .. })));
    }
}
