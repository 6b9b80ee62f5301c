//! Architecture parameters: DARTS's `alphas_normal` and `alphas_reduce` (Liu et al., ICLR
//! 2019), `[num_edges, num_ops]` each, held in their own `VarStore`.
//!
//! A tch optimizer adopts every trainable variable of the store it is built from, so alphas in
//! the weight store would be stepped by the weight optimizer (PPO's Adam, the vision SGD)
//! silently. Keeping them here gives them their own optimizer, and the weight store none.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::error::NasError;
use super::genotype::{DeriveRule, Genotype};
use super::partial::{edge_normalisation_weights, scale_rows, EdgeBetas};
use super::space::CellSpace;
use super::weights::CellWeights;

/// Initial distribution of every alpha: `N(mean, std^2)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlphaInit {
    /// DARTS: 0.
    pub mean: f64,
    /// DARTS: 1e-3 (near-uniform softmax). SNAS initialises log-alpha with N(1, 0.01).
    pub std: f64,
}

impl Default for AlphaInit {
    fn default() -> Self {
        Self {
            mean: 0.0,
            std: 1e-3,
        }
    }
}

/// `alpha_normal` and, where the network has reduction cells, `alpha_reduce`, in a store of
/// their own (variable names `alpha_normal`, `alpha_reduce`).
#[derive(Debug)]
pub struct ArchParams {
    vs: nn::VarStore,
    space: CellSpace,
    normal: Tensor,
    reduce: Option<Tensor>,
    init: AlphaInit,
    /// PC-DARTS's edge-normalisation betas, `[num_edges]` per cell type
    /// ([`ArchParams::with_edge_normalisation`]); created after the alphas, so a store-order
    /// optimizer lists them after the alphas, as [`ArchParams::parameters`] does.
    betas: Option<(Tensor, Option<Tensor>)>,
}

impl ArchParams {
    /// Fresh alphas for `space`; `with_reduce` adds the reduction-cell matrix.
    pub fn new(
        device: Device,
        space: CellSpace,
        with_reduce: bool,
        init: AlphaInit,
    ) -> Result<Self, NasError> {
        space.validate()?;
        if !(init.std >= 0.0 && init.std.is_finite() && init.mean.is_finite()) {
            return Err(NasError::Config(format!(
                "alpha init needs a finite mean and std >= 0, got {init:?}"
            )));
        }
        let vs = nn::VarStore::new(device);
        let dims = [space.num_edges() as i64, space.num_ops() as i64];
        let randn = nn::Init::Randn {
            mean: init.mean,
            stdev: init.std,
        };
        let root = vs.root();
        let normal = root.var("alpha_normal", &dims, randn);
        let reduce = with_reduce.then(|| root.var("alpha_reduce", &dims, randn));
        Ok(Self {
            vs,
            space,
            normal,
            reduce,
            init,
            betas: None,
        })
    }

    /// Adds PC-DARTS's edge-normalisation betas (`beta_normal`, and `beta_reduce` where there
    /// is a reduce matrix), `[num_edges]` each, drawn from the alphas' init (the official code
    /// draws both from `1e-3 * randn`, our default). Call before building a strategy: its
    /// optimizer adopts the store's variables when it is built.
    pub fn with_edge_normalisation(mut self) -> Self {
        if self.betas.is_some() {
            return self;
        }
        let dims = [self.space.num_edges() as i64];
        let randn = nn::Init::Randn {
            mean: self.init.mean,
            stdev: self.init.std,
        };
        let root = self.vs.root();
        let normal = root.var("beta_normal", &dims, randn);
        let reduce = self
            .reduce
            .is_some()
            .then(|| root.var("beta_reduce", &dims, randn));
        self.betas = Some((normal, reduce));
        self
    }

    /// Handles on the betas for a supernet's forward, if edge normalisation is on.
    pub fn edge_betas(&self) -> Option<EdgeBetas> {
        self.betas.as_ref().map(|(normal, reduce)| EdgeBetas {
            space: self.space,
            normal: normal.shallow_clone(),
            reduce: reduce.as_ref().map(Tensor::shallow_clone),
        })
    }

