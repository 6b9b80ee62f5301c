//! UNAS as the official code (NVlabs/unas) behaves, on a tiny objective over the op weights:
//! the weight step trains on the relaxed sample by default; the factorised cell's objective
//! carries the duplicate-edge penalty (weight 0.2) and its gradient pulls the two slots of a
//! node apart; a factorised cell with more than 10 nodes trains (the alpha optimizer once
//! ordered its tensors by name, `input_10` before `input_2`, and panicked).

use rl_darts::nas::{AlphaInit, ArchParams, CellSpace, CellWeights, OpSet};
use rl_darts::search::{
    ArchAdamConfig, Objective, Phase, SearchError, SearchStrategy, Unas, UnasCell, UnasEstimator,
    UnasParams, UnasWeightsSample, VirtualStep,
};
use tch::{Device, Kind, Tensor};

fn space(num_nodes: usize) -> CellSpace {
    CellSpace {
        num_inputs: 2,
        num_nodes,
        op_set: OpSet::Darts,
    }
}

fn arch(space: CellSpace) -> ArchParams {
    tch::manual_seed(0);
    ArchParams::new(Device::Cpu, space, true, AlphaInit::default()).unwrap()
}

/// `L = scale * (<W_n, A> + <W_r, A>)^2` on both splits, no network weights.
struct Linear {
    a: Tensor,
    scale: f64,
}

impl Linear {
    fn new(space: &CellSpace, scale: f64) -> Self {
        let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
        let v: Vec<f32> = (0..e * o).map(|i| (0.37 * i as f32).sin()).collect();
        Self {
            a: Tensor::from_slice(&v).view([e, o]),
            scale,
        }
    }
    fn loss(&self, w: &CellWeights) -> Tensor {
        let mut inner = (w.normal.weights() * &self.a).sum(Kind::Float);
        if let Some(r) = &w.reduce {
            inner += (r.weights() * &self.a).sum(Kind::Float);
        }
        inner.square() * self.scale
    }
}

impl Objective for Linear {
    fn train_loss(&mut self, w: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(w))
    }
    fn search_loss(&mut self, w: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(w) * 1.1)
    }
    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn buffers(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn virtual_step(&self) -> VirtualStep {
        VirtualStep {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 0.0,
            momentum_buffers: Vec::new(),
        }
    }
}

