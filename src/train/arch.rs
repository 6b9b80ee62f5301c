//! RL-DARTS joint first-order search inside PPO (Miao, Song et al. 2021): the supernet's
//! alphas live in their own VarStore and follow the PPO loss through their own Adam, stepped
//! on the same backward pass as the weights (the trainer's joint-optimizer hook), so the
//! weights' Adam never sees an alpha and the alphas' Adam never sees a weight.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::TrainError;
use crate::agents::{Adam, AdamConfig, JointOptimizer};
use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, CellType, DeriveRule, Genotype, OpWeightsSlot, RlDartsConfig};

/// `[encoder] kind = "rl_darts"`: the searched encoder and how its alphas learn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlDartsSearchConfig {
    /// The supernet: layout, channels, nodes, op set (RL-DARTS: "standard", [16, 32, 32],
    /// 4 nodes, {conv_3x3, relu, tanh, skip, zero}).
    pub supernet: RlDartsConfig,
    /// Adam step size of the alphas. RL-DARTS trains them with the PPO loss and the same
    /// Adam settings as the weights: 5e-4.
    pub alpha_lr: f64,
    /// Adam epsilon of the alphas (as the weights': 1e-5).
    pub alpha_eps: f64,
    /// Mixed-op weights are softmax(alpha / temperature). RL-DARTS: 1.
    pub temperature: f64,
    /// Alphas start as std * N(0, 1) (DARTS: 1e-3).
    pub alpha_init_std: f64,
    /// Log alpha softmaxes, entropies and the derived genotype every this many iterations.
    pub log_every: u64,
}

impl Default for RlDartsSearchConfig {
    fn default() -> Self {
        Self {
            supernet: RlDartsConfig::default(),
            alpha_lr: 5e-4,
            alpha_eps: 1e-5,
            temperature: 1.0,
            alpha_init_std: 1e-3,
            log_every: 1,
        }
    }
}

/// An optimizer shared between the trainer (which steps it) and the loop (which saves it).
struct SharedAdam(Arc<Mutex<Adam>>);

impl JointOptimizer for SharedAdam {
    fn zero_grad(&mut self) {
        self.0.lock().expect("alpha optimizer lock").zero_grad();
    }
    fn step(&mut self) {
        self.0.lock().expect("alpha optimizer lock").step();
    }
}

const ALPHAS_FILE: &str = "alphas.safetensors";
const ALPHA_ADAM_FILE: &str = "alpha_adam.safetensors";

/// The architecture side of a joint search.
pub struct ArchSearch {
    pub config: RlDartsSearchConfig,
    pub arch: ArchParams,
    /// What the supernet reads its op weights from (softmax of the alphas).
    pub slot: OpWeightsSlot,
    adam: Arc<Mutex<Adam>>,
}

impl ArchSearch {
    pub fn new(config: &RlDartsSearchConfig, device: Device) -> Result<Self, TrainError> {
        if !(config.temperature > 0.0 && config.alpha_lr > 0.0) {
            return Err(TrainError::Invalid(format!(
                "encoder.params.temperature ({}) and alpha_lr ({}) must be positive",
                config.temperature, config.alpha_lr
            )));
        }
        let space = config.supernet.space();
        let arch = ArchParams::new(
            device,
            space,
            config.supernet.has_reduction_cells(),
            AlphaInit { mean: 0.0, std: config.alpha_init_std },
        )
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let slot = OpWeightsSlot::softmax(&arch, config.temperature);
        let adam = Adam::new(
            arch.var_store(),
            AdamConfig { lr: config.alpha_lr, eps: config.alpha_eps, ..AdamConfig::default() },
        );
        Ok(Self { config: config.clone(), arch, slot, adam: Arc::new(Mutex::new(adam)) })
    }