    /// `[num_edges]` betas of the normal and (where present) reduction cells.
    pub fn betas(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        self.betas.as_ref().map(|(n, r)| (n, r.as_ref()))
    }

    /// Every architecture parameter, in the order a store-built optimizer lists them: the
    /// alphas (normal, reduce), then the betas (normal, reduce) when edge normalisation is on.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut out = vec![self.normal.shallow_clone()];
        out.extend(self.reduce.as_ref().map(Tensor::shallow_clone));
        if let Some((n, r)) = &self.betas {
            out.push(n.shallow_clone());
            out.extend(r.as_ref().map(Tensor::shallow_clone));
        }
        out
    }

    /// The op probabilities a genotype is read off: `softmax(alpha)` per edge, times PC-DARTS's
    /// per-node `softmax(beta)` of the edge when edge normalisation is on (the official
    /// `genotype()._parse` multiplies `W[j, :] * W2[j]`), without graph.
    pub fn derivation_weights(
        &self,
        relax: impl Fn(&Tensor) -> Tensor,
    ) -> (Tensor, Option<Tensor>) {
        tch::no_grad(|| {
            let scaled = |alpha: &Tensor, beta: Option<&Tensor>| match beta {
                Some(b) => scale_rows(&relax(alpha), &edge_normalisation_weights(&self.space, b)),
                None => relax(alpha),
            };
            let (bn, br) = match &self.betas {
                Some((n, r)) => (Some(n), r.as_ref()),
                None => (None, None),
            };
            (
                scaled(&self.normal, bn),
                self.reduce.as_ref().map(|r| scaled(r, br)),
            )
        })
    }

    pub fn space(&self) -> &CellSpace {
        &self.space
    }

    /// `[num_edges, num_ops]`, a trainable variable of [`ArchParams::var_store`].
    pub fn alpha_normal(&self) -> &Tensor {
        &self.normal
    }

    /// `[num_edges, num_ops]`, when the network has reduction cells.
    pub fn alpha_reduce(&self) -> Option<&Tensor> {
        self.reduce.as_ref()
    }

    /// The store to build the architecture optimizer from.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// `softmax(alpha / temperature)` per edge, with the autograd graph to the alphas: the
    /// DARTS / RL-DARTS relaxation. Recompute it for every forward that will be backpropagated.
    pub fn softmax_weights(&self, temperature: f64) -> CellWeights {
        CellWeights::dense(
            (&self.normal / temperature).softmax(-1, Kind::Float),
            self.reduce
                .as_ref()
                .map(|r| (r / temperature).softmax(-1, Kind::Float)),
        )
    }

    /// Derives a genotype from `softmax(alpha)` (what the official DARTS `genotype()` ranks).
    pub fn derive_genotype(&self, rule: DeriveRule) -> Result<Genotype, NasError> {
        let (normal, reduce) = self.derivation_weights(|a| a.softmax(-1, Kind::Float));
        Genotype::derive(&self.space, &normal, reduce.as_ref(), rule)
    }

    /// Writes the alphas to a safetensors file (readable from Python with `safetensors.torch`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), NasError> {
        let mut named: Vec<(&str, &Tensor)> = vec![("alpha_normal", &self.normal)];
        if let Some(r) = &self.reduce {
            named.push(("alpha_reduce", r));
        }
        if let Some((n, r)) = &self.betas {
            named.push(("beta_normal", n));
            if let Some(r) = r {
                named.push(("beta_reduce", r));
            }
        }
        Tensor::write_safetensors(&named, path.as_ref()).map_err(|e| NasError::Checkpoint {
            path: path.as_ref().to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads alphas written by [`ArchParams::save`] into this space's variables, checking names
    /// and shapes (a file from another op set or cell size is an error, not a silent resize).
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), NasError> {
        let path = path.as_ref();
        let checkpoint_err = |message: String| NasError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let tensors = Tensor::read_safetensors(path).map_err(|e| checkpoint_err(e.to_string()))?;
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let mut targets: Vec<(&str, &mut Tensor)> = vec![("alpha_normal", &mut self.normal)];
        if let Some(r) = self.reduce.as_mut() {
            targets.push(("alpha_reduce", r));
        }
        if let Some((n, r)) = self.betas.as_mut() {
            targets.push(("beta_normal", n));
            if let Some(r) = r.as_mut() {
                targets.push(("beta_reduce", r));
            }
        }
        for (name, var) in targets {
            let src =
                find(name).ok_or_else(|| checkpoint_err(format!("no tensor named {name}")))?;
            if src.size() != var.size() {
                return Err(checkpoint_err(format!(
                    "{name} is {:?}, this {} space with {} nodes needs {:?}",
                    src.size(),
                    self.space.op_set,
                    self.space.num_nodes,
                    var.size()
                )));
            }
            tch::no_grad(|| var.f_copy_(src))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{DartsSearchConfig, DartsSearchNet, OpSet, Supernet};

    #[test]
    fn alphas_have_the_darts_shape_and_scale() {
        tch::manual_seed(0);
        let arch =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        assert_eq!(arch.alpha_normal().size(), [14, 8]);
        assert_eq!(arch.alpha_reduce().map(Tensor::size), Some(vec![14, 8]));
        let std = f64::try_from(arch.alpha_normal().std(true)).unwrap();
        assert!(std > 5e-4 && std < 2e-3, "std {std}");
        assert!(arch.alpha_normal().requires_grad());
        let names: Vec<String> = arch.var_store().variables().into_keys().collect();
        assert_eq!(names.len(), 2);
    }

    /// Alphas live only in the arch store, network weights only in theirs.
    #[test]
    fn alphas_and_weights_live_in_separate_stores() {
        tch::manual_seed(1);
        let arch =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DartsSearchConfig {
            c: 4,
            layers: 3,
            ..Default::default()
        };
        let net = DartsSearchNet::new(vs.root() / "net", &cfg).unwrap();
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let loss = net
            .forward_with(&x, &arch.softmax_weights(1.0), true)
            .square()
            .mean(Kind::Float);
        loss.backward();

        let weight_names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            weight_names.iter().all(|n| !n.contains("alpha")),
            "{weight_names:?}"
        );
        let arch_names: Vec<String> = arch.var_store().variables().into_keys().collect();
        assert!(arch_names.iter().all(|n| n.starts_with("alpha_")));
        // No tensor is shared: the weight store's trainables are not the alphas.
        let alpha_ptrs = [
            arch.alpha_normal().data_ptr(),
            arch.alpha_reduce().unwrap().data_ptr(),
        ];
        assert!(vs
            .trainable_variables()
            .iter()
            .all(|t| !alpha_ptrs.contains(&t.data_ptr())));
        // And the loss reached the alphas through the op weights.
        assert!(arch.alpha_normal().grad().defined());
        assert!(arch.alpha_reduce().unwrap().grad().defined());
    }

    #[test]
    fn save_load_round_trip_and_shape_checks() {
        tch::manual_seed(2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alphas.safetensors");
        let arch =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        arch.save(&path).unwrap();
        let mut other =
            ArchParams::new(Device::Cpu, CellSpace::darts(), true, AlphaInit::default()).unwrap();
        assert!(!other.alpha_normal().equal(arch.alpha_normal()));
        other.load(&path).unwrap();
        assert!(other.alpha_normal().equal(arch.alpha_normal()));
        assert!(other
            .alpha_reduce()
            .unwrap()
            .equal(arch.alpha_reduce().unwrap()));

        let mut wrong = ArchParams::new(
            Device::Cpu,
            CellSpace::rl_darts(OpSet::RlDarts),
            true,
            AlphaInit::default(),
        )
        .unwrap();
        let err = wrong.load(&path).unwrap_err();
        assert!(matches!(err, NasError::Checkpoint { .. }), "{err}");
        assert!(err.to_string().contains("[10, 5]"), "{err}");
        assert!(matches!(
            other.load(dir.path().join("missing.safetensors")),
            Err(NasError::Checkpoint { .. })
        ));
    }
}
