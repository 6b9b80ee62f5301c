//! Checkpoint round trip of every strategy, with all of its state changed first.
//!
//! For each strategy (DARTS first and second order, iDARTS, GDAS, SNAS, joint, DARTS-PRIME
//! with prox and ADMM, UNAS on the DARTS and the factorised cell, random search): a few
//! iterations of a search loop on a tiny quadratic objective move the alphas, the alpha
//! optimizer's moments and step count, the temperature schedule, DARTS-PRIME's EWMA, threshold
//! and counters, the sampler's stream position and random search's incumbent. The strategy is
//! saved, and loaded into a fresh one built with *another* seed over a copy of the alphas (as a
//! resumed run loads them). Then:
//!
//! 1. `save` of the loaded strategy writes the same files, byte for byte and tensor for tensor
//!    (moments, step counts, RNG, schedules, counters);
//! 2. `scalars()`, `derive` and the logged op weights agree;
//! 3. both continue the same loop for a few more iterations and stay bit-identical: every
//!    sample drawn, every alpha step (which reads the moments and the step count's bias
//!    correction) and every scalar;
//! 4. a control, the same fresh strategy *without* `load`, diverges in (2) or (3): the test has
//!    power for every strategy (a `load` that forgot any part of the state would fail it).

use std::collections::BTreeMap;
use std::path::Path;

use rl_darts::nas::{AlphaInit, ArchParams, CellSpace, CellWeights, OpCost, OpCostTable, OpSet};
use rl_darts::search::{
    alphas, DartsOrder, DartsParams, DartsPrimeParams, GdasParams, HessianMode, IDartsParams,
    Objective, Phase, PrimeRegularizer, RandomParams, SearchError, SearchStrategy, SnasParams,
    StrategyConfig, UnasCell, UnasParams, VirtualStep, WeightStepReport,
};
use tch::{Device, Kind, Tensor};

fn space() -> CellSpace {
    CellSpace {
        num_inputs: 2,
        num_nodes: 3,
        op_set: OpSet::Darts,
    }
}

/// Network "weights" `w_c` (one `[E, O]` matrix per cell type) and a loss that couples them
/// with the op weights: `sum_c (<W_c, w_c + a_c> - t)^2 + 0.1 ||w||^2`, `a` and `t` fixed per
/// split. Smooth in both, so every strategy's gradients are nonzero.
struct Toy {
    w: Vec<Tensor>,
    train: (Vec<Tensor>, f64),
    search: (Vec<Tensor>, f64),
}

impl Toy {
    fn new() -> Self {
        let (e, o) = (space().num_edges() as i64, space().num_ops() as i64);
        let grid = |phase: f64| -> Vec<Tensor> {
            (0..2)
                .map(|c| {
                    let v: Vec<f64> = (0..e * o)
                        .map(|i| (0.7 * i as f64 + phase + c as f64).sin())
                        .collect();
                    Tensor::from_slice(&v).view([e, o])
                })
                .collect()
        };
        let w = grid(0.3)
            .into_iter()
            .map(|t| (t * 0.5).set_requires_grad(true))
            .collect();
        Self {
            w,
            train: (grid(1.1), 2.0),
            search: (grid(2.9), -1.0),
        }
    }

    /// A copy with equal values and its own tensors.
    fn copy(&self) -> Self {
        let mut other = Self::new();
        tch::no_grad(|| {
            for (dst, src) in other.w.iter_mut().zip(&self.w) {
                dst.copy_(src);
            }
        });
        other
    }

    fn loss(&self, weights: &CellWeights, (a, t): &(Vec<Tensor>, f64)) -> Tensor {
        let cells = [Some(&weights.normal), weights.reduce.as_ref()];
        let mut total = Tensor::zeros([], (Kind::Double, Device::Cpu));
        for ((ow, w), a) in cells.iter().zip(&self.w).zip(a) {
            if let Some(ow) = ow {
                let inner = (ow.weights().to_kind(Kind::Double) * (w + a)).sum(Kind::Double);
                total += (inner - *t).square();
            }
            total += w.square().sum(Kind::Double) * 0.1;
        }
        total
    }

