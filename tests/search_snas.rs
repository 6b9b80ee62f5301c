//! SNAS against known answers: the categorical child of a Gumbel-softmax sample follows
//! softmax(alpha); samples are valid op weights; the temperature schedule; the score-function
//! estimate of the cost gradient against the exact gradient of the expected cost (by
//! enumeration of every child of a small edge set); and, end to end on a toy task, a large eta
//! moves the search to cheaper ops while the loop's single backward trains weights and alphas.
//!
//! Statistical bounds: a frequency (or a mean) of N independent draws is compared with its
//! expectation within 5 standard errors; under the normal approximation a correct
//! implementation fails one such comparison with probability < 6e-7, and all the comparisons
//! here together with probability < 1e-4. The draws are seeded, so a run is reproducible.

use rl_darts::nas::CellWeights;
use rl_darts::nas::{AlphaInit, ArchParams, DartsSearchConfig, DartsSearchNet, OpKind, Supernet};
use rl_darts::search::snas::{expected_cost, sampled_cost, score_function_cost_gradient};
use rl_darts::search::{
    alphas, ArchAdamConfig, ArchStepStats, Objective, Phase, SearchError, SearchStrategy, Sgd,
    SgdConfig, Snas, SnasParams, VirtualStep, WeightStepReport,
};
use rl_darts::train::supervised::cross_entropy;
use tch::{nn, Device, Kind, Tensor};

const SIGMAS: f64 = 5.0;

/// A two-node DARTS supernet on 8x8 grey images (cell 0 normal, cells 1 and 2 reduce) and
/// its alphas with the SNAS initialisation N(1, 0.01^2).
fn setup(num_classes: i64) -> (nn::VarStore, DartsSearchNet, ArchParams) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = DartsSearchNet::new(
        vs.root() / "net",
        &DartsSearchConfig {
            c: 4,
            layers: 3,
            num_nodes: 2,
            in_channels: 1,
            stem_multiplier: 2,
            num_classes,
            ..Default::default()
        },
    )
    .unwrap();
    let arch = ArchParams::new(
        Device::Cpu,
        net.space(),
        true,
        AlphaInit {
            mean: 1.0,
            std: 0.01,
        },
    )
    .unwrap();
    (vs, net, arch)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(&t.detach().to_kind(Kind::Double)).unwrap()
}

#[test]
fn argmax_frequencies_match_softmax_alpha_at_any_temperature() {
    let (_, _, arch) = setup(10);
    let mut snas = Snas::new(&arch, SnasParams::default(), 11).unwrap();
    // Three edges: near-uniform, skewed, one dominant op.
    let alpha = Tensor::from_slice(&[
        0.0f64, 0.1, -0.1, 0.05, //
        -1.0, 0.0, 1.0, 2.0, //
        3.0, 0.0, 0.0, -2.0,
    ])
    .view([3, 4]);
    let p = rows(&alpha.softmax(-1, Kind::Double));
    let n = 20_000;
    for (epoch, epochs) in [(0, 10), (9, 10)] {
        snas.begin_epoch(epoch, epochs);
        let mut counts = vec![vec![0usize; 4]; 3];
        for _ in 0..n {
            for (e, &o) in snas.sample(&alpha).unwrap().index.iter().enumerate() {
                counts[e][o] += 1;
            }
        }
        let mut worst = 0.0f64;
        for e in 0..3 {
            for o in 0..4 {
                let freq = counts[e][o] as f64 / n as f64;
                let sd = (p[e][o] * (1.0 - p[e][o]) / n as f64).sqrt();
                let z = (freq - p[e][o]).abs() / sd;
                worst = worst.max(z);
                assert!(
                    z < SIGMAS,
                    "lambda {}: edge {e} op {o}: frequency {freq} vs softmax {} ({z:.2} sd)",
                    snas.temperature(),
                    p[e][o]
                );
            }
        }
        eprintln!(
            "lambda {}: {n} samples, largest deviation {worst:.2} standard errors",
            snas.temperature()
        );
    }
}

