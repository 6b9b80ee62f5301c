//! Time of one search iteration, reversible against plain, measured so that a shared machine's
//! load cancels out as far as it can: both supernets live in one process (same weights, same
//! batches), and their repetitions alternate (plain, reversible, plain, reversible, ...), so
//! that a burst of load from other processes falls on both modes alike. Each mode's time is
//! the median and the minimum over its repetitions; the ratio is reported as the ratio of
//! medians, the ratio of minimums (the least disturbed repetitions), and the spread of the
//! per-pair ratios (each reversible repetition over the plain repetition just before it).
//!
//! It also splits each mode's iteration into its parts, timed separately on the same batches:
//! the alpha step and the weight step of the iteration, and for reversible the forward without
//! graph (what the backward's reconstruction starts from) against the whole loss-and-gradients
//! pass (forward + reconstruction + recompute with autograd + backward), so that the extra
//! cost over plain can be read off where it arises.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::net::{Mode, SeqBatch, SeqNet, SeqNetConfig};
use super::objective::{loss_for_strategy, SeqObjective};
use super::search::{build_supernet, SeqConfig};
use super::tasks::{SeqTask, TaskConfig, TaskKind};
use super::TransformerError;
use crate::nas::ArchParams;
use crate::search::{Phase, SearchStrategy, Sgd, SgdConfig, StrategyConfig};

/// What to time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeCase {
    pub layers: usize,
    pub d_model: i64,
    pub heads: i64,
    pub batch: usize,
    /// Sort length.
    pub length: usize,
    /// Alternating repetitions per mode.
    pub repetitions: usize,
    /// Search iterations per repetition.
    pub iterations: usize,
}

/// Median, minimum and maximum of a list of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One mode's parts of an iteration, seconds (medians over the repetitions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Parts {
    /// The strategy's alpha step (DARTS first order: gradient of the validation loss).
    pub alpha_step: f64,
    /// Training loss, its gradients, the SGD step.
    pub weight_step: f64,
    /// The forward pass alone, without graph.
    pub forward_no_graph: f64,
    /// Loss and every gradient: plain = forward with graph + backward; reversible = forward
    /// without graph + reconstruction, recompute with autograd and backward, layer by layer.
    pub loss_and_grads: f64,
}

/// What [`time_case`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeResult {
    /// Seconds per search iteration over the repetitions.
    pub plain: Spread,
    pub reversible: Spread,
    /// Reversible over plain: ratio of medians, of minimums, and the spread of the per-pair
    /// ratios.
    pub ratio_of_medians: f64,
    pub ratio_of_mins: f64,
    pub pair_ratios: Spread,
    pub plain_parts: Parts,
    pub reversible_parts: Parts,
    pub parameters: i64,
}

/// One mode's supernet, strategy, optimizer and batch stream.
struct Arm {
    net: SeqNet,
    arch: ArchParams,
    strategy: Box<dyn SearchStrategy>,
    sgd: Sgd,
    rng: ChaCha8Rng,
    _vs: nn::VarStore,
}

fn config_of(case: &TimeCase, mode: Mode) -> SeqConfig {
    SeqConfig {
        task: TaskConfig {
            kind: TaskKind::Sort,
            length: case.length,
            train_size: 256,
            val_size: 256,
            test_size: 16,
            ..TaskConfig::default()
        },
        network: SeqNetConfig {
            d_model: case.d_model,
            heads: case.heads,
            encoder_layers: case.layers,
            decoder_layers: 0,
            mode,
            ..SeqNetConfig::default()
        },
        ..SeqConfig::default()
    }
}

impl Arm {
    fn new(case: &TimeCase, mode: Mode, task: &SeqTask) -> Result<Arm, TransformerError> {
        // The same seed for both modes: the same initial weights and alphas.
        tch::manual_seed(0);
        let config = config_of(case, mode);
        let vs = nn::VarStore::new(Device::Cpu);
        let (net, arch) = build_supernet(&vs, &config, task)?;
        let strategy = StrategyConfig::default().build(&arch, 0)?;
        let sgd = Sgd::new(
            vs.variables(),
            SgdConfig {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
            },
        );
        Ok(Arm {
            net,
            arch,
            strategy,
            sgd,
            rng: ChaCha8Rng::seed_from_u64(0),
            _vs: vs,
        })
    }

