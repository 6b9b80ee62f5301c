//! The two optimizers of a DARTS search (Liu et al., ICLR 2019, `train_search.py`), written
//! over tensors we own: SGD with momentum for the weights, whose momentum buffers the
//! second-order virtual step reads (`architect.py` reads `optimizer.state[v]['momentum_buffer']`,
//! which tch's `nn::Optimizer` does not expose), and Adam with L2 weight decay for the alphas
//! (the agents' [`Adam`], configured by [`ArchAdamConfig`]). Both checkpoint their state, so a
//! resumed search continues exactly.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub use crate::agents::optim::Adam;
use crate::agents::optim::AdamConfig;

use super::SearchError;

/// The trainable tensors of `named`, in name order (what [`Sgd`] uses; its own parameter list
/// is the order of its momentum buffers and of [`Sgd::parameters`], so any fixed order works).
fn named_params(named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = named
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// The trainable variables of `vs` with their names, in creation order (position, not name:
/// by name `input_10` would sort before `input_2`, while the strategies list their gradients
/// in the order they created the tensors).
///
/// tch keeps the creation order only in its unnamed trainable list and the names only in a
/// map; each trainable tensor is matched to its name by identity (`is_set_to`: same storage,
/// offset, sizes and strides).
pub fn ordered_variables(vs: &nn::VarStore) -> Result<Vec<(String, Tensor)>, SearchError> {
    let named = vs.variables();
    vs.trainable_variables()
        .into_iter()
        .map(|t| {
            let mut matches = named
                .iter()
                .filter(|(_, n)| n.numel() > 0 && t.is_set_to(n))
                .map(|(name, _)| name.clone());
            match (matches.next(), matches.next()) {
                (Some(name), None) => Ok((name, t)),
                _ => Err(SearchError::Invalid(format!(
                    "alpha optimizer: cannot name a trainable tensor of shape {:?} (empty, or \
                     sharing storage with another variable); give every architecture tensor \
                     its own non-empty variable",
                    t.size()
                ))),
            }
        })
        .collect()
}

/// `torch.optim.SGD` hyper-parameters (dampening 0, no Nesterov, as DARTS uses it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    /// L2 penalty added to the gradient (`grad + wd * w`), PyTorch's `weight_decay`.
    pub weight_decay: f64,
}

/// SGD with momentum: `buf = momentum * buf + (g + wd * w); w -= lr * buf` (PyTorch's update;
/// the first step initialises `buf = g + wd * w`).
#[derive(Debug)]
pub struct Sgd {
    pub config: SgdConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Undefined until the parameter's first step, as in PyTorch (the virtual step then uses 0).
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// Over the trainable tensors of `named` (e.g. `VarStore::variables()`), in name order.
    pub fn new(named: HashMap<String, Tensor>, config: SgdConfig) -> Self {
        let named = named_params(named.into_iter().collect());
        let buffers = (0..named.len()).map(|_| None).collect();
        let (names, params) = named.into_iter().unzip();
        Self {
            config,
            names,
            params,
            buffers,
        }
    }