#[test]
fn hard_children_are_one_hot_and_relaxed_rows_sum_to_one() {
    let (_, net, arch) = setup(10);
    let mut snas = Snas::new(&arch, SnasParams::default(), 3).unwrap();
    for (epoch, epochs) in [(0, 3), (2, 3)] {
        snas.begin_epoch(epoch, epochs);
        for _ in 0..50 {
            let s = snas.sample(arch.alpha_normal()).unwrap();
            assert!(
                s.relaxed.requires_grad(),
                "the sample keeps its graph to alpha"
            );
            for (row, &k) in rows(&s.relaxed).iter().zip(&s.index) {
                let sum: f64 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
                assert!(row.iter().all(|&v| (0.0..=1.0).contains(&v)));
                // The child is the relaxed sample's mode (same noise).
                let mode = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap();
                assert!(
                    row[k] >= row[mode] - 1e-6,
                    "child {k}, mode {mode}: {row:?}"
                );
            }
        }
    }
    // Eval weights are the argmax child: one-hot, only that op active, none included.
    let w = snas.op_weights(&arch, Phase::Eval).unwrap();
    w.check(&net.space(), true).unwrap();
    let argmax = Vec::<i64>::try_from(&arch.alpha_normal().argmax(-1, false)).unwrap();
    for (e, row) in rows(w.normal.weights()).iter().enumerate() {
        let k = argmax[e] as usize;
        assert_eq!(w.normal.active(e), Some(&[k][..]));
        for (o, &v) in row.iter().enumerate() {
            assert_eq!(v, if o == k { 1.0 } else { 0.0 });
        }
    }
}

