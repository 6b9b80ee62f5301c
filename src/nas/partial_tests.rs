//! Tests of `nas::partial`: PC-DARTS's partial channels, channel shuffle and edge normalisation
//! against literal reference computations, in f64 where gradients are compared.
use super::*;
use crate::nas::{
    AlphaInit, ArchParams, CellInputs, CellOutput, DeriveRule, MixedOp, NodeNorm, OpSet, OpSpec,
    OpWeights, RlDartsConfig, RlDartsFixedEncoder, RlDartsSupernet, SearchCell, SearchCellConfig,
    Supernet,
};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind};

const CPU: Device = Device::Cpu;

/// Output channel `j` of a shuffle with `g` groups is input channel `(j % g) * (C / g) + j / g`
/// (the index form of the official view / transpose / view), in both layouts.
#[test]
fn channel_shuffle_moves_each_channel_where_the_official_view_transpose_does() {
    let (c, g) = (12, 4);
    let x = Tensor::arange(2 * c * 3 * 3, (Kind::Float, CPU)).reshape([2, c, 3, 3]);
    for input in [x.shallow_clone(), crate::nas::ops::to_channels_last(&x)] {
        let y = channel_shuffle(&input, g);
        for j in 0..c {
            let source = (j % g) * (c / g) + j / g;
            assert!(y.select(1, j).equal(&x.select(1, source)), "channel {j}");
        }
    }
    let x_nhwc = crate::nas::ops::to_channels_last(&x);
    assert!(crate::nas::ops::is_channels_last(&channel_shuffle(
        &x_nhwc, g
    )));
}

fn mixed(vs: &nn::VarStore, c: i64, stride: i64) -> MixedOp {
    let spec = OpSpec::darts_search(c, stride);
    MixedOp::new(vs.root() / "edge0", OpSet::Darts, spec).unwrap()
}

/// K = 1 is the plain mixed op: split / combine around the same op weights give the same
/// output and the same gradients (to the input, the op weights and every parameter), exactly.
#[test]
fn k_equal_one_is_the_plain_mixed_op_exactly() {
    tch::manual_seed(0);
    for stride in [1, 2] {
        let mut vs = nn::VarStore::new(CPU);
        let m = mixed(&vs, 4, stride);
        vs.double();
        let x = Tensor::randn([2, 4, 6, 6], (Kind::Double, CPU)).set_requires_grad(true);
        let w = Tensor::randn([8], (Kind::Double, CPU))
            .softmax(0, Kind::Double)
            .set_requires_grad(true);
        let k1 = PartialChannels(1);
        let run = |partial: bool| {
            let y = if partial {
                let (through, bypass) = k1.split(&x);
                k1.combine(&m.forward_t(&through, &w, true), &bypass, false)
            } else {
                m.forward_t(&x, &w, true)
            };
            let mut inputs = vec![x.shallow_clone(), w.shallow_clone()];
            inputs.extend(vs.trainable_variables());
            let g = Tensor::run_backward(&[(&y * &y).sum(Kind::Double)], &inputs, false, true);
            (y, g)
        };
        let (y_plain, g_plain) = run(false);
        let (y_k1, g_k1) = run(true);
        assert!(y_plain.equal(&y_k1), "stride {stride}: outputs differ");
        for (i, (a, b)) in g_plain.iter().zip(&g_k1).enumerate() {
            assert!(a.equal(b), "stride {stride}: gradient {i} differs");
        }
    }
}

/// The official `MixedOp.forward`, literally: the first `C // k` channels through
/// `sum(w * op(xtemp))`, `cat` with the rest (max-pooled 2x2 when the resolution changed),
/// then `channel_shuffle` as view / transpose / view.
fn official_pc_mixed(m: &MixedOp, x: &Tensor, w: &Tensor, k: i64) -> Tensor {
    let c = x.size()[1];
    let xtemp = x.narrow(1, 0, c / k);
    let xtemp2 = x.narrow(1, c / k, c - c / k);
    let mut temp1 = m.ops()[0].forward_t(&xtemp, false) * w.get(0);
    for (o, op) in m.ops().iter().enumerate().skip(1) {
        temp1 += op.forward_t(&xtemp, false) * w.get(o as i64);
    }
    let ans = if temp1.size()[2] == x.size()[2] {
        Tensor::cat(&[&temp1, &xtemp2], 1)
    } else {
        Tensor::cat(
            &[
                &temp1,
                &xtemp2.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            ],
            1,
        )
    };
    let s = ans.size();
    ans.view([s[0], k, s[1] / k, s[2], s[3]])
        .transpose(1, 2)
        .contiguous()
        .view([s[0], s[1], s[2], s[3]])
}