    /// One plain SGD step on the weights, as the loop's weight step; returns the report.
    fn weight_step(
        &mut self,
        strategy: &mut dyn SearchStrategy,
        arch: &ArchParams,
        iteration: u64,
    ) -> (WeightStepReport, Tensor) {
        let weights = strategy.op_weights(arch, Phase::Weights).unwrap();
        let logged = weights.normal.weights().detach().copy();
        for w in &mut self.w {
            w.zero_grad();
        }
        let loss = self.loss(&weights, &self.train);
        loss.backward();
        let grads: Vec<Tensor> = self.w.iter().map(Tensor::grad).collect();
        let grad_norm_sq: f64 = grads
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum();
        tch::no_grad(|| {
            for (w, g) in self.w.iter_mut().zip(&grads) {
                let _ = w.g_sub_(&(g * 0.01));
            }
        });
        let report = WeightStepReport {
            iteration,
            loss: loss.double_value(&[]),
            grad_norm_sq,
            lr: 0.01,
        };
        (report, logged)
    }
}

impl Objective for Toy {
    fn train_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(weights, &self.train))
    }
    fn search_loss(&mut self, weights: &CellWeights) -> Result<Tensor, SearchError> {
        Ok(self.loss(weights, &self.search))
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.w.iter().map(Tensor::shallow_clone).collect()
    }
    fn buffers(&self) -> Vec<Tensor> {
        Vec::new()
    }
    fn virtual_step(&self) -> VirtualStep {
        VirtualStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 3e-4,
            momentum_buffers: self.w.iter().map(|_| None).collect(),
        }
    }
    /// Three "examples" (UNAS's per-example samples): the loss above per row of `[3, E, O]`
    /// op weights.
    fn paired_examples(&self) -> Result<i64, SearchError> {
        Ok(3)
    }
    fn per_example_losses(
        &mut self,
        weights: &CellWeights,
    ) -> Result<(Tensor, Tensor), SearchError> {
        let rows = |(a, t): &(Vec<Tensor>, f64)| {
            let cells = [Some(&weights.normal), weights.reduce.as_ref()];
            let mut total = Tensor::zeros([3], (Kind::Double, Device::Cpu));
            for ((ow, w), a) in cells.iter().zip(&self.w).zip(a) {
                if let Some(ow) = ow {
                    let inner = (ow.weights().to_kind(Kind::Double) * (w + a)).sum_dim_intlist(
                        [-2i64, -1].as_slice(),
                        false,
                        Kind::Double,
                    );
                    total += (inner - *t).square();
                }
                total += w.square().sum(Kind::Double) * 0.1;
            }
            total
        };
        Ok((rows(&self.train), rows(&self.search)))
    }
}

/// Synthetic per-op costs (SNAS's resource term), distinct per edge and op.
fn costs() -> OpCostTable {
    let s = space();
    let table: Vec<Vec<OpCost>> = (0..s.num_edges())
        .map(|e| {
            (0..s.num_ops())
                .map(|o| OpCost {
                    params: ((e + 1) * (o + 1) * 100) as i64,
                    flops: ((e + 2) * (o + 1) * 1000) as i64,
                    mac: ((o + 1) * 50) as i64,
                })
                .collect()
        })
        .collect();
    OpCostTable {
        normal: table.clone(),
        reduce: Some(table),
    }
}

fn new_arch() -> ArchParams {
    tch::manual_seed(0);
    let mut arch = ArchParams::new(
        Device::Cpu,
        space(),
        true,
        AlphaInit {
            mean: 0.0,
            std: 0.5,
        },
    )
    .unwrap();
    arch.var_store_mut().set_kind(Kind::Double);
    arch
}

/// A second ArchParams holding the same alpha values (what a resumed run loads).
fn copy_arch(arch: &ArchParams) -> ArchParams {
    let other = new_arch();
    tch::no_grad(|| {
        for (mut dst, src) in alphas(&other).into_iter().zip(alphas(arch)) {
            dst.copy_(&src);
        }
    });
    other
}

fn build(config: &StrategyConfig, arch: &ArchParams, seed: u64) -> Box<dyn SearchStrategy> {
    let mut s = config.build(arch, seed).unwrap();
    s.set_op_costs(&costs()).unwrap();
    s
}