    /// The hook the PPO trainer steps on every minibatch.
    pub fn joint_optimizer(&self) -> Box<dyn JointOptimizer> {
        Box::new(SharedAdam(self.adam.clone()))
    }

    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.arch.save(dir.join(ALPHAS_FILE)).map_err(|e| TrainError::Checkpoint {
            path: dir.join(ALPHAS_FILE),
            reason: e.to_string(),
        })?;
        self.adam.lock().expect("alpha optimizer lock").save(&dir.join(ALPHA_ADAM_FILE))?;
        Ok(())
    }

    pub fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.load_alphas(dir)?;
        self.adam.lock().expect("alpha optimizer lock").load(&dir.join(ALPHA_ADAM_FILE))?;
        Ok(())
    }

    /// The alphas only (evaluation of a searched checkpoint).
    pub fn load_alphas(&mut self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(ALPHAS_FILE);
        self.arch.load(&path).map_err(|e| TrainError::Checkpoint { path, reason: e.to_string() })
    }

    /// RL-DARTS discretisation: drop `zero`, argmax op per edge, top-2 predecessors per node.
    pub fn genotype(&self) -> Result<Genotype, TrainError> {
        self.arch.derive_genotype(DeriveRule::RlDarts).map_err(|e| TrainError::Invalid(e.to_string()))
    }

    fn cell_types(&self) -> Vec<(CellType, &'static str, Tensor)> {
        let w = tch::no_grad(|| self.arch.softmax_weights(self.config.temperature));
        let mut out = vec![(CellType::Normal, "normal", w.normal.weights().to_device(Device::Cpu))];
        if let Some(r) = &w.reduce {
            out.push((CellType::Reduce, "reduce", r.weights().to_device(Device::Cpu)));
        }
        out
    }

    /// Alpha softmax per edge and op, the entropy of each cell type's mixture, a heatmap per
    /// cell type, and the currently derived genotype.
    pub fn log(&self, sink: &mut dyn MetricsSink, step: i64) {
        let ops = self.arch.space().op_set.ops();
        let edges = self.arch.space().edges();
        for (_, name, probs) in self.cell_types() {
            let rows: Vec<Vec<f32>> = (0..probs.size()[0])
                .map(|e| Vec::<f32>::try_from(probs.get(e)).unwrap_or_default())
                .collect();
            let mut entropy = 0.0;
            for (edge, row) in edges.iter().zip(&rows) {
                for (op, &p) in ops.iter().zip(row) {
                    let tag = format!("arch/{name}/edge{}_{}to{}/{}", edge.index, edge.from, edge.node, op.name());
                    sink.scalar(&tag, f64::from(p), step);
                    if p > 0.0 {
                        entropy -= f64::from(p) * f64::from(p).ln();
                    }
                }
            }
            sink.scalar(&format!("arch/{name}_entropy"), entropy / rows.len().max(1) as f64, step);
            let (rgb, h, w) = heatmap(&rows, 12);
            sink.image(&format!("arch/{name}_heatmap"), &rgb, h, w, step);
        }
        if let Ok(g) = self.genotype() {
            sink.text("arch/genotype", &format!("`{}`", g.to_darts_string()), step);
        }
    }

    /// Writes genotype.json, genotype.txt (DARTS text form) and, when graphviz is installed,
    /// one PNG diagram per cell type into `dir`.
    pub fn write_genotype(&self, dir: &Path) -> Result<Genotype, TrainError> {
        let g = self.genotype()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e: crate::nas::NasError| TrainError::Checkpoint { path, reason: e.to_string() }
        };
        g.save_json(dir.join("genotype.json")).map_err(io(&dir.join("genotype.json")))?;
        std::fs::write(dir.join("genotype.txt"), g.to_darts_string() + "\n")
            .map_err(|source| TrainError::Io { path: dir.join("genotype.txt"), source })?;
        for (cell, name, _) in self.cell_types() {
            let out = dir.join(format!("genotype_{name}.png"));
            if let Err(e) = crate::nas::genotype::render_dot(&g.to_dot(cell, 1), &out) {
                eprintln!("warning: no cell diagram ({e})");
            }
        }
        Ok(g)
    }
}

/// Rows of probabilities as a heatmap: `cell` pixels per entry, white (0) to dark blue (1).
fn heatmap(rows: &[Vec<f32>], cell: usize) -> (Vec<u8>, usize, usize) {
    let h = rows.len() * cell;
    let w = rows.first().map_or(0, Vec::len) * cell;
    let mut rgb = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let p = rows[y / cell][x / cell].clamp(0.0, 1.0);
            let i = (y * w + x) * 3;
            rgb[i] = (255.0 * (1.0 - p)) as u8;
            rgb[i + 1] = (255.0 * (1.0 - 0.8 * p)) as u8;
            rgb[i + 2] = 255 - (55.0 * p) as u8;
        }
    }
    (rgb, h, w)
}

/// Checks that the two optimizers' variable sets are disjoint (for tests and debugging).
pub fn stores_are_disjoint(weights: &tch::nn::VarStore, arch: &ArchParams) -> bool {
    let alphas: Vec<Tensor> = arch.var_store().trainable_variables();
    weights.trainable_variables().iter().all(|w| alphas.iter().all(|a| w.data_ptr() != a.data_ptr()))
}