/// A one-edge, one-node DARTS-op cell at K = 4 equals the official computation on the same op
/// weights, for stride 1 and 2 (eval mode, f64), with the edge scale multiplied in.
#[test]
fn partial_cell_edge_equals_the_official_pc_mixed_op() {
    tch::manual_seed(1);
    for reduction in [false, true] {
        let mut vs = nn::VarStore::new(CPU);
        let space = CellSpace {
            num_inputs: 1,
            num_nodes: 1,
            op_set: OpSet::Darts,
        };
        let cfg = SearchCellConfig {
            space,
            c: 8,
            reduction,
            inputs: CellInputs::One { c_prev: 8 },
            output: CellOutput::LastNode,
            node_norm: NodeNorm::None,
            affine: false,
            pool_bn: true,
            partial: PartialChannels(4),
        };
        let cell = SearchCell::new(vs.root() / "cell", cfg).unwrap();
        vs.double();
        let x = Tensor::randn([2, 8, 6, 6], (Kind::Double, CPU));
        let w = Tensor::randn([1, 8], (Kind::Double, CPU)).softmax(-1, Kind::Double);
        let y = cell.forward_t(&[&x], &OpWeights::dense(w.shallow_clone()), false);
        let expected = official_pc_mixed(&cell.edges()[0], &x, &w.get(0), 4);
        assert_eq!(y.size(), expected.size());
        assert!(
            y.allclose(&expected, 1e-12, 1e-12, false),
            "reduction {reduction}"
        );
        // Edge normalisation multiplies the whole edge output, bypass included.
        let scale = Tensor::from_slice(&[0.3f64]);
        let scaled = cell.forward_t(
            &[&x],
            &OpWeights::dense(w.shallow_clone()).with_edge_scale(scale),
            false,
        );
        assert!(scaled.allclose(&(expected * 0.3), 1e-12, 1e-12, false));
    }
}

/// A tiny PC-DARTS search cell (two inputs, two nodes, DARTS ops, K = 2) in f64, eval mode.
fn tiny_pc_cell(vs: &nn::VarStore, reduction: bool) -> SearchCell {
    let cfg = SearchCellConfig {
        space: CellSpace::darts().with_nodes(2),
        c: 4,
        reduction,
        inputs: CellInputs::Two {
            c_prev_prev: 4,
            c_prev: 4,
            reduction_prev: false,
        },
        output: CellOutput::Concat,
        node_norm: NodeNorm::None,
        affine: false,
        pool_bn: true,
        partial: PartialChannels(2),
    };
    SearchCell::new(vs.root() / "cell", cfg).unwrap()
}