#[test]
fn temperature_goes_linearly_from_one_to_0_03_over_the_search() {
    let (_, _, arch) = setup(10);
    let mut snas = Snas::new(&arch, SnasParams::default(), 0).unwrap();
    let epochs = 150; // the official search length
    let lambdas: Vec<f64> = (0..epochs)
        .map(|e| {
            snas.begin_epoch(e, epochs);
            let t = snas
                .scalars()
                .into_iter()
                .find(|(n, _)| *n == "temperature")
                .unwrap()
                .1;
            assert_eq!(t, snas.temperature());
            t
        })
        .collect();
    assert!((lambdas[0] - 1.0).abs() < 1e-12);
    assert!((lambdas[epochs - 1] - 0.03).abs() < 1e-12);
    let step = (1.0 - 0.03) / (epochs - 1) as f64;
    for w in lambdas.windows(2) {
        assert!((w[0] - w[1] - step).abs() < 1e-12, "{} -> {}", w[0], w[1]);
    }
    // Configurable endpoints.
    let mut custom = Snas::new(
        &arch,
        SnasParams {
            temperature_start: 5.0,
            temperature_end: 0.5,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    custom.begin_epoch(1, 3);
    assert!((custom.temperature() - 2.75).abs() < 1e-12);
}

/// `E[C(H)]` over every joint child of the edge set, as a differentiable function of alpha.
fn enumerated_expected_cost(alpha: &Tensor, cost: &[Vec<f64>]) -> Tensor {
    let (edges, ops) = (cost.len(), cost[0].len());
    let logp = alpha.log_softmax(-1, Kind::Double); // [E, O]
    let mut total = Tensor::zeros([], (Kind::Double, Device::Cpu));
    for code in 0..ops.pow(edges as u32) {
        let child: Vec<usize> = (0..edges).map(|e| code / ops.pow(e as u32) % ops).collect();
        let log_prob = child
            .iter()
            .enumerate()
            .map(|(e, &o)| logp.get(e as i64).get(o as i64))
            .fold(Tensor::zeros([], (Kind::Double, Device::Cpu)), |a, b| a + b);
        let c: f64 = child.iter().enumerate().map(|(e, &o)| cost[e][o]).sum();
        total += log_prob.exp() * c;
    }
    total
}

#[test]
fn score_function_cost_gradient_matches_the_exact_gradient_by_enumeration() {
    let (_, _, arch) = setup(10);
    tch::manual_seed(5);
    let (edges, ops) = (3usize, 4usize);
    let alpha = (Tensor::randn([edges as i64, ops as i64], (Kind::Double, Device::Cpu)) * 0.7)
        .set_requires_grad(true);
    // Costs in the range of the log penalty (0 for none, ~5-10 for convolutions).
    let cost: Vec<Vec<f64>> = vec![
        vec![0.0, 4.0, 7.5, 9.0],
        vec![0.0, 2.0, 6.0, 6.5],
        vec![0.0, 8.0, 3.0, 1.0],
    ];
    let cost_t = Tensor::from_slice(&cost.concat()).view([edges as i64, ops as i64]);

    // Exact: autograd through the enumeration of all 4^3 children.
    let expected = enumerated_expected_cost(&alpha, &cost);
    let closed_form = expected_cost(&alpha, &cost_t).unwrap();
    assert!((expected.double_value(&[]) - closed_form).abs() < 1e-12);
    let exact = Tensor::run_backward(&[&expected], &[&alpha], false, false).remove(0);

    // (1) The estimator's exact expectation (every child weighted by its probability) is the
    // exact gradient, with and without the baseline.
    let p = rows(&alpha.softmax(-1, Kind::Double));
    for baseline in [false, true] {
        let mut mean = Tensor::zeros([edges as i64, ops as i64], (Kind::Double, Device::Cpu));
        for code in 0..ops.pow(edges as u32) {
            let child: Vec<usize> = (0..edges).map(|e| code / ops.pow(e as u32) % ops).collect();
            let prob: f64 = child.iter().enumerate().map(|(e, &o)| p[e][o]).product();
            let g = score_function_cost_gradient(&alpha, &cost_t, &child, baseline).unwrap();
            mean += g * prob;
        }
        let err = (&mean - &exact).abs().max().double_value(&[]);
        assert!(err < 1e-12, "baseline {baseline}: max error {err}");
    }

    // (2) Monte Carlo with the strategy's own sampler: the mean estimate is within 5 standard
    // errors of the exact gradient in every coordinate.
    let mut snas = Snas::new(&arch, SnasParams::default(), 21).unwrap();
    let n = 20_000;
    for baseline in [false, true] {
        let mut sum = vec![0.0f64; edges * ops];
        let mut sum_sq = vec![0.0f64; edges * ops];
        let (mut cost_sum, mut cost_sq) = (0.0, 0.0);
        for _ in 0..n {
            let child = snas.sample(&alpha.detach()).unwrap().index;
            let c = sampled_cost(&cost_t, &child).unwrap();
            cost_sum += c;
            cost_sq += c * c;
            let g = score_function_cost_gradient(&alpha, &cost_t, &child, baseline).unwrap();
            for (k, v) in rows(&g).concat().into_iter().enumerate() {
                sum[k] += v;
                sum_sq[k] += v * v;
            }
        }
        let exact_flat = rows(&exact).concat();
        let mut worst = 0.0f64;
        let mut mean_sd = 0.0;
        for k in 0..edges * ops {
            let mean = sum[k] / n as f64;
            let var = (sum_sq[k] / n as f64 - mean * mean).max(0.0);
            let se = (var / n as f64).sqrt().max(1e-12);
            let z = (mean - exact_flat[k]).abs() / se;
            worst = worst.max(z);
            mean_sd += var.sqrt() / (edges * ops) as f64;
            assert!(
                z < SIGMAS,
                "baseline {baseline}, coordinate {k}: mean {mean} vs exact {} ({z:.2} se)",
                exact_flat[k]
            );
        }
        let cost_mean = cost_sum / n as f64;
        let cost_se = ((cost_sq / n as f64 - cost_mean * cost_mean) / n as f64).sqrt();
        assert!((cost_mean - closed_form).abs() < SIGMAS * cost_se);
        eprintln!(
            "baseline {baseline}: {n} samples, largest deviation {worst:.2} se, mean per-sample \
             sd {mean_sd:.3}; E[C] exact {closed_form:.4}, sampled {cost_mean:.4}"
        );
    }
}

/// The per-op costs come from the supernet's own ops for the actual input shape: `none` is
/// free, a 5x5 separable conv costs more than a 3x3 one on every edge.
#[test]
fn op_costs_come_from_the_ops() {
    let (_, net, arch) = setup(10);
    let mut snas = Snas::new(&arch, SnasParams::default(), 0).unwrap();
    snas.set_op_costs(&net.op_costs([1, 8, 8])).unwrap();
    let ops = net.space().op_set.ops();
    let idx = |k: OpKind| ops.iter().position(|&o| o == k).unwrap();
    let (normal, reduce) = snas.cost_matrices().unwrap();
    for m in [normal, reduce.unwrap()] {
        for row in rows(m) {
            assert_eq!(row[idx(OpKind::None)], 0.0);
            assert!(row[idx(OpKind::SepConv5x5)] > row[idx(OpKind::SepConv3x3)]);
            assert!(row[idx(OpKind::SepConv3x3)] > row[idx(OpKind::MaxPool3x3)]);
        }
    }
}

/// Runs `steps` single-level iterations the way the search loop does (op_weights(Weights),
/// one backward, SGD on the weights, after_weight_step) on a toy task; returns the strategy.
fn toy_search(eta: f64, steps: usize) -> (ArchParams, Snas, f64) {
    let (vs, net, arch) = setup(2);
    let params = SnasParams {
        eta,
        optimizer: ArchAdamConfig {
            lr: 0.1, // visible alpha movement in a few dozen steps
            ..Default::default()
        },
        ..Default::default()
    };
    let mut snas = Snas::new(&arch, params, 4).unwrap();
    snas.set_op_costs(&net.op_costs([1, 8, 8])).unwrap();
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    // Toy task: is the left half of the image brighter than the right half?
    let x = Tensor::randn([32, 1, 8, 8], (Kind::Float, Device::Cpu));
    let y = x
        .narrow(3, 0, 4)
        .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
        .gt_tensor(
            &x.narrow(3, 4, 4)
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float),
        )
        .to_kind(Kind::Int64);
    let mut initial = f64::NAN;
    for it in 0..steps {
        snas.begin_epoch(it, steps);
        if it == 0 {
            initial = snas.expected_cost(&arch).unwrap();
        }
        let w = snas.op_weights(&arch, Phase::Weights).unwrap();
        sgd.zero_grad();
        let loss = cross_entropy(&net.forward_with(&x, &w, true), &y);
        loss.backward();
        // The one backward reached the weights and the alphas.
        assert!(alphas(&arch).iter().all(|a| a.grad().defined()));
        sgd.step();
        let report = WeightStepReport {
            iteration: it as u64,
            loss: loss.double_value(&[]),
            grad_norm_sq: 0.0,
            lr: 0.025,
        };
        let stats: ArchStepStats = snas.after_weight_step(&arch, &report).unwrap().unwrap();
        assert!(stats.loss.is_finite());
    }
    (arch, snas, initial)
}

#[test]
fn a_large_eta_moves_the_search_to_cheaper_ops() {
    let steps = 40;
    let (arch0, s0, initial0) = toy_search(0.0, steps);
    let (arch1, s1, initial1) = toy_search(2.0, steps);
    assert!((initial0 - initial1).abs() < 1e-9, "same start");
    let free = s0.expected_cost(&arch0).unwrap();
    let constrained = s1.expected_cost(&arch1).unwrap();
    eprintln!("E[C]: start {initial0:.2}, eta 0 -> {free:.2}, eta 2 -> {constrained:.2}");
    assert!(
        constrained < 0.5 * initial1,
        "eta 2 left E[C] at {constrained} (start {initial1})"
    );
    assert!(
        constrained < 0.6 * free,
        "eta 2: {constrained}, eta 0: {free}"
    );
    // The derived child (argmax on every edge) is cheaper too.
    let child_cost = |arch: &ArchParams, s: &Snas| {
        let (n, r) = s.cost_matrices().unwrap();
        let idx = |a: &Tensor| -> Vec<usize> {
            Vec::<i64>::try_from(&a.argmax(-1, false))
                .unwrap()
                .into_iter()
                .map(|i| i as usize)
                .collect()
        };
        sampled_cost(n, &idx(arch.alpha_normal())).unwrap()
            + sampled_cost(r.unwrap(), &idx(arch.alpha_reduce().unwrap())).unwrap()
    };
    assert!(child_cost(&arch1, &s1) < child_cost(&arch0, &s0));
    let genotype = s1.derive(&arch1).unwrap();
    genotype.validate(2, true).unwrap();
}

/// An objective with only a training loss (as the RL loop's): SNAS's explicit alpha step never
/// asks for a search batch.
struct TrainOnly {
    target: Tensor,
}

impl Objective for TrainOnly {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok((weights.normal.weights() * &self.target).sum(Kind::Float)
            + weights
                .reduce
                .as_ref()
                .unwrap()
                .weights()
                .square()
                .sum(Kind::Float))
    }
    fn search_loss(&mut self, _: &CellWeights) -> Result<Tensor, SearchError> {
        Err(SearchError::Objective("no search split here".into()))
    }
    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn buffers(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn virtual_step(&self) -> VirtualStep {
        VirtualStep {
            lr: 0.0,
            momentum: 0.0,
            weight_decay: 0.0,
            momentum_buffers: Vec::new(),
        }
    }
}

#[test]
fn explicit_alpha_step_uses_only_the_training_loss() {
    let (_, net, arch) = setup(10);
    let mut snas = Snas::new(&arch, SnasParams::default(), 2).unwrap();
    snas.set_op_costs(&net.op_costs([1, 8, 8])).unwrap();
    assert!(!snas.wants_arch_step(0));
    let before = arch.alpha_normal().copy();
    let mut objective = TrainOnly {
        target: Tensor::randn([5, 8], (Kind::Float, Device::Cpu)),
    };
    let stats = snas.arch_step(&arch, &mut objective).unwrap();
    assert!(stats.loss.is_finite() && stats.grad_norm > 0.0);
    assert!(!arch.alpha_normal().equal(&before));
}
