//! UNAS's factorised cell (../shared/REFERENCE.md section 7): every intermediate node has two
//! input selectors and two op selectors, so it has exactly two incoming edges.
//!
//! Mapping onto the DARTS supernet: node `i` reads `num_inputs + i` candidate states (its
//! DARTS edges). Selector slot `s` (0, 1) of node `i` is a categorical over those states
//! (`input` logits `[2, num_inputs + i]`) and a categorical over the op set without `none`
//! (`op` logits `[num_nodes, 2, K]`). A sample `(in_s, op_s)` is the DARTS op-weight matrix
//! `W[edge(j -> i), o] = sum_s z_in_s[j] z_op_s[o]` (zero in the `none` column), so the
//! existing supernet forward computes it; the hard sample computes only the two chosen ops.
//! The two slots are independent: when they pick the same input the edge carries both ops
//! (weights add, weight 2 if they also pick the same op), which is what the fixed network
//! built from the genotype computes too (two genes on one input, summed). The relaxed sample
//! uses the same formula with the selectors' Gumbel-softmax samples, so the REBAR/relaxed
//! estimators of [`super::unas`] apply unchanged; `log p(z)` is the sum of the four selectors'
//! log-probabilities per node. Derivation: each selector's argmax, node `i` gets the genes
//! `(op_0, in_0), (op_1, in_1)`, a DARTS-format genotype.
//!
//! The logits live in their own VarStore (the strategy's Adam steps them; the supernet's
//! ArchParams alphas are left unused) and start at zero (uniform selectors).

use std::path::Path;

use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use super::unas_estimator::{estimate_gradient_from, sample_cell, UnasTerms};
use super::unas_params::UnasEstimator;
use super::SearchError;
use crate::nas::{CellSpace, CellWeights, Genotype, OpWeights};

/// One sample of one cell type of the factorised cell.
#[derive(Debug)]
pub struct FactorisedSample {
    /// Per node, per slot: (input state, op index in the space's op set).
    pub choice: Vec<[(usize, usize); 2]>,
    /// `log p(z)`, with graph to the logits.
    pub log_p: Tensor,
    /// The hard op weights (only the chosen ops active), no graph.
    pub hard: OpWeights,
    /// Relaxed op weights `[num_edges, num_ops]` with graph.
    pub relaxed: Tensor,
    /// REBAR's conditional relaxed op weights.
    pub conditional: Option<Tensor>,
    /// The duplicate-edge term (UNAS's `alpha_loss`) of each sample: per node, summed,
    /// `<z_in_0, z_in_1> <z_op_0, z_op_1>`, i.e. `sum_{j,o} w0[j,o] w1[j,o]` with
    /// `w_s = z_in_s z_op_s^T`. Hard: the number of nodes whose two slots pick the same
    /// (input, op) pair, no graph; relaxed and conditional: with graph to the logits.
    pub duplicate: [Option<Tensor>; 3],
}