/// d loss / d beta through the per-node softmax and the edge outputs equals central finite
/// differences (f64, eps 1e-6), for a normal and a reduction cell.
#[test]
fn edge_normalisation_gradient_matches_finite_differences() {
    tch::manual_seed(2);
    for reduction in [false, true] {
        let mut vs = nn::VarStore::new(CPU);
        let cell = tiny_pc_cell(&vs, reduction);
        vs.double();
        let space = cell.config().space;
        let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
        let s0 = Tensor::randn([2, 4, 6, 6], (Kind::Double, CPU));
        let s1 = Tensor::randn([2, 4, 6, 6], (Kind::Double, CPU));
        let w = Tensor::randn([e, o], (Kind::Double, CPU)).softmax(-1, Kind::Double);
        let probe = tch::no_grad(|| {
            cell.forward_t(&[&s0, &s1], &OpWeights::dense(w.shallow_clone()), false)
        })
        .randn_like();
        let loss = |beta: &Tensor| {
            let weights = OpWeights::dense(w.shallow_clone())
                .with_edge_scale(edge_normalisation_weights(&space, beta));
            (cell.forward_t(&[&s0, &s1], &weights, false) * &probe).sum(Kind::Double)
        };
        let beta = Tensor::randn([e], (Kind::Double, CPU)).set_requires_grad(true);
        let analytic = Tensor::run_backward(&[loss(&beta)], &[&beta], false, false)[0].copy();
        let eps = 1e-6;
        for i in 0..e {
            let shifted = |d: f64| {
                let b = beta.detach().copy();
                let _ = b.get(i).g_add_scalar_(d);
                f64::try_from(tch::no_grad(|| loss(&b))).unwrap()
            };
            let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            let a = f64::try_from(analytic.get(i)).unwrap();
            assert!(
                (a - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "reduction {reduction}, beta {i}: analytic {a}, finite difference {fd}"
            );
        }
    }
}

/// The betas are softmaxed per node: each node's incoming factors sum to 1.
#[test]
fn edge_normalisation_weights_sum_to_one_per_node() {
    let space = CellSpace::darts();
    let beta = Tensor::randn([14], (Kind::Double, CPU));
    let w = edge_normalisation_weights(&space, &beta);
    for node in 0..4 {
        let r = space.node_edges(node);
        let sum = f64::try_from(
            w.narrow(0, r.start as i64, r.len() as i64)
                .sum(Kind::Double),
        );
        assert!((sum.unwrap() - 1.0).abs() < 1e-12, "node {node}");
    }
}

/// A channel count that K does not divide is a clear error, not a panic.
#[test]
fn uneven_channels_are_rejected() {
    let vs = nn::VarStore::new(CPU);
    let cfg = RlDartsConfig {
        channels: vec![6, 8, 8],
        partial_channels: PartialChannels(4),
        ..Default::default()
    };
    let err = RlDartsSupernet::new(vs.root(), &cfg, &[3, 16, 16]).unwrap_err();
    assert!(err.to_string().contains("multiple"), "{err}");
    assert!(PartialChannels(0).validate().is_err());
}

/// The PC-DARTS RL supernet's betas get gradients through the forward, the genotype ranks
/// edges by alpha probability x beta weight (betas that favour one edge per node decide the
/// inputs kept), and the derived cell builds and trains a step.
#[test]
fn pc_supernet_betas_learn_and_its_genotype_builds_and_trains() {
    tch::manual_seed(3);
    let cfg = RlDartsConfig {
        channels: vec![4, 8, 8],
        normal_cells_per_stage: 1,
        embedding: 16,
        partial_channels: PartialChannels(4),
        ..Default::default()
    };
    let obs = [3i64, 16, 16];
    let vs = nn::VarStore::new(CPU);
    let mut net = RlDartsSupernet::new(vs.root() / "net", &cfg, &obs).unwrap();
    let arch = ArchParams::new(CPU, net.space(), true, AlphaInit::default())
        .unwrap()
        .with_edge_normalisation();
    net.set_edge_betas(arch.edge_betas().unwrap()).unwrap();
    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, CPU));
    let y = net.forward_with(&x, &arch.softmax_weights(1.0), true);
    assert_eq!(y.size(), [2, 16]);
    y.square().sum(Kind::Float).backward();
    let (beta_normal, beta_reduce) = arch.betas().unwrap();
    for beta in [beta_normal, beta_reduce.unwrap()] {
        let g = beta.grad();
        // Node 0 has one incoming edge, whose softmax is 1 whatever its beta: gradient 0.
        let g_rest = f64::try_from(g.narrow(0, 1, 9).abs().sum(Kind::Float)).unwrap();
        assert!(g_rest > 0.0, "no beta gradient");
    }

    // Betas favouring the edges from the two latest states of each node: the RL-DARTS rule
    // keeps top-2 inputs, so those must be the inputs kept.
    let space = net.space();
    tch::no_grad(|| {
        for beta in [beta_normal, beta_reduce.unwrap()] {
            let mut values = vec![0.0f32; space.num_edges()];
            for node in 0..space.num_nodes {
                let r = space.node_edges(node);
                let last = r.end - 1;
                values[last] = 20.0;
                if r.len() > 1 {
                    values[last - 1] = 10.0;
                }
            }
            beta.shallow_clone().copy_(&Tensor::from_slice(&values));
        }
    });
    let genotype = crate::search::derive_from_softmax(&arch, DeriveRule::RlDarts).unwrap();
    for (node, genes) in genotype.normal.iter().enumerate() {
        let mut inputs: Vec<usize> = genes.iter().map(|g| g.1).collect();
        inputs.sort_unstable();
        let expected: Vec<usize> = (node.saturating_sub(1)..=node).collect();
        assert_eq!(inputs, expected, "node {node}: {genes:?}");
    }

    let vs_fixed = nn::VarStore::new(CPU);
    let fixed = RlDartsFixedEncoder::new(vs_fixed.root() / "enc", &cfg, &genotype, &obs).unwrap();
    let mut opt = nn::Adam::default().build(&vs_fixed, 1e-2).unwrap();
    let before: Vec<Tensor> = vs_fixed
        .trainable_variables()
        .iter()
        .map(Tensor::copy)
        .collect();
    use crate::agents::Encoder;
    let loss = fixed.features(&x, &()).square().mean(Kind::Float);
    assert!(f64::try_from(&loss).unwrap().is_finite());
    opt.backward_step(&loss);
    let moved = vs_fixed
        .trainable_variables()
        .iter()
        .zip(&before)
        .any(|(a, b)| !a.equal(b));
    assert!(moved, "the derived cell did not train");
}