/// Default: the weight step gets a relaxed sample (dense, rows summing to 1, strictly inside
/// (0, 1), no graph); `weights_sample = "hard"` gives one-hot rows with one active op. Catches
/// the default drifting back to hard samples, or a relaxed sample that keeps its graph.
#[test]
fn the_weight_step_trains_on_the_relaxed_sample_by_default() {
    assert_eq!(
        UnasParams::default().weights_sample,
        UnasWeightsSample::Relaxed
    );
    for cell in [UnasCell::Darts, UnasCell::Factorised] {
        let arch = arch(space(3));
        let mut s = Unas::new(
            &arch,
            UnasParams {
                cell,
                same_alpha_minibatch: cell == UnasCell::Factorised,
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let w = s.op_weights(&arch, Phase::Weights).unwrap();
        let t = w.normal.weights();
        assert!(
            !t.requires_grad(),
            "{cell:?}: the weight step's sample has a graph"
        );
        assert!(w.normal.active(0).is_none(), "{cell:?}: not dense");
        let inside = t.gt(1e-6).logical_and(&t.lt(1.0 - 1e-6));
        assert!(
            inside.any().int64_value(&[]) == 1,
            "{cell:?}: no relaxed entry in {t}"
        );
        if cell == UnasCell::Darts {
            let rows = t.sum_dim_intlist(-1, false, Kind::Double);
            assert!(rows.allclose(&rows.ones_like(), 1e-5, 1e-5, false));
        }

        let mut hard = Unas::new(
            &arch,
            UnasParams {
                cell,
                same_alpha_minibatch: cell == UnasCell::Factorised,
                weights_sample: UnasWeightsSample::Hard,
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let w = hard.op_weights(&arch, Phase::Weights).unwrap();
        assert!(
            w.normal.active(0).is_some(),
            "{cell:?}: hard sample not sparse"
        );
    }
}

/// With every selector logit pushing both slots of every node to the same input and the same
/// op, each hard sample has `num_nodes` duplicates per cell type, so `f(z)` rises by exactly
/// `0.2 * 2 * num_nodes` over the same search without the penalty (same seed, same samples).
/// Then, on an objective that is constant, the penalty alone drives the alpha steps: the
/// expected number of duplicates under the selectors falls. Catches a penalty that is missing,
/// mis-weighted, added to the wrong evaluation, or of the wrong sign.
#[test]
fn the_factorised_objective_carries_the_duplicate_edge_penalty() {
    let sp = space(3);
    let arch = arch(sp);
    let run = |penalty: f64| -> f64 {
        let mut s = Unas::new(
            &arch,
            UnasParams {
                cell: UnasCell::Factorised,
                same_alpha_minibatch: true,
                duplicate_penalty: penalty,
                estimator: UnasEstimator::Rebar,
                ..Default::default()
            },
            5,
        )
        .unwrap();
        // Inputs: state 0 strongly preferred by both slots; ops: the first selectable op.
        tch::no_grad(|| {
            for mut t in s.factorised().unwrap().params() {
                let v = t.zeros_like();
                let _ = v.select(-1, 0).fill_(30.0);
                t.copy_(&v);
            }
        });
        let mut obj = Linear::new(&sp, 1.0);
        s.arch_step(&arch, &mut obj).unwrap();
        let scalars = s.scalars();
        scalars.iter().find(|(k, _)| *k == "f_hard").unwrap().1
    };
    let (with, without) = (run(0.2), run(0.0));
    let expected = 0.2 * 2.0 * sp.num_nodes as f64;
    assert!(
        (with - without - expected).abs() < 1e-4,
        "f_hard {with} vs {without}: difference should be {expected}"
    );

    // The penalty alone (objective scale 0) moves the selectors apart.
    let mut s = Unas::new(
        &arch,
        UnasParams {
            cell: UnasCell::Factorised,
            same_alpha_minibatch: true,
            optimizer: ArchAdamConfig {
                lr: 0.1,
                ..UnasParams::default().optimizer
            },
            ..Default::default()
        },
        6,
    )
    .unwrap();
    let expected_duplicates = |s: &Unas| -> f64 {
        let f = s.factorised().unwrap();
        let params = f.params();
        let per_cell = sp.num_nodes + 1;
        let mut total = 0.0;
        for cell in params.chunks(per_cell) {
            let ops = cell[sp.num_nodes].softmax(-1, Kind::Double); // [nodes, 2, K]
            for (i, inputs) in cell[..sp.num_nodes].iter().enumerate() {
                let p = inputs.softmax(-1, Kind::Double); // [2, n_in]
                let same_in = (p.get(0) * p.get(1)).sum(Kind::Double).double_value(&[]);
                let o = ops.get(i as i64);
                let same_op = (o.get(0) * o.get(1)).sum(Kind::Double).double_value(&[]);
                total += same_in * same_op;
            }
        }
        total
    };
    // Away from the uniform selectors, where the expected duplicates have a zero gradient.
    tch::manual_seed(8);
    tch::no_grad(|| {
        for mut t in s.factorised().unwrap().params() {
            t.copy_(&(Tensor::rand_like(&t) * 2.0 - 1.0));
        }
    });
    let before = expected_duplicates(&s);
    let mut obj = Linear::new(&sp, 0.0);
    for _ in 0..150 {
        s.arch_step(&arch, &mut obj).unwrap();
    }
    let after = expected_duplicates(&s);
    println!("expected duplicates: {before:.4} -> {after:.4}");
    // Measured: 0.273 -> 0.162 over 150 steps; a flipped sign would raise it.
    assert!(after < 0.75 * before, "{before} -> {after}");
}

/// A factorised cell of 11 nodes (selector tensors `input_0` .. `input_10`): alpha steps run
/// and move every selector. Before the alpha optimizer ordered its tensors by creation, it
/// sorted them by name (`input_10` < `input_2`) and paired each gradient with the wrong
/// tensor: a shape mismatch inside libtorch, a panic.
#[test]
fn a_factorised_cell_with_eleven_nodes_trains() {
    let sp = space(11);
    let arch = arch(sp);
    let mut s = Unas::new(
        &arch,
        UnasParams {
            cell: UnasCell::Factorised,
            same_alpha_minibatch: true,
            ..Default::default()
        },
        2,
    )
    .unwrap();
    let before: Vec<Tensor> = s
        .factorised()
        .unwrap()
        .params()
        .iter()
        .map(Tensor::copy)
        .collect();
    let mut obj = Linear::new(&sp, 1.0);
    for _ in 0..2 {
        let stats = s.arch_step(&arch, &mut obj).unwrap();
        assert!(stats.grad_norm.is_finite() && stats.grad_norm > 0.0);
    }
    for (i, (a, b)) in s
        .factorised()
        .unwrap()
        .params()
        .iter()
        .zip(&before)
        .enumerate()
    {
        assert!(!a.equal(b), "selector tensor {i} did not move");
    }
    let g = s.derive(&arch).unwrap();
    assert_eq!(g.normal.len(), 11);
    g.validate(2, true).unwrap();
}