/// UNAS's estimate for the factorised cell: `log p(z)` summed over the cell types' samples,
/// their hard, relaxed and conditional op weights, and `f` plus `duplicate_penalty` times the
/// duplicate-edge term of the matching sample (hard, then relaxed, then conditional: the
/// order in which [`estimate_gradient_from`] evaluates `f`). `params` are the selector logits.
pub fn estimate_factorised_gradient(
    params: &[Tensor],
    samples: Vec<FactorisedSample>,
    duplicate_penalty: f64,
    estimator: UnasEstimator,
    mut f: impl FnMut(Vec<OpWeights>) -> Result<Tensor, SearchError>,
) -> Result<(Vec<Tensor>, UnasTerms), SearchError> {
    let mut log_p_z = Tensor::zeros([], (Kind::Float, params[0].device()));
    let (mut hard, mut relaxed, mut conditional) = (Vec::new(), Vec::new(), Vec::new());
    // The duplicate-edge penalty of the hard, relaxed and conditional samples, summed over
    // cell types.
    let mut duplicate: [Option<Tensor>; 3] = [None, None, None];
    for s in samples {
        log_p_z += s.log_p;
        hard.push(s.hard);
        relaxed.push(s.relaxed);
        conditional.push(s.conditional);
        for (total, term) in duplicate.iter_mut().zip(s.duplicate) {
            *total = match (total.take(), term) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
    }
    let mut call = 0;
    let f = |cells: Vec<OpWeights>| -> Result<Tensor, SearchError> {
        let value = f(cells)?;
        let term = duplicate.get(call).and_then(Option::as_ref);
        call += 1;
        Ok(match term {
            Some(t) if duplicate_penalty > 0.0 => {
                let t = t.to_kind(value.kind()) * duplicate_penalty;
                value + t
            }
            _ => value,
        })
    };
    estimate_gradient_from(params, log_p_z, hard, relaxed, conditional, estimator, f)
}

/// `sum_i <inputs_i[0], inputs_i[1]> <ops[i, 0], ops[i, 1]>` for per-node input weights
/// `[2, n_in]` and op weights `[num_nodes, 2, K]` (scalar).
fn duplicate_term(inputs: &[Tensor], ops: &Tensor) -> Tensor {
    let mut total: Option<Tensor> = None;
    for (i, zin) in inputs.iter().enumerate() {
        let op = ops.get(i as i64); // [2, K]
        let same_input = (zin.get(0) * zin.get(1)).sum(zin.kind());
        let same_op = (op.get(0) * op.get(1)).sum(op.kind());
        let term = same_input * same_op;
        total = Some(match total {
            None => term,
            Some(t) => t + term,
        });
    }
    total.unwrap_or_else(|| Tensor::zeros([], (ops.kind(), ops.device())))
}

/// Rows and columns of the factorised cell's selector pictures: one row per (node, slot),
/// `node 0 / slot 0`, ...; the input selectors' columns are the cell's states named as the
/// edges are (`c_{k-2}`, `c_{k-1}`, `0`, ...: [`crate::nas::cell::state_label`]) and the op
/// selectors' columns the op set's ops without `none`.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorLayout {
    pub slot_rows: Vec<String>,
    pub input_cols: Vec<String>,
    pub op_cols: Vec<String>,
}

/// [`SelectorLayout`] of `space` with op-selector columns `ops` (indices into its op set).
pub fn selector_layout(space: &CellSpace, ops: &[usize]) -> SelectorLayout {
    let all = space.op_set.ops();
    SelectorLayout {
        slot_rows: (0..space.num_nodes)
            .flat_map(|i| (0..2).map(move |s| format!("node {i} / slot {s}")))
            .collect(),
        // A node reads the cell inputs and the nodes before it: the last node reads all but
        // itself.
        input_cols: (0..space.num_inputs + space.num_nodes - 1)
            .map(|s| crate::nas::cell::state_label(s, space.num_inputs))
            .collect(),
        op_cols: ops.iter().map(|&o| all[o].name().to_string()).collect(),
    }
}

/// One cell type's selector distributions, rows as in [`SelectorLayout::slot_rows`].
#[derive(Debug, Clone)]
pub struct SelectorTables {
    pub layout: SelectorLayout,
    /// `[2 * num_nodes][input_cols]`.
    pub inputs: Vec<Vec<f64>>,
    /// `[2 * num_nodes][op_cols]`.
    pub ops: Vec<Vec<f64>>,
}

/// The selectors' logits of the normal (and reduction) cell.
#[derive(Debug)]
pub struct FactorisedAlphas {
    vs: nn::VarStore,
    space: CellSpace,
    /// The space's op indices the op selectors choose from (all but `none`).
    ops: Vec<usize>,
    /// `[K, num_ops]` 0/1: op-selector column -> op-set column.
    embed: Tensor,
    /// Per cell type, per node: `[2, num_inputs + node]`.
    inputs: Vec<Vec<Tensor>>,
    /// Per cell type: `[num_nodes, 2, K]`.
    op_logits: Vec<Tensor>,
}

const FILE: &str = "unas_factorised.safetensors";