/// One loop iteration: epoch boundary every 3 iterations (of 4 epochs), alpha step when the
/// strategy wants one, weight step, report. Returns what the iteration produced, for
/// comparison: the alphas after it, the weight step's op weights, the scalars.
fn iterate(
    strategy: &mut dyn SearchStrategy,
    arch: &ArchParams,
    toy: &mut Toy,
    iteration: u64,
    epoch_starts: bool,
) -> Vec<Tensor> {
    if epoch_starts && iteration.is_multiple_of(3) {
        strategy.begin_epoch((iteration / 3) as usize, 4);
    }
    if strategy.wants_arch_step(iteration) {
        let stats = strategy.arch_step(arch, toy).unwrap();
        assert!(stats.loss.is_finite(), "{}", strategy.name());
    }
    let (report, logged) = toy.weight_step(strategy, arch, iteration);
    strategy.after_weight_step(arch, &report).unwrap();
    let mut out: Vec<Tensor> = alphas(arch).iter().map(Tensor::copy).collect();
    out.push(logged);
    out
}

/// Every file of a checkpoint folder: safetensors as named tensors, anything else as bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<(String, Tensor)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let content = if name.ends_with(".safetensors") {
            let mut t = Tensor::read_safetensors(&path).unwrap();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        } else {
            vec![(
                String::new(),
                Tensor::from_slice(&std::fs::read(&path).unwrap()),
            )]
        };
        out.insert(name, content);
    }
    out
}

fn same_files(a: &Path, b: &Path) -> Result<(), String> {
    let (fa, fb) = (files(a), files(b));
    let names = |f: &BTreeMap<String, _>| f.keys().cloned().collect::<Vec<_>>();
    if names(&fa) != names(&fb) {
        return Err(format!("files {:?} vs {:?}", names(&fa), names(&fb)));
    }
    for (name, ta) in &fa {
        let tb = &fb[name];
        if ta.len() != tb.len() {
            return Err(format!("{name}: {} vs {} entries", ta.len(), tb.len()));
        }
        for ((ka, va), (kb, vb)) in ta.iter().zip(tb) {
            if ka != kb || va.size() != vb.size() || !va.equal(vb) {
                return Err(format!("{name}: entry {ka} differs"));
            }
        }
    }
    Ok(())
}

/// Whether `b` behaves like `a` from here on: scalars, derive, logged weights now, then
/// `steps` more iterations each compared bit for bit. Returns the first difference.
#[allow(clippy::too_many_arguments)]
fn same_future(
    a: &mut dyn SearchStrategy,
    arch_a: &ArchParams,
    toy_a: &mut Toy,
    b: &mut dyn SearchStrategy,
    arch_b: &ArchParams,
    toy_b: &mut Toy,
    start: u64,
    steps: u64,
) -> Result<(), String> {
    if a.scalars() != b.scalars() {
        return Err(format!("scalars {:?} vs {:?}", a.scalars(), b.scalars()));
    }
    if a.derive(arch_a).unwrap() != b.derive(arch_b).unwrap() {
        return Err("derive differs".into());
    }
    if a.expected_op_weights(arch_a).unwrap() != b.expected_op_weights(arch_b).unwrap() {
        return Err("logged op weights differ".into());
    }
    for i in start..start + steps {
        // No epoch boundary at the first resumed iteration: the temperature must come from
        // the checkpoint, not from a begin_epoch call.
        let epoch_starts = i > start;
        let ra = iterate(a, arch_a, toy_a, i, epoch_starts);
        let rb = iterate(b, arch_b, toy_b, i, epoch_starts);
        for (k, (x, y)) in ra.iter().zip(&rb).enumerate() {
            if !x.equal(y) {
                return Err(format!(
                    "iteration {i}: tensor {k} (alphas, then op weights) differs"
                ));
            }
        }
        if a.scalars() != b.scalars() {
            return Err(format!(
                "iteration {i}: scalars {:?} vs {:?}",
                a.scalars(),
                b.scalars()
            ));
        }
    }
    Ok(())
}