    /// The parameters, shallow clones (same storage), in the optimizer's order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::shallow_clone).collect()
    }

    /// Momentum buffers in parameter order; `None` before the first step of a parameter.
    pub fn momentum_buffers(&self) -> Vec<Option<Tensor>> {
        self.buffers
            .iter()
            .map(|b| b.as_ref().map(Tensor::shallow_clone))
            .collect()
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One step on the current gradients; parameters without one are skipped.
    pub fn step(&mut self) {
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
        } = self.config;
        tch::no_grad(|| {
            for (p, buf) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let d_p = if weight_decay != 0.0 {
                    &grad + &*p * weight_decay
                } else {
                    grad.copy()
                };
                let d_p = if momentum != 0.0 {
                    match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(momentum).g_add_(&d_p);
                            b.shallow_clone()
                        }
                        None => {
                            let b = d_p.copy();
                            *buf = Some(b.shallow_clone());
                            b
                        }
                    }
                } else {
                    d_p
                };
                let _ = p.g_sub_(&(d_p * lr));
            }
        });
    }

    /// Writes the momentum buffers (safetensors, `momentum_buffer.<name>`).
    pub fn save(&self, path: &Path) -> Result<(), SearchError> {
        let named: Vec<(String, Tensor)> = self
            .names
            .iter()
            .zip(&self.buffers)
            .filter_map(|(n, b)| {
                b.as_ref()
                    .map(|b| (format!("momentum_buffer.{n}"), b.shallow_clone()))
            })
            .collect();
        // safetensors cannot hold zero tensors; a marker keeps the file valid before any step.
        let mut named = named;
        named.push(("lr".into(), Tensor::from_slice(&[self.config.lr])));
        Tensor::write_safetensors(&named, path)
            .map_err(|e| SearchError::checkpoint(path, e.to_string()))
    }

    /// Restores what [`Sgd::save`] wrote for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<(), SearchError> {
        let mut saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| SearchError::checkpoint(path, e.to_string()))?
            .into_iter()
            .collect();
        if let Some(lr) = saved.remove("lr") {
            self.config.lr = lr
                .f_double_value(&[0])
                .map_err(|e| SearchError::checkpoint(path, e.to_string()))?;
        }
        for (name, (p, buf)) in self
            .names
            .iter()
            .zip(self.params.iter().zip(self.buffers.iter_mut()))
        {
            *buf = match saved.remove(&format!("momentum_buffer.{name}")) {
                Some(t) if t.size() == p.size() => Some(t.to_kind(p.kind()).to_device(p.device())),
                Some(t) => {
                    return Err(SearchError::checkpoint(
                        path,
                        format!(
                            "momentum buffer of {name} is {:?}, the parameter is {:?}",
                            t.size(),
                            p.size()
                        ),
                    ))
                }
                None => None,
            };
        }
        if let Some(extra) = saved.keys().next() {
            return Err(SearchError::checkpoint(
                path,
                format!("unexpected tensor {extra} (a checkpoint of another network?)"),
            ));
        }
        Ok(())
    }
}

/// The alpha optimizer's settings as TOML holds them (`optimizer` in a strategy's params),
/// with DARTS's architecture optimizer as the defaults: `Adam(lr=3e-4, betas=(0.5, 0.999),
/// weight_decay=1e-3)`. The optimizer itself is the agents' [`Adam`] (PyTorch's update, L2
/// weight decay added to the gradient).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchAdamConfig {
    /// DARTS: 3e-4.
    pub lr: f64,
    /// DARTS: 0.5 (lower than the usual 0.9, so alpha follows the current gradient closely).
    pub beta1: f64,
    /// DARTS: 0.999.
    pub beta2: f64,
    pub eps: f64,
    /// DARTS: 1e-3.
    pub weight_decay: f64,
}

impl Default for ArchAdamConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-3,
        }
    }
}