impl FactorisedAlphas {
    pub fn new(space: &CellSpace, reduce: bool, device: Device) -> Result<Self, SearchError> {
        let all = space.op_set.ops();
        let ops: Vec<usize> = (0..all.len())
            .filter(|&o| Some(o) != space.op_set.none_index())
            .collect();
        if ops.is_empty() {
            return Err(SearchError::Invalid(
                "unas: the factorised cell needs an op set with ops other than none".into(),
            ));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let k = ops.len() as i64;
        let cells = if reduce { 2 } else { 1 };
        let mut inputs = Vec::new();
        let mut op_logits = Vec::new();
        for c in 0..cells {
            let p = &root / if c == 0 { "normal" } else { "reduce" };
            inputs.push(
                (0..space.num_nodes)
                    .map(|i| p.zeros(&format!("input_{i}"), &[2, (space.num_inputs + i) as i64]))
                    .collect(),
            );
            op_logits.push(p.zeros("op", &[space.num_nodes as i64, 2, k]));
        }
        let mut embed = vec![0f32; ops.len() * all.len()];
        for (r, &o) in ops.iter().enumerate() {
            embed[r * all.len() + o] = 1.0;
        }
        let embed = Tensor::from_slice(&embed)
            .view([k, all.len() as i64])
            .to_device(device);
        Ok(Self {
            vs,
            space: *space,
            ops,
            embed,
            inputs,
            op_logits,
        })
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Every logit tensor of cell type `cell`, inputs (per node) then ops.
    fn cell_params(&self, cell: usize) -> Vec<Tensor> {
        let mut out: Vec<Tensor> = self.inputs[cell]
            .iter()
            .map(|t| t.shallow_clone())
            .collect();
        out.push(self.op_logits[cell].shallow_clone());
        out
    }

    /// Every logit tensor, normal cell first (the gradient order).
    pub fn params(&self) -> Vec<Tensor> {
        (0..self.inputs.len())
            .flat_map(|c| self.cell_params(c))
            .collect()
    }

    pub fn num_cells(&self) -> usize {
        self.inputs.len()
    }

    /// `[num_edges, num_ops]` from per-node input weights `[2, n_in]` and op weights
    /// `[num_nodes, 2, K]`: `sum_s z_in_s^T z_op_s` per node, mapped to the op-set columns.
    fn combine(&self, inputs: &[Tensor], ops: &Tensor) -> Tensor {
        let rows: Vec<Tensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, zin)| zin.transpose(0, 1).matmul(&ops.get(i as i64)))
            .collect();
        Tensor::cat(&rows, 0).matmul(&self.embed.to_kind(ops.kind()))
    }

    /// `E[W]` under the selectors' distributions (exact: the slots are independent and `W`
    /// is bilinear in each slot's input and op).
    pub fn expected_weights(&self) -> CellWeights {
        let one = |c: usize| {
            let ins: Vec<Tensor> = self.inputs[c]
                .iter()
                .map(|t| t.softmax(-1, t.kind()))
                .collect();
            OpWeights::dense(self.combine(&ins, &self.op_logits[c].softmax(-1, Kind::Float)))
        };
        CellWeights {
            normal: one(0),
            reduce: (self.inputs.len() > 1).then(|| one(1)),
        }
    }

    /// [`FactorisedAlphas::expected_weights`] as f64 rows per cell type (normal first),
    /// `[num_edges][num_ops]`, for logging.
    pub fn expected_weight_rows(&self) -> Result<Vec<Vec<Vec<f64>>>, SearchError> {
        let w = tch::no_grad(|| self.expected_weights());
        let rows = |w: &OpWeights| -> Result<Vec<Vec<f64>>, SearchError> {
            Ok(Vec::<Vec<f64>>::try_from(
                &w.weights().to_kind(Kind::Double).to_device(Device::Cpu),
            )?)
        };
        let mut out = vec![rows(&w.normal)?];
        if let Some(reduce) = &w.reduce {
            out.push(rows(reduce)?);
        }
        Ok(out)
    }