    fn batches(&mut self, task: &SeqTask, batch: usize) -> (SeqBatch, SeqBatch) {
        (
            task.train.sample(batch, &mut self.rng, Device::Cpu),
            task.val.sample(batch, &mut self.rng, Device::Cpu),
        )
    }

    /// One search iteration; returns the seconds of its alpha step and its weight step.
    fn iteration(&mut self, task: &SeqTask, batch: usize) -> Result<(f64, f64), TransformerError> {
        let (train, valid) = self.batches(task, batch);
        let started = Instant::now();
        let mut objective = SeqObjective {
            net: &self.net,
            sgd: &self.sgd,
            train: &train,
            search: &valid,
        };
        self.strategy.arch_step(&self.arch, &mut objective)?;
        let alpha = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let weights = self.strategy.op_weights(&self.arch, Phase::Weights)?;
        self.sgd.zero_grad();
        loss_for_strategy(&self.net, &train, Some(&weights))?.backward();
        self.sgd.step();
        Ok((alpha, started.elapsed().as_secs_f64()))
    }

    /// The forward without graph, and loss with every gradient, on one training batch.
    fn passes(&mut self, task: &SeqTask, batch: usize) -> Result<(f64, f64), TransformerError> {
        let (train, _) = self.batches(task, batch);
        let weights = self.strategy.op_weights(&self.arch, Phase::Eval)?;
        let started = Instant::now();
        let _loss = tch::no_grad(|| self.net.plain_loss(&train, Some(&weights)))?;
        let forward = started.elapsed().as_secs_f64();
        let started = Instant::now();
        match self.net.config.mode {
            Mode::Plain => {
                let loss = self.net.plain_loss(&train, Some(&weights))?;
                let params = self.net.parameters();
                let _ = tch::Tensor::f_run_backward(&[&loss], &params, false, false)?;
            }
            _ => {
                self.net.reversible_grads(&train, Some(&weights))?;
            }
        }
        Ok((forward, started.elapsed().as_secs_f64()))
    }
}

/// Interleaved timing of plain and reversible (module docs). One warm-up iteration per mode
/// first (the first pass pages in libtorch's code and thread pools).
pub fn time_case(case: &TimeCase) -> Result<TimeResult, TransformerError> {
    let task = config_of(case, Mode::Plain).task.generate()?;
    let mut arms = [
        Arm::new(case, Mode::Plain, &task)?,
        Arm::new(case, Mode::Reversible, &task)?,
    ];
    for arm in arms.iter_mut() {
        arm.iteration(&task, case.batch)?;
        arm.passes(&task, case.batch)?;
    }
    let parameters = arms[0]
        .net
        .parameters()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    // [mode][repetition] seconds per iteration, and the parts.
    let mut per_iter: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut parts: [[Vec<f64>; 4]; 2] = Default::default();
    let iterations = case.iterations.max(1);
    for _ in 0..case.repetitions.max(1) {
        for (m, arm) in arms.iter_mut().enumerate() {
            let (mut alpha, mut weight) = (0.0, 0.0);
            let started = Instant::now();
            for _ in 0..iterations {
                let (a, w) = arm.iteration(&task, case.batch)?;
                alpha += a;
                weight += w;
            }
            per_iter[m].push(started.elapsed().as_secs_f64() / iterations as f64);
            parts[m][0].push(alpha / iterations as f64);
            parts[m][1].push(weight / iterations as f64);
            let (forward, grads) = arm.passes(&task, case.batch)?;
            parts[m][2].push(forward);
            parts[m][3].push(grads);
        }
    }
    let pair: Vec<f64> = per_iter[1]
        .iter()
        .zip(&per_iter[0])
        .map(|(r, p)| r / p)
        .collect();
    let parts_of = |m: usize| Parts {
        alpha_step: Spread::of(&parts[m][0]).median,
        weight_step: Spread::of(&parts[m][1]).median,
        forward_no_graph: Spread::of(&parts[m][2]).median,
        loss_and_grads: Spread::of(&parts[m][3]).median,
    };
    let (plain, reversible) = (Spread::of(&per_iter[0]), Spread::of(&per_iter[1]));
    Ok(TimeResult {
        plain,
        reversible,
        ratio_of_medians: reversible.median / plain.median,
        ratio_of_mins: reversible.min / plain.min,
        pair_ratios: Spread::of(&pair),
        plain_parts: parts_of(0),
        reversible_parts: parts_of(1),
        parameters,
    })
}