fn round_trip(label: &str, config: &StrategyConfig) {
    let arch = new_arch();
    let initial: Vec<Tensor> = alphas(&arch).iter().map(Tensor::copy).collect();
    let mut strategy = build(config, &arch, 7);
    let untouched_scalars = strategy.scalars();
    let untouched_weights = strategy.expected_op_weights(&arch).unwrap();
    let mut toy = Toy::new();
    const BEFORE: u64 = 7;
    for i in 0..BEFORE {
        iterate(strategy.as_mut(), &arch, &mut toy, i, true);
    }
    // The state really changed (else a load that does nothing would pass): the alphas, or for
    // UNAS's factorised cell the selectors behind the logged op weights.
    let moved = alphas(&arch).iter().zip(&initial).any(|(a, b)| !a.equal(b))
        || strategy.expected_op_weights(&arch).unwrap() != untouched_weights;
    assert!(moved, "{label}: the architecture did not move");
    assert_ne!(
        strategy.scalars(),
        untouched_scalars,
        "{label}: no scalar moved"
    );

    let dir = tempfile::tempdir().unwrap();
    strategy.save(dir.path()).unwrap();

    // 1. Load into a fresh strategy with another seed; its own save writes the same files.
    let arch_b = copy_arch(&arch);
    let mut fresh = build(config, &arch_b, 99);
    fresh.load(dir.path()).unwrap();
    let again = tempfile::tempdir().unwrap();
    fresh.save(again.path()).unwrap();
    if let Err(e) = same_files(dir.path(), again.path()) {
        panic!("{label}: save(load(checkpoint)) differs from the checkpoint: {e}");
    }

    // 4 (control first, before the original moves on): without `load` the future differs.
    let arch_c = copy_arch(&arch);
    let mut control = build(config, &arch_c, 99);
    let mut toy_c = toy.copy();
    let arch_a2 = copy_arch(&arch);
    let mut original_copy = build(config, &arch_a2, 7);
    original_copy.load(dir.path()).unwrap();
    let mut toy_a2 = toy.copy();
    assert!(
        same_future(
            original_copy.as_mut(),
            &arch_a2,
            &mut toy_a2,
            control.as_mut(),
            &arch_c,
            &mut toy_c,
            BEFORE,
            4
        )
        .is_err(),
        "{label}: a strategy that was never loaded behaves like the loaded one; the comparison \
         has no power"
    );

    // 2 and 3: the original and the loaded strategy continue identically.
    let mut toy_b = toy.copy();
    if let Err(e) = same_future(
        strategy.as_mut(),
        &arch,
        &mut toy,
        fresh.as_mut(),
        &arch_b,
        &mut toy_b,
        BEFORE,
        4,
    ) {
        panic!("{label}: the loaded strategy diverges from the saved one: {e}");
    }
}

#[test]
fn every_strategy_round_trips_all_of_its_state() {
    let darts = |order, hessian| {
        StrategyConfig::Darts(DartsParams {
            order,
            hessian,
            ..Default::default()
        })
    };
    let configs = [
        (
            "darts first",
            darts(DartsOrder::First, HessianMode::FiniteDifference),
        ),
        (
            "darts second fd",
            darts(DartsOrder::Second, HessianMode::FiniteDifference),
        ),
        (
            "darts second exact",
            darts(DartsOrder::Second, HessianMode::Exact),
        ),
        (
            "idarts",
            StrategyConfig::Idarts(IDartsParams {
                inner_steps: 2,
                gamma: Some(0.05),
                power_iterations: 2,
                ..Default::default()
            }),
        ),
        ("gdas", StrategyConfig::Gdas(GdasParams::default())),
        ("snas", StrategyConfig::Snas(SnasParams::default())),
        ("joint", StrategyConfig::from_name("joint").unwrap()),
        (
            "darts_prime prox",
            StrategyConfig::DartsPrime(DartsPrimeParams {
                initial_threshold: 1e3,
                ..Default::default()
            }),
        ),
        (
            "darts_prime admm",
            StrategyConfig::DartsPrime(DartsPrimeParams {
                initial_threshold: 1e3,
                regularizer: PrimeRegularizer::Admm,
                admm_every: 2,
                ..Default::default()
            }),
        ),
        ("unas", StrategyConfig::Unas(UnasParams::default())),
        (
            "unas one architecture per minibatch",
            StrategyConfig::Unas(UnasParams {
                same_alpha_minibatch: true,
                ..Default::default()
            }),
        ),
        (
            "unas factorised",
            StrategyConfig::Unas(UnasParams {
                cell: UnasCell::Factorised,
                same_alpha_minibatch: true,
                ..Default::default()
            }),
        ),
        (
            "random",
            StrategyConfig::Random(RandomParams {
                weight_sharing: true,
                ..Default::default()
            }),
        ),
    ];
    // Every strategy name is covered.
    for name in rl_darts::search::STRATEGY_NAMES {
        assert!(
            configs.iter().any(|(_, c)| c.name() == *name),
            "{name} is not round-tripped"
        );
    }
    for (label, config) in &configs {
        round_trip(label, config);
    }
}