    /// The selectors' distributions of every cell type (normal first) as labelled tables
    /// ([`selector_layout`]): the input selectors' `softmax` (NaN where a node cannot read a
    /// state) and the op selectors' `softmax`.
    pub fn selector_tables(&self) -> Result<Vec<SelectorTables>, SearchError> {
        let layout = selector_layout(&self.space, &self.ops);
        let n_states = layout.input_cols.len();
        (0..self.inputs.len())
            .map(|c| {
                let mut inputs = Vec::new();
                for logits in &self.inputs[c] {
                    let p =
                        tch::no_grad(|| logits.softmax(-1, Kind::Double)).to_device(Device::Cpu);
                    for row in Vec::<Vec<f64>>::try_from(&p)? {
                        let mut padded = row;
                        padded.resize(n_states, f64::NAN);
                        inputs.push(padded);
                    }
                }
                let k = self.ops.len() as i64;
                let p = tch::no_grad(|| self.op_logits[c].view([-1, k]).softmax(-1, Kind::Double))
                    .to_device(Device::Cpu);
                Ok(SelectorTables {
                    layout: layout.clone(),
                    inputs,
                    ops: Vec::<Vec<f64>>::try_from(&p)?,
                })
            })
            .collect()
    }

    /// The sparse hard op weights of a choice, no graph.
    pub fn hard_weights(&self, choice: &[[(usize, usize); 2]]) -> Result<OpWeights, SearchError> {
        let (e, o) = (self.space.num_edges(), self.space.num_ops());
        let mut w = vec![0f32; e * o];
        let mut active = vec![Vec::new(); e];
        for (i, slots) in choice.iter().enumerate() {
            let base = self.space.node_edges(i).start;
            for &(from, op) in slots {
                let edge = base + from;
                w[edge * o + op] += 1.0;
                if !active[edge].contains(&op) {
                    active[edge].push(op);
                }
            }
        }
        let device = self.embed.device();
        let w = Tensor::from_slice(&w)
            .view([e as i64, o as i64])
            .to_device(device);
        Ok(OpWeights::sparse(w, active)?)
    }