impl From<ArchAdamConfig> for AdamConfig {
    fn from(c: ArchAdamConfig) -> Self {
        AdamConfig {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn param(values: &[f64]) -> HashMap<String, Tensor> {
        let t = Tensor::from_slice(values).set_requires_grad(true);
        HashMap::from([("w".to_string(), t)])
    }

    /// Two steps of PyTorch's SGD on f(w) = 0.5 * w^2 (grad = w), worked by hand:
    /// w0 = 1, lr 0.1, momentum 0.9, wd 0.1: d = 1.1, buf = 1.1, w1 = 0.89;
    /// d = 0.979, buf = 0.99 + 0.979 = 1.969, w2 = 0.89 - 0.1969 = 0.6931.
    #[test]
    fn sgd_matches_the_pytorch_update() {
        let named = param(&[1.0]);
        let w = named["w"].shallow_clone();
        let mut sgd = Sgd::new(
            named,
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.1,
            },
        );
        for _ in 0..2 {
            sgd.zero_grad();
            (&w * &w * 0.5).sum(Kind::Double).backward();
            sgd.step();
        }
        // By hand: g=1.1, buf=1.1, w=0.89; g=0.979, buf=0.9*1.1+0.979=1.969, w=0.89-0.1969.
        // (That it is close to ln 2 is a coincidence, hence the allow.)
        #[allow(clippy::approx_constant)]
        let expected = 0.6931;
        assert!((w.double_value(&[0]) - expected).abs() < 1e-12);
    }

    /// Adam's first step moves every parameter by lr * sign(g) (bias-corrected m / sqrt(v)).
    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let named = param(&[1.0, -2.0]);
        let w = named["w"].shallow_clone();
        let mut adam = Adam::new(
            named.into_iter().collect::<Vec<_>>(),
            ArchAdamConfig {
                weight_decay: 0.0,
                ..ArchAdamConfig::default()
            },
        );
        (&w * &w).sum(Kind::Double).backward();
        adam.step();
        let got = Vec::<f64>::try_from(&w).unwrap();
        assert!(
            (got[0] - (1.0 - 3e-4)).abs() < 1e-9 && (got[1] - (-2.0 + 3e-4)).abs() < 1e-9,
            "{got:?}"
        );
    }

    /// Twelve tensors named `input_0` .. `input_11` with distinct shapes: the optimizer lists
    /// them in creation order (by name, `input_10` would come before `input_2`), a gradient
    /// list in creation order steps every tensor, and one in another order is an error, not a
    /// libtorch panic.
    #[test]
    fn the_alpha_optimizer_orders_tensors_by_creation_not_by_name() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let tensors: Vec<Tensor> = (0..12)
            .map(|i| root.zeros(&format!("input_{i}"), &[2, i + 1]))
            .collect();
        let named = ordered_variables(&vs).unwrap();
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<String> = (0..12).map(|i| format!("input_{i}")).collect();
        assert_eq!(names, expected);
        let mut adam = Adam::new(named, ArchAdamConfig::default());
        let grads: Vec<Tensor> = tensors.iter().map(Tensor::ones_like).collect();
        adam.step_with(&grads).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            assert!(t.max().double_value(&[]) < 0.0, "input_{i} did not step");
        }
        let mut shuffled = grads;
        shuffled.swap(2, 10);
        let err = adam.step_with(&shuffled).unwrap_err().to_string();
        assert!(err.contains("input_2"), "{err}");
    }

    #[test]
    fn optimizer_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let named = param(&[1.0, 2.0]);
        let w = named["w"].shallow_clone();
        let again = || HashMap::from([("w".to_string(), w.shallow_clone())]);
        let mut sgd = Sgd::new(
            again(),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
            },
        );
        let mut adam = Adam::new(
            named.into_iter().collect::<Vec<_>>(),
            ArchAdamConfig::default(),
        );
        let sgd_path = dir.path().join("sgd.safetensors");
        sgd.save(&sgd_path).unwrap(); // before any step: no buffers
        (&w * &w).sum(Kind::Double).backward();
        sgd.step();
        adam.step();
        sgd.save(&sgd_path).unwrap();
        adam.save(&dir.path().join("adam.safetensors")).unwrap();
        let mut sgd2 = Sgd::new(
            again(),
            SgdConfig {
                lr: 1.0,
                momentum: 0.9,
                weight_decay: 0.0,
            },
        );
        sgd2.load(&sgd_path).unwrap();
        assert_eq!(sgd2.config.lr, 0.1);
        assert!(sgd2.momentum_buffers()[0]
            .as_ref()
            .unwrap()
            .equal(sgd.momentum_buffers()[0].as_ref().unwrap()));
        let mut adam2 = Adam::new(
            again().into_iter().collect::<Vec<_>>(),
            ArchAdamConfig::default(),
        );
        adam2.load(&dir.path().join("adam.safetensors")).unwrap();
        assert_eq!(adam2.steps_taken(), 1);
        assert!(adam2.moments()[0].0.equal(&adam.moments()[0].0));
    }
}
