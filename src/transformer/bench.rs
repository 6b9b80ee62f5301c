//! Memory and time of one search iteration of the transformer supernet (plain, reversible or
//! checkpointed), measured inside the calling process (run each case in its own process:
//! `examples/bench_transformer.rs`, `tests/transformer_memory.rs`).
//!
//! Activation memory = peak resident memory during the measured iterations minus the resident
//! memory just before them (after the network, the alphas and the optimizers are built and one
//! warm-up iteration has run). Linux only: `/proc/self/status` (VmRSS, VmHWM), with the peak
//! reset through `/proc/self/clear_refs`. Run with `MALLOC_MMAP_THRESHOLD_=4096` so that glibc
//! returns freed tensors to the system and the resident size follows the live tensors (with
//! the default threshold, tensors below it that the warm-up freed stay in the heap and are
//! reused unseen). The warm-up is needed: the first iteration pages in ~25 MB of libtorch code
//! and thread-pool state that no later iteration adds.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::net::{Mode, SeqNetConfig};
use super::objective::{loss_for_strategy, SeqObjective};
use super::search::{build_supernet, SeqConfig};
use super::tasks::{TaskConfig, TaskKind};
use super::TransformerError;
use crate::search::{Phase, Sgd, SgdConfig, StrategyConfig};

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchCase {
    pub mode: Mode,
    /// Encoder layers (and decoder layers for `addition`).
    pub layers: usize,
    pub d_model: i64,
    pub heads: i64,
    pub batch: usize,
    pub task: TaskKind,
    /// Sort length (encoder-only) or digits per operand (addition).
    pub length: usize,
    /// Weight-tied layers: parameters do not grow with depth.
    pub tie_layers: bool,
    /// Measured iterations (after one warm-up).
    pub iterations: usize,
}

/// What [`run_case`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Peak minus resident before the measured iterations, bytes.
    pub activation_bytes: i64,
    /// Peak resident memory of the process, bytes.
    pub peak_bytes: i64,
    /// Mean wall time of one search iteration (DARTS first-order alpha step + weight step).
    pub seconds_per_iteration: f64,
    pub parameters: i64,
}

fn status_kb(field: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Builds the supernet of `case`, runs one warm-up and `case.iterations` measured search
/// iterations, and reports memory and time.
pub fn run_case(case: &BenchCase) -> Result<BenchResult, TransformerError> {
    tch::manual_seed(0);
    let seq2seq = case.task == TaskKind::Addition;
    let config = SeqConfig {
        task: TaskConfig {
            kind: case.task,
            length: case.length,
            digits: case.length,
            train_size: 256,
            val_size: 256,
            test_size: 16,
            ..TaskConfig::default()
        },
        network: SeqNetConfig {
            d_model: case.d_model,
            heads: case.heads,
            encoder_layers: case.layers,
            decoder_layers: if seq2seq { case.layers } else { 0 },
            tie_layers: case.tie_layers,
            mode: case.mode,
            ..SeqNetConfig::default()
        },
        ..SeqConfig::default()
    };
    let task = config.task.generate()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, arch) = build_supernet(&vs, &config, &task)?;
    let mut strategy = StrategyConfig::default().build(&arch, 0)?;
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    );
    let parameters = net.parameters().iter().map(|t| t.numel() as i64).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut iteration = |rng: &mut ChaCha8Rng| -> Result<(), TransformerError> {
        let train = task.train.sample(case.batch, rng, Device::Cpu);
        let valid = task.val.sample(case.batch, rng, Device::Cpu);
        let mut objective = SeqObjective {
            net: &net,
            sgd: &sgd,
            train: &train,
            search: &valid,
        };
        strategy.arch_step(&arch, &mut objective)?;
        let weights = strategy.op_weights(&arch, Phase::Weights)?;
        sgd.zero_grad();
        loss_for_strategy(&net, &train, Some(&weights))?.backward();
        sgd.step();
        Ok(())
    };
    iteration(&mut rng)?;
    // Reset the peak to the current resident size (Linux >= 4.0); if that is refused the peak
    // still covers the warm-up, which allocates what a measured iteration allocates.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    for _ in 0..case.iterations.max(1) {
        iteration(&mut rng)?;
    }
    let seconds_per_iteration = started.elapsed().as_secs_f64() / case.iterations.max(1) as f64;
    let peak = status_kb("VmHWM:").unwrap_or(0);
    Ok(BenchResult {
        activation_bytes: (peak - before) * 1024,
        peak_bytes: peak * 1024,
        seconds_per_iteration,
        parameters,
    })
}