    /// Draws `z`, `zeta` (and `zeta~` when `conditional`) for cell type `cell`, each selector
    /// with [`sample_cell`].
    pub fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        cell: usize,
        tau: f64,
        conditional: bool,
    ) -> Result<FactorisedSample, SearchError> {
        let n = self.space.num_nodes;
        let k = self.ops.len() as i64;
        let op_flat = self.op_logits[cell].view([n as i64 * 2, k]);
        let mut log_p = Tensor::zeros([], (Kind::Float, self.embed.device()));
        let mut in_samples = Vec::with_capacity(n);
        for logits in &self.inputs[cell] {
            let s = sample_cell(rng, logits, tau, conditional)?;
            log_p += (logits.log_softmax(-1, logits.kind()) * &s.hard).sum(logits.kind());
            in_samples.push(s);
        }
        let op_s = sample_cell(rng, &op_flat, tau, conditional)?;
        log_p += (op_flat.log_softmax(-1, op_flat.kind()) * &op_s.hard).sum(op_flat.kind());
        let choice: Vec<[(usize, usize); 2]> = (0..n)
            .map(|i| {
                let slot = |s: usize| (in_samples[i].index[s], self.ops[op_s.index[2 * i + s]]);
                [slot(0), slot(1)]
            })
            .collect();
        let shape = [n as i64, 2, k];
        let relaxed_in: Vec<Tensor> = in_samples
            .iter()
            .map(|s| s.relaxed.shallow_clone())
            .collect();
        let hard_in: Vec<Tensor> = in_samples.iter().map(|s| s.hard.shallow_clone()).collect();
        let duplicate_hard = duplicate_term(&hard_in, &op_s.hard.view(shape));
        let duplicate_relaxed = duplicate_term(&relaxed_in, &op_s.relaxed.view(shape));
        let relaxed = self.combine(&relaxed_in, &op_s.relaxed.view(shape));
        let mut duplicate_conditional = None;
        let conditional = match &op_s.conditional {
            Some(c) => {
                let ins = in_samples
                    .iter()
                    .map(|s| {
                        s.conditional
                            .as_ref()
                            .map(Tensor::shallow_clone)
                            .ok_or_else(|| {
                                SearchError::Invalid("unas: missing conditional sample".into())
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                duplicate_conditional = Some(duplicate_term(&ins, &c.view(shape)));
                Some(self.combine(&ins, &c.view(shape)))
            }
            None => None,
        };
        Ok(FactorisedSample {
            hard: self.hard_weights(&choice)?,
            choice,
            log_p,
            relaxed,
            conditional,
            duplicate: [
                Some(duplicate_hard.detach()),
                Some(duplicate_relaxed),
                duplicate_conditional,
            ],
        })
    }

    /// Each selector's argmax.
    pub fn argmax(&self, cell: usize) -> Result<Vec<[(usize, usize); 2]>, SearchError> {
        let ops = Vec::<Vec<i64>>::try_from(
            &self.op_logits[cell]
                .argmax(-1, false)
                .to_device(Device::Cpu),
        )?;
        self.inputs[cell]
            .iter()
            .zip(ops)
            .map(|(logits, op)| {
                let ins = Vec::<i64>::try_from(&logits.argmax(-1, false).to_device(Device::Cpu))?;
                Ok([
                    (ins[0] as usize, self.ops[op[0] as usize]),
                    (ins[1] as usize, self.ops[op[1] as usize]),
                ])
            })
            .collect()
    }

    /// The argmax architecture as a DARTS-format genotype: node `i` gets `(op_0, in_0),
    /// (op_1, in_1)`; every node is concatenated into the output.
    pub fn derive(&self) -> Result<Genotype, SearchError> {
        let kinds = self.space.op_set.ops();
        let genes = |c: usize| -> Result<_, SearchError> {
            Ok(self
                .argmax(c)?
                .into_iter()
                .map(|slots| slots.iter().map(|&(from, op)| (kinds[op], from)).collect())
                .collect::<Vec<Vec<_>>>())
        };
        let concat: Vec<usize> =
            (self.space.num_inputs..self.space.num_inputs + self.space.num_nodes).collect();
        let reduce = self.inputs.len() > 1;
        Ok(Genotype {
            normal: genes(0)?,
            normal_concat: concat.clone(),
            reduce: if reduce { genes(1)? } else { Vec::new() },
            reduce_concat: if reduce { concat } else { Vec::new() },
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), SearchError> {
        let path = dir.join(FILE);
        self.vs
            .save(&path)
            .map_err(|e| SearchError::checkpoint(&path, e.to_string()))
    }

    pub fn load(&mut self, dir: &Path) -> Result<(), SearchError> {
        let path = dir.join(FILE);
        self.vs
            .load(&path)
            .map_err(|e| SearchError::checkpoint(&path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selector pictures' rows are (node, slot) pairs, their input columns the states named
    /// as edges name them, their op columns the op set without `none`; each input row of node
    /// `i` has exactly `num_inputs + i` real entries summing to 1, the rest NaN.
    #[test]
    fn selector_layout_comes_from_the_cell_and_the_op_set() {
        let space = CellSpace::darts();
        let alphas = FactorisedAlphas::new(&space, true, Device::Cpu).unwrap();
        let layout = selector_layout(&space, &alphas.ops);
        assert_eq!(layout.slot_rows.len(), 2 * space.num_nodes);
        assert_eq!(layout.slot_rows[0], "node 0 / slot 0");
        assert_eq!(layout.slot_rows[7], "node 3 / slot 1");
        assert_eq!(layout.input_cols, ["c_{k-2}", "c_{k-1}", "0", "1", "2"]);
        let expected_ops: Vec<&str> = space
            .op_set
            .ops()
            .iter()
            .filter(|op| **op != crate::nas::OpKind::None)
            .map(|op| op.name())
            .collect();
        assert_eq!(layout.op_cols, expected_ops);

        let tables = alphas.selector_tables().unwrap();
        assert_eq!(tables.len(), 2);
        for (row, values) in tables[0].inputs.iter().enumerate() {
            let node = row / 2;
            let real: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
            assert_eq!(real.len(), space.num_inputs + node, "row {row}");
            assert!((real.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        assert_eq!(tables[0].ops.len(), 2 * space.num_nodes);
        assert!(tables[0].ops.iter().all(|r| r.len() == expected_ops.len()));
    }
}