/// The strategies' optimizers step the betas with the alphas: one joint step (the PPO loop's
/// single backward, then `after_weight_step`) and one first-order DARTS arch step move both
/// betas; SNAS, whose gradient lists have no place for betas, refuses them.
#[test]
fn strategies_step_the_betas_and_those_without_a_gradient_for_them_refuse() {
    use crate::search::{Objective, Phase, StrategyConfig, VirtualStep, WeightStepReport};
    tch::manual_seed(4);
    let cfg = RlDartsConfig {
        channels: vec![4, 4, 4],
        normal_cells_per_stage: 1,
        embedding: 8,
        partial_channels: PartialChannels(2),
        ..Default::default()
    };
    let vs = nn::VarStore::new(CPU);
    let mut net = RlDartsSupernet::new(vs.root() / "net", &cfg, &[3, 8, 8]).unwrap();
    let arch = ArchParams::new(CPU, net.space(), true, AlphaInit::default())
        .unwrap()
        .with_edge_normalisation();
    net.set_edge_betas(arch.edge_betas().unwrap()).unwrap();
    let x = Tensor::rand([4, 3, 8, 8], (Kind::Float, CPU));
    let betas = || -> Vec<Tensor> {
        let (n, r) = arch.betas().unwrap();
        vec![n.copy(), r.unwrap().copy()]
    };
    let moved = |before: &[Tensor]| {
        let now = betas();
        now.iter().zip(before).all(|(a, b)| !a.equal(b))
    };

    let mut joint = StrategyConfig::from_name("joint")
        .unwrap()
        .build(&arch, 0)
        .unwrap();
    let before = betas();
    let w = joint.op_weights(&arch, Phase::Weights).unwrap();
    let loss = net.forward_with(&x, &w, true).square().mean(Kind::Float);
    loss.backward();
    let report = WeightStepReport {
        iteration: 0,
        loss: loss.double_value(&[]),
        grad_norm_sq: 1.0,
        lr: 1e-3,
    };
    joint.after_weight_step(&arch, &report).unwrap();
    assert!(moved(&before), "joint did not step the betas");

    struct Features<'a>(&'a RlDartsSupernet, &'a Tensor);
    impl Objective for Features<'_> {
        fn train_loss(
            &mut self,
            w: &crate::nas::CellWeights,
        ) -> Result<Tensor, crate::search::SearchError> {
            Ok(self
                .0
                .forward_with(self.1, w, true)
                .square()
                .mean(Kind::Float))
        }
        fn search_loss(
            &mut self,
            w: &crate::nas::CellWeights,
        ) -> Result<Tensor, crate::search::SearchError> {
            self.train_loss(w)
        }
        fn parameters(&self) -> Vec<Tensor> {
            Vec::new()
        }
        fn buffers(&self) -> Vec<Tensor> {
            Vec::new()
        }
        fn virtual_step(&self) -> VirtualStep {
            unreachable!("first order")
        }
    }
    let mut darts = StrategyConfig::from_name("darts")
        .unwrap()
        .build(&arch, 0)
        .unwrap();
    let before = betas();
    darts.arch_step(&arch, &mut Features(&net, &x)).unwrap();
    assert!(moved(&before), "darts did not step the betas");

    let err = StrategyConfig::from_name("snas")
        .unwrap()
        .build(&arch, 0)
        .unwrap_err();
    assert!(err.to_string().contains("edge normalisation"), "{err}");
}

