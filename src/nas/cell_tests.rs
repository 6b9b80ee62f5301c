//! Unit tests of `nas::cell` (kept apart so the module stays one concern).
use super::*;
use crate::nas::OpSet;
use tch::{Device, Kind};

fn config(
    space: CellSpace,
    inputs: CellInputs,
    reduction: bool,
    output: CellOutput,
) -> SearchCellConfig {
    SearchCellConfig {
        space,
        c: 8,
        reduction,
        inputs,
        output,
        node_norm: NodeNorm::None,
        affine: false,
        pool_bn: true,
        partial: PartialChannels::default(),
    }
}

#[test]
fn darts_cells_reduce_and_concatenate() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let space = CellSpace::darts();
    let weights = OpWeights::dense(Tensor::ones([14, 8], (Kind::Float, Device::Cpu)) / 8.0);
    // A reduction cell after a reduction: s0 at twice the resolution of s1.
    let inputs = CellInputs::Two {
        c_prev_prev: 12,
        c_prev: 16,
        reduction_prev: true,
    };
    let cell = SearchCell::new(
        vs.root() / "cell",
        config(space, inputs, true, CellOutput::Concat),
    )
    .unwrap();
    let s0 = Tensor::randn([2, 12, 16, 16], (Kind::Float, Device::Cpu));
    let s1 = Tensor::randn([2, 16, 8, 8], (Kind::Float, Device::Cpu));
    assert_eq!(
        cell.forward_t(&[&s0, &s1], &weights, true).size(),
        [2, 32, 4, 4]
    );
}

#[test]
fn every_output_mode_has_its_channel_count() {
    tch::manual_seed(1);
    let space = CellSpace::rl_darts(OpSet::RlDarts);
    let weights = OpWeights::dense(Tensor::ones([10, 5], (Kind::Float, Device::Cpu)) / 5.0);
    let x = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
    for output in [
        CellOutput::Concat,
        CellOutput::ConcatConv1x1,
        CellOutput::Sum,
        CellOutput::Mean,
        CellOutput::LastNode,
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SearchCellConfig {
            node_norm: NodeNorm::Batch,
            ..config(space, CellInputs::One { c_prev: 3 }, true, output)
        };
        let cell = SearchCell::new(vs.root() / "cell", cfg).unwrap();
        let y = cell.forward_t(&[&x], &weights, true);
        assert_eq!(y.size(), [2, cfg.out_channels(), 5, 5], "{output:?}");
    }
}

/// d loss / d weights of a tiny cell in f64: autograd against central differences,
/// `(L(w + eps e_k) - L(w - eps e_k)) / (2 eps)` for every entry `k` of the op weights.
#[test]
fn weight_gradients_match_central_differences() {
    tch::manual_seed(5);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let space = CellSpace {
        num_nodes: 2,
        ..CellSpace::rl_darts(OpSet::RlDarts)
    };
    let cfg = SearchCellConfig {
        node_norm: NodeNorm::Batch,
        ..config(
            space,
            CellInputs::One { c_prev: 2 },
            true,
            CellOutput::ConcatConv1x1,
        )
    };
    let cell = SearchCell::new(vs.root() / "cell", SearchCellConfig { c: 2, ..cfg }).unwrap();
    vs.double();
    let x = Tensor::randn([2, 2, 5, 5], (Kind::Double, Device::Cpu));
    let loss = |w: &Tensor| {
        // Node BatchNorm normalises with this batch's statistics and keeps no running state,
        // so L is a fixed function of w, and the check covers BN's backward too.
        let y = cell.forward_t(&[&x], &OpWeights::dense(w.shallow_clone()), false);
        y.square().sum(Kind::Double)
    };
    let w0 = Tensor::rand([3, 5], (Kind::Double, Device::Cpu));
    let w = w0.copy().set_requires_grad(true);
    loss(&w).backward();
    let analytic = Vec::<f64>::try_from(&w.grad().flatten(0, -1)).unwrap();
    let eps = 1e-6;
    for (k, &g) in analytic.iter().enumerate() {
        let bump = |delta: f64| {
            let wk = w0.copy();
            let _ = wk.flatten(0, -1).get(k as i64).g_add_scalar_(delta);
            f64::try_from(loss(&wk)).unwrap()
        };
        let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
        assert!(
            (numeric - g).abs() <= 1e-6 * (1.0 + g.abs()),
            "entry {k}: autograd {g}, finite difference {numeric}"
        );
    }
}

#[test]
fn a_mismatched_input_count_is_a_config_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = config(
        CellSpace::darts(),
        CellInputs::One { c_prev: 8 },
        false,
        CellOutput::Concat,
    );
    assert!(matches!(
        SearchCell::new(vs.root(), cfg),
        Err(NasError::Config(_))
    ));
}

/// The official RL-DARTS cell projects an input with other channels once (one 1x1 conv
/// with bias, shared by the edges), and feeds an input with the cell's channels as is.
#[test]
fn a_one_input_cell_projects_a_mismatched_input_once() {
    let space = CellSpace::rl_darts(OpSet::RlDarts);
    let count_inputs_of = |vs: &nn::VarStore, c_in: i64| {
        vs.variables()
            .iter()
            .filter(|(name, t)| name.contains("edge") && t.dim() == 4 && t.size()[1] == c_in)
            .count()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = SearchCellConfig {
        c: 8,
        ..config(
            space,
            CellInputs::One { c_prev: 3 },
            true,
            CellOutput::ConcatConv1x1,
        )
    };
    let cell = SearchCell::new(vs.root() / "cell", cfg).unwrap();
    let vars = vs.variables();
    assert_eq!(vars["cell.preprocess0.conv.weight"].size(), [8, 3, 1, 1]);
    assert_eq!(vars["cell.preprocess0.conv.bias"].size(), [8]);
    assert_eq!(
        count_inputs_of(&vs, 3),
        0,
        "an edge op sees the raw 3 channels"
    );
    assert_eq!(cell.edge_input_shapes(&[[3, 9, 9]])[0], [8, 9, 9]);

    let same = nn::VarStore::new(Device::Cpu);
    let cfg = SearchCellConfig {
        c: 8,
        ..config(
            space,
            CellInputs::One { c_prev: 8 },
            true,
            CellOutput::ConcatConv1x1,
        )
    };
    let _cell = SearchCell::new(same.root() / "cell", cfg).unwrap();
    assert!(same
        .variables()
        .keys()
        .all(|name| !name.contains("preprocess")));
}

/// An RL-DARTS cell (normal and reduction) equals its mixed ops written literally on every
/// edge, in value and in every gradient (input, op weights, op parameters), in f64: DARTS's
/// `sum_o w_o op_o(s)` with each op run on its own, for one architecture for the batch and for
/// one per example, and GDAS's `h_k op_k(s) + sum_{o != k} h_o` for a hard sample `k` per
/// edge. The cell shares the ops' parameter-free layers, fuses each state's convs into one and
/// folds the `conv_3x3` op weight into its kernel, none of which may change the result.
#[test]
fn a_cell_equals_its_mixed_ops_written_literally_on_every_edge() {
    tch::manual_seed(11);
    let space = CellSpace::rl_darts(OpSet::RlDarts);
    let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
    for reduction in [false, true] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let cfg = config(
            space,
            CellInputs::One { c_prev: 8 },
            reduction,
            CellOutput::Concat,
        );
        let cell = SearchCell::new(vs.root() / "cell", cfg).unwrap();
        vs.double();
        let n = 3;
        let x = Tensor::randn([n, 8, 6, 6], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        // GDAS's sample: every op, `none` included, on some edge (conv_3x3 is op 0).
        let sample: Vec<usize> = (0..e as usize).map(|i| (i * 3) % o as usize).collect();
        for (per_example, sampled) in [(false, false), (true, false), (false, true)] {
            let shape: Vec<i64> = match per_example {
                false => vec![e, o],
                true => vec![n, e, o],
            };
            let w = match sampled {
                false => Tensor::randn(shape.as_slice(), (Kind::Double, Device::Cpu))
                    .softmax(-1, Kind::Double),
                true => {
                    let hard = Tensor::zeros([e, o], (Kind::Double, Device::Cpu));
                    for (edge, &op) in sample.iter().enumerate() {
                        let _ = hard.get(edge as i64).get(op as i64).fill_(1.0);
                    }
                    hard
                }
            }
            .set_requires_grad(true);
            let weights = match (per_example, sampled) {
                (false, false) => OpWeights::dense(w.shallow_clone()),
                (true, _) => OpWeights::per_example(w.shallow_clone()).unwrap(),
                (false, true) => OpWeights::one_hot(w.shallow_clone(), &sample).unwrap(),
            };
            let literal = {
                let mut states = vec![x.shallow_clone()];
                for node in 0..space.num_nodes {
                    let mut terms = Vec::new();
                    for (from, edge) in space.node_edges(node).enumerate() {
                        for (op_index, op) in cell.edges()[edge].ops().iter().enumerate() {
                            let w_o = match per_example {
                                false => w.get(edge as i64).get(op_index as i64),
                                true => w
                                    .select(1, edge as i64)
                                    .select(1, op_index as i64)
                                    .reshape([-1, 1, 1, 1]),
                            };
                            terms.push(match sampled && op_index != sample[edge] {
                                // GDAS adds a left-out op's weight, exactly 0, as a scalar.
                                true => w_o,
                                false => op.forward_t(&states[from], false) * w_o,
                            });
                        }
                    }
                    let sum = terms.into_iter().reduce(|a, b| a + b);
                    states.push(sum.expect("every node has an edge"));
                }
                Tensor::cat(&states[1..], 1)
            };
            let fast = cell.forward_t(&[&x], &weights, false);
            let what =
                format!("reduction {reduction}, per example {per_example}, sampled {sampled}");
            assert_eq!(fast.size(), literal.size(), "{what}");
            assert!(
                fast.allclose(&literal, 1e-12, 1e-12, false),
                "{what}: outputs"
            );
            let probe = Tensor::randn_like(&fast);
            let mut inputs = vec![x.shallow_clone(), w.shallow_clone()];
            inputs.extend(vs.trainable_variables());
            let grads = |y: &Tensor| {
                Tensor::run_backward(&[(y * &probe).sum(Kind::Double)], &inputs, true, true)
            };
            for (i, (a, b)) in grads(&fast).iter().zip(grads(&literal)).enumerate() {
                assert_eq!(a.defined(), b.defined(), "{what}: gradient {i} defined");
                if a.defined() {
                    assert!(a.allclose(&b, 1e-10, 1e-12, false), "{what}: gradient {i}");
                }
            }
        }
    }
}