/// `combine`'s one-copy interleaving is `channel_shuffle(cat(...))` exactly, in NCHW and in
/// channels-last (which it keeps), with and without the reduction's max-pool.
#[test]
fn combine_is_the_shuffle_of_the_concatenation_in_both_layouts() {
    use crate::nas::ops::{is_channels_last, to_channels_last};
    tch::manual_seed(5);
    let k = PartialChannels(4);
    for (h_out, h_in) in [(5, 5), (3, 6)] {
        let op_out = Tensor::randn([2, 2, h_out, h_out], (Kind::Float, CPU));
        let bypass = Tensor::randn([2, 6, h_in, h_in], (Kind::Float, CPU));
        let pooled = if h_out == h_in {
            bypass.shallow_clone()
        } else {
            bypass.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true)
        };
        let expected = channel_shuffle(&Tensor::cat(&[&op_out, &pooled], 1), 4);
        assert!(k.combine(&op_out, &bypass, false).equal(&expected));
        let nhwc = k.combine(&to_channels_last(&op_out), &to_channels_last(&bypass), true);
        assert!(is_channels_last(&nhwc));
        assert!(nhwc.equal(&expected));
    }
}

/// The official cell's node, literally: `sum_e s_e * MixedOp_e(state_from(e))` with each
/// `MixedOp_e` the official partial-channel op ([`official_pc_mixed`]); with `sampled`, GDAS's
/// hard forward inside it: `w_o * op_o(x)` for the sampled op, the bare weight `w_o` (a
/// broadcast scalar) for every other op.
fn official_pc_cell(
    cell: &SearchCell,
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    k: i64,
    sampled: Option<&[usize]>,
) -> Tensor {
    let space = cell.config().space;
    let mut states = vec![x.shallow_clone()];
    for node in 0..space.num_nodes {
        let mut sum: Option<Tensor> = None;
        for (from, e) in space.node_edges(node).enumerate() {
            let (m, state, w_e) = (&cell.edges()[e], &states[from], w.get(e as i64));
            let y = match sampled {
                None => official_pc_mixed(m, state, &w_e, k),
                Some(index) => {
                    let c = state.size()[1];
                    let through = state.narrow(1, 0, c / k);
                    let bypass = state.narrow(1, c / k, c - c / k);
                    let mut temp1 =
                        m.ops()[index[e]].forward_t(&through, false) * w_e.get(index[e] as i64);
                    for o in (0..m.num_ops()).filter(|&o| o != index[e]) {
                        temp1 += w_e.get(o as i64);
                    }
                    let bypass = if temp1.size()[2] == state.size()[2] {
                        bypass
                    } else {
                        bypass.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
                    };
                    channel_shuffle(&Tensor::cat(&[&temp1, &bypass], 1), k)
                }
            };
            let y = y * scale.get(e as i64);
            sum = Some(match sum {
                None => y,
                Some(acc) => acc + y,
            });
        }
        states.push(sum.expect("every node has an edge"));
    }
    Tensor::cat(&states[1..], 1)
}

/// A whole partial-channel cell whose nodes sum two and three edges (one input, three nodes,
/// DARTS and RL-DARTS ops, K = 2) equals the official per-edge computation: output and the gradients to the
/// input, the op weights, the edge-normalisation weights and every op parameter (f64, eval
/// mode), in a normal and a reduction cell, with dense op weights and with GDAS's one-hot
/// sample (where the cell adds the left-out ops' scalars once per node, and runs only the
/// sampled op). The cell builds each node from two running sums and one interleave
/// (`PartialNode`) instead of the per-edge concatenation, shuffle and scaling.
#[test]
fn every_node_of_a_pc_cell_equals_the_official_sum_of_edges() {
    tch::manual_seed(7);
    let k = 2;
    // RL-DARTS's ops too: their conv_3x3 op weight (times the edge scale) is folded into the
    // fused conv's kernel.
    for (op_set, reduction) in [
        (OpSet::Darts, false),
        (OpSet::Darts, true),
        (OpSet::RlDarts, false),
        (OpSet::RlDarts, true),
    ] {
        let mut vs = nn::VarStore::new(CPU);
        let cfg = SearchCellConfig {
            space: CellSpace {
                num_inputs: 1,
                num_nodes: 3,
                op_set,
            },
            c: 4,
            reduction,
            inputs: CellInputs::One { c_prev: 4 },
            output: CellOutput::Concat,
            node_norm: NodeNorm::None,
            affine: false,
            pool_bn: true,
            partial: PartialChannels(k),
        };
        let cell = SearchCell::new(vs.root() / "cell", cfg).unwrap();
        vs.double();
        let (e, o) = (cfg.space.num_edges(), cfg.space.num_ops() as i64);
        let x = Tensor::randn([2, 4, 6, 6], (Kind::Double, CPU)).set_requires_grad(true);
        let scale = Tensor::rand([e as i64], (Kind::Double, CPU)).set_requires_grad(true);
        let probe = Tensor::randn([2, 12, 6, 6], (Kind::Double, CPU));
        let index: Vec<usize> = (0..e).map(|i| (i * 3 + 1) % o as usize).collect();
        for sampled in [None, Some(index.as_slice())] {
            let w = match sampled {
                None => Tensor::randn([e as i64, o], (Kind::Double, CPU)).softmax(-1, Kind::Double),
                Some(index) => {
                    let hard = Tensor::zeros([e as i64, o], (Kind::Double, CPU));
                    for (edge, &op) in index.iter().enumerate() {
                        let _ = hard.get(edge as i64).get(op as i64).fill_(1.0);
                    }
                    hard
                }
            }
            .set_requires_grad(true);
            let weights = match sampled {
                None => OpWeights::dense(w.shallow_clone()),
                Some(index) => OpWeights::one_hot(w.shallow_clone(), index).unwrap(),
            }
            .with_edge_scale(scale.shallow_clone());
            let run = |y: Tensor| {
                let h = y.size()[2];
                let probe = probe.narrow(2, 0, h).narrow(3, 0, h);
                let mut inputs = vec![x.shallow_clone(), w.shallow_clone(), scale.shallow_clone()];
                inputs.extend(vs.trainable_variables());
                let g =
                    Tensor::run_backward(&[(&y * &probe).sum(Kind::Double)], &inputs, false, true);
                (y, g)
            };
            let (y, g) = run(cell.forward_t(&[&x], &weights, false));
            let (y_ref, g_ref) = run(official_pc_cell(&cell, &x, &w, &scale, k, sampled));
            let what = format!(
                "{op_set}, reduction {reduction}, sampled {}",
                sampled.is_some()
            );
            assert_eq!(y.size(), y_ref.size(), "{what}");
            assert!(y.allclose(&y_ref, 1e-12, 1e-12, false), "{what}: outputs");
            for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
                match (a.defined(), b.defined()) {
                    (true, true) => {
                        assert!(a.allclose(b, 1e-10, 1e-12, false), "{what}: gradient {i}")
                    }
                    // Parameters of ops the sample left out: no gradient in the cell, an
                    // undefined or zero one in the reference.
                    (false, true) => assert_eq!(
                        f64::try_from(b.abs().sum(Kind::Double)).unwrap(),
                        0.0,
                        "{what}: gradient {i}"
                    ),
                    (a, b) => assert_eq!(a, b, "{what}: gradient {i} defined"),
                }
            }
        }
    }
}
