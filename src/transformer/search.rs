//! `rl-darts search` and `train-arch` for the transformer space (Zhao et al. 2021, Algorithm
//! 2): alternate an alpha step on a validation batch (through the chosen
//! [`crate::search::SearchStrategy`], which sees the supernet through
//! [`super::objective::SeqObjective`]) and an SGD step of the weights on a training batch,
//! then derive the per-split op choice and retrain it from scratch.
//!
//! Departure: the paper trains the weights with Adam (0.9, 0.98) and warm-up; the search here
//! uses the project's SGD with momentum (what DARTS's second-order virtual step models), and
//! the retraining uses Adam. Random search (`kind = "random"`, `weight_sharing = false`)
//! trains each sampled architecture from scratch for the same number of iterations as the
//! retraining of one architecture gets per candidate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::genotype::{arch_of, describe, to_dot};
use super::net::{SeqArch, SeqNet, SeqNetConfig};
use super::objective::{check_strategy, loss_for_strategy, SeqObjective};
use super::tasks::{evaluate, SeqMetrics, SeqTask, TaskConfig};
use super::TransformerError;
use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, CellSpace, Genotype, OpCost, OpCostTable};
use crate::search::{
    Adam, AdamConfig, Phase, RandomSearch, Sgd, SgdConfig, StrategyConfig, WeightStepReport,
};
use crate::train::supervised::{clip_grad_norm, log_alphas, WeightOptimConfig};

/// The whole TOML of a transformer preset (`configs/seq-*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqConfig {
    /// Seeds weights, alphas, batches and the strategy's sampler.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub torch_threads: i32,
    pub task: TaskConfig,
    pub network: SeqNetConfig,
    pub search: SeqSearchConfig,
    pub train_arch: SeqTrainArchConfig,
}

impl Default for SeqConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            device: "cpu".into(),
            torch_threads: 0,
            task: TaskConfig::default(),
            network: SeqNetConfig::default(),
            search: SeqSearchConfig::default(),
            train_arch: SeqTrainArchConfig::default(),
        }
    }
}

/// `[search]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqSearchConfig {
    /// Epochs (temperature schedules and the cosine learning rate step per epoch).
    pub epochs: usize,
    /// Iterations (one weight step, plus an alpha step when the strategy wants one) per epoch.
    pub iterations_per_epoch: usize,
    pub batch_size: usize,
    /// SGD of the weights (cosine per epoch, clipped).
    pub weights: WeightOptimConfig,
    pub strategy: StrategyConfig,
    /// Initial alphas, `N(mean, std^2)`.
    pub alpha_init: AlphaInit,
    /// Batch size of evaluations (no gradients).
    pub eval_batch_size: usize,
}

impl Default for SeqSearchConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iterations_per_epoch: 50,
            batch_size: 32,
            weights: WeightOptimConfig {
                lr: 0.05,
                lr_min: 0.005,
                momentum: 0.9,
                weight_decay: 3e-4,
                grad_clip: 5.0,
            },
            strategy: StrategyConfig::default(),
            alpha_init: AlphaInit::default(),
            eval_batch_size: 256,
        }
    }
}

/// `[train_arch]`: retraining a derived architecture from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqTrainArchConfig {
    pub epochs: usize,
    pub iterations_per_epoch: usize,
    pub batch_size: usize,
    /// Adam over the weights (the paper: betas (0.9, 0.98)).
    pub optimizer: AdamConfig,
    /// Max global gradient norm; 0 disables.
    pub grad_clip: f64,
}

impl Default for SeqTrainArchConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            iterations_per_epoch: 100,
            batch_size: 32,
            optimizer: AdamConfig {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-9,
                weight_decay: 0.0,
            },
            grad_clip: 1.0,
        }
    }
}

/// Whether the TOML at `path` is a transformer preset (it has a `[task]` table; the vision
/// presets have `[data]`). Unreadable files are not: the vision loader then reports them.
pub fn is_transformer_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("task"))
}

fn setup(config: &SeqConfig) -> Result<Device, TransformerError> {
    let device = crate::device::parse_device(&config.device)
        .map_err(|e| TransformerError::Config(e.to_string()))?;
    if config.torch_threads > 0 {
        tch::set_num_threads(config.torch_threads);
    }
    tch::manual_seed(config.seed as i64);
    Ok(device)
}

/// Per-op costs of the supernet for SNAS's resource term, `[2 edges][10 ops]` per stack:
/// parameters exact (summed over layers), FLOPs as multiply-adds per sequence of `len`
/// tokens (`params x len`, plus `2 len^2 d` for attention), memory access as params plus
/// the op's input and output.
pub fn op_costs(net: &SeqNet, len: i64) -> OpCostTable {
    let table = |decoder: bool| -> Vec<Vec<OpCost>> {
        let (layers, split_width, depth) = net.searchable_ops(decoder);
        layers
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|(kind, params)| {
                        let params = params * depth as i64;
                        let attention = match kind {
                            crate::nas::OpKind::SelfAttention => 2 * len * len * split_width,
                            _ => 0,
                        };
                        OpCost {
                            params,
                            flops: params * len + attention * depth as i64,
                            mac: params + 2 * len * split_width * depth as i64,
                        }
                    })
                    .collect()
            })
            .collect()
    };
    OpCostTable {
        normal: table(false),
        reduce: net.is_seq2seq().then(|| table(true)),
    }
}

/// How a search ended.
#[derive(Debug, Clone, Serialize)]
pub struct SeqSearchSummary {
    pub genotype: Genotype,
    pub genotype_path: PathBuf,
    pub description: String,
    /// Supernet (or best random candidate) on the validation split.
    pub val: SeqMetrics,
    pub iterations: u64,
    pub seconds: f64,
}

/// Writes `genotype.json`, `genotype.txt` (DARTS text form + readable form) and
/// `genotype.dot` into `dir`.
pub fn save_genotype(
    genotype: &Genotype,
    seq2seq: bool,
    dir: &Path,
) -> Result<(PathBuf, String), TransformerError> {
    let json = dir.join("genotype.json");
    genotype.save_json(&json)?;
    let description = describe(genotype, seq2seq)?;
    let txt = dir.join("genotype.txt");
    std::fs::write(
        &txt,
        format!("{}\n{description}\n", genotype.to_darts_string()),
    )
    .map_err(TransformerError::io(&txt))?;
    let dot = dir.join("genotype.dot");
    std::fs::write(&dot, to_dot(genotype, seq2seq)?).map_err(TransformerError::io(&dot))?;
    Ok((json, description))
}

/// The search: DARTS-style alternation through the strategy, or random search from scratch.
pub fn search(
    config: &SeqConfig,
    run_dir: &Path,
    sink: &mut dyn MetricsSink,
) -> Result<SeqSearchSummary, TransformerError> {
    let started = Instant::now();
    let device = setup(config)?;
    check_strategy(&config.search.strategy, config.network.mode)?;
    let task = config.task.generate()?;
    sink.text("config", &crate::config::to_markdown(config)?, 0);
    let (genotype, val, iterations) = match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => {
            random_from_scratch(config, &task, device, p.clone(), sink)?
        }
        _ => supernet_search(config, &task, device, sink)?,
    };
    let seq2seq = task.config.is_seq2seq();
    let (genotype_path, description) = save_genotype(&genotype, seq2seq, run_dir)?;
    sink.text(
        "genotype",
        &format!("```\n{description}\n```"),
        iterations as i64,
    );
    let summary = SeqSearchSummary {
        genotype,
        genotype_path,
        description,
        val,
        iterations,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = run_dir.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(TransformerError::io(&path))?;
    Ok(summary)
}

/// The supernet and its alphas for `task`.
pub fn build_supernet(
    vs: &nn::VarStore,
    config: &SeqConfig,
    task: &SeqTask,
) -> Result<(SeqNet, ArchParams), TransformerError> {
    let mut network = config.network.clone();
    if !task.config.is_seq2seq() {
        network.decoder_layers = 0;
    } else if network.decoder_layers == 0 {
        return Err(TransformerError::Config(format!(
            "task {} is sequence to sequence: set network.decoder_layers >= 1",
            task.config.name()
        )));
    }
    let net = SeqNet::new(
        &(vs.root() / "net"),
        &network,
        task.src_vocab,
        task.tgt_vocab,
        &SeqArch::Supernet,
    )?;
    let arch = ArchParams::new(
        vs.device(),
        CellSpace::transformer(),
        net.is_seq2seq(),
        config.search.alpha_init,
    )?;
    Ok((net, arch))
}

fn supernet_search(
    config: &SeqConfig,
    task: &SeqTask,
    device: Device,
    sink: &mut dyn MetricsSink,
) -> Result<(Genotype, SeqMetrics, u64), TransformerError> {
    let sc = &config.search;
    let vs = nn::VarStore::new(device);
    let (net, arch) = build_supernet(&vs, config, task)?;
    let mut strategy = sc.strategy.build(&arch, config.seed)?;
    strategy.set_op_costs(&op_costs(&net, task.train.src.size()[1]))?;
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: sc.weights.lr,
            momentum: sc.weights.momentum,
            weight_decay: sc.weights.weight_decay,
        },
    );
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut iteration = 0u64;
    let mut val = SeqMetrics::default();
    for epoch in 0..sc.epochs {
        strategy.begin_epoch(epoch, sc.epochs);
        let lr = sc.weights.lr_at(epoch, sc.epochs);
        sgd.set_lr(lr);
        for _ in 0..sc.iterations_per_epoch {
            let train = task.train.sample(sc.batch_size, &mut rng, device);
            let valid = task.val.sample(sc.batch_size, &mut rng, device);
            if strategy.wants_arch_step(iteration) {
                let mut objective = SeqObjective {
                    net: &net,
                    sgd: &sgd,
                    train: &train,
                    search: &valid,
                };
                let stats = strategy.arch_step(&arch, &mut objective)?;
                sink.scalar("search/arch_loss", stats.loss, iteration as i64);
                sink.scalar("search/arch_grad_norm", stats.grad_norm, iteration as i64);
            }
            let weights = strategy.op_weights(&arch, Phase::Weights)?;
            sgd.zero_grad();
            let loss = loss_for_strategy(&net, &train, Some(&weights))?;
            loss.backward();
            let grad_norm_sq = clip_grad_norm(&sgd.parameters(), sc.weights.grad_clip);
            sgd.step();
            let report = WeightStepReport {
                iteration,
                loss: loss.double_value(&[]),
                grad_norm_sq,
                lr,
            };
            if let Some(stats) = strategy.after_weight_step(&arch, &report)? {
                sink.scalar("search/arch_loss", stats.loss, iteration as i64);
            }
            sink.scalar("search/train_loss", report.loss, iteration as i64);
            iteration += 1;
        }
        let eval_weights = strategy.op_weights(&arch, Phase::Eval)?;
        val = evaluate(
            &net,
            &task.val,
            Some(&eval_weights),
            sc.eval_batch_size,
            device,
        )?;
        log_metrics(sink, "search/val", &val, iteration);
        sink.scalar("search/lr", lr, iteration as i64);
        for (tag, value) in strategy.scalars() {
            sink.scalar(&format!("search/{tag}"), value, iteration as i64);
        }
        log_alphas(sink, &arch, strategy.as_ref(), iteration as i64)?;
        let genotype = strategy.derive(&arch)?;
        let text = describe(&genotype, task.config.is_seq2seq())?;
        sink.text("genotype", &format!("```\n{text}\n```"), iteration as i64);
        sink.flush();
    }
    Ok((strategy.derive(&arch)?, val, iteration))
}

fn log_metrics(sink: &mut dyn MetricsSink, prefix: &str, m: &SeqMetrics, step: u64) {
    sink.scalar(&format!("{prefix}_loss"), m.loss, step as i64);
    sink.scalar(
        &format!("{prefix}_token_accuracy"),
        m.token_accuracy,
        step as i64,
    );
    sink.scalar(&format!("{prefix}_exact_match"), m.exact_match, step as i64);
}

/// Random search from scratch: `num_candidates` architectures drawn uniformly (an op other
/// than zero per split), each trained by [`train_derived`] for `epochs_per_candidate` x
/// `train_arch.iterations_per_epoch` iterations, the best validation exact match kept (token
/// accuracy breaks ties).
fn random_from_scratch(
    config: &SeqConfig,
    task: &SeqTask,
    device: Device,
    params: crate::search::RandomParams,
    sink: &mut dyn MetricsSink,
) -> Result<(Genotype, SeqMetrics, u64), TransformerError> {
    let arch = ArchParams::new(
        Device::Cpu,
        CellSpace::transformer(),
        task.config.is_seq2seq(),
        AlphaInit::default(),
    )?;
    let mut sampler = RandomSearch::new(&arch, params.clone(), config.seed)?;
    let mut best: Option<(Genotype, SeqMetrics)> = None;
    let mut iterations = 0;
    for c in 0..params.num_candidates {
        let genotype = sampler.sample_genotype();
        let mut tc = config.train_arch.clone();
        tc.epochs = params.epochs_per_candidate;
        let trained = train_derived(config, &tc, task, &genotype, device, None)?;
        iterations += (tc.epochs * tc.iterations_per_epoch) as u64;
        log_metrics(sink, "random/candidate_val", &trained.val, c as u64);
        let better = best.as_ref().is_none_or(|(_, b)| {
            (trained.val.exact_match, trained.val.token_accuracy)
                > (b.exact_match, b.token_accuracy)
        });
        if better {
            best = Some((genotype, trained.val));
        }
    }
    best.map(|(g, m)| (g, m, iterations)).ok_or_else(|| {
        TransformerError::Config("search.strategy.params.num_candidates must be >= 1".into())
    })
}

/// What retraining a derived architecture gave.
#[derive(Debug, Clone, Serialize)]
pub struct TrainedArch {
    pub val: SeqMetrics,
    pub test: SeqMetrics,
    pub parameters: i64,
    pub seconds: f64,
}

/// Trains the network `genotype` describes from scratch with Adam and reports validation and
/// test metrics. Logs to `sink` when given.
pub fn train_derived(
    config: &SeqConfig,
    tc: &SeqTrainArchConfig,
    task: &SeqTask,
    genotype: &Genotype,
    device: Device,
    mut sink: Option<&mut dyn MetricsSink>,
) -> Result<TrainedArch, TransformerError> {
    let started = Instant::now();
    let seq2seq = task.config.is_seq2seq();
    let arch = arch_of(genotype, seq2seq)?;
    let mut network = config.network.clone();
    if !seq2seq {
        network.decoder_layers = 0;
    }
    let vs = nn::VarStore::new(device);
    let net = SeqNet::new(
        &(vs.root() / "net"),
        &network,
        task.src_vocab,
        task.tgt_vocab,
        &arch,
    )?;
    let parameters: i64 = net.parameters().iter().map(|t| t.numel() as i64).sum();
    let mut adam = Adam::new(crate::search::optim::ordered_variables(&vs)?, tc.optimizer);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1));
    let mut step = 0u64;
    let eval_bs = config.search.eval_batch_size;
    let mut val = SeqMetrics::default();
    for _ in 0..tc.epochs {
        for _ in 0..tc.iterations_per_epoch {
            let batch = task.train.sample(tc.batch_size, &mut rng, device);
            adam.zero_grad();
            let loss = loss_for_strategy(&net, &batch, None)?;
            loss.backward();
            if tc.grad_clip > 0.0 {
                clip_grad_norm(&adam.parameters(), tc.grad_clip);
            }
            adam.step()?;
            if let Some(s) = sink.as_deref_mut() {
                s.scalar("train_arch/train_loss", loss.double_value(&[]), step as i64);
            }
            step += 1;
        }
        val = evaluate(&net, &task.val, None, eval_bs, device)?;
        if let Some(s) = sink.as_deref_mut() {
            log_metrics(s, "train_arch/val", &val, step);
            s.flush();
        }
    }
    let test = evaluate(&net, &task.test, None, eval_bs, device)?;
    if let Some(s) = sink {
        log_metrics(s, "train_arch/test", &test, step);
        s.flush();
    }
    Ok(TrainedArch {
        val,
        test,
        parameters,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `rl-darts train-arch` for a transformer preset: retrains `genotype` and writes
/// `summary.json` into `out`.
pub fn train_arch(
    config: &SeqConfig,
    genotype: &Genotype,
    out: &Path,
    sink: &mut dyn MetricsSink,
) -> Result<TrainedArch, TransformerError> {
    let device = setup(config)?;
    let task = config.task.generate()?;
    sink.text("config", &crate::config::to_markdown(config)?, 0);
    save_genotype(genotype, task.config.is_seq2seq(), out)?;
    let trained = train_derived(
        config,
        &config.train_arch,
        &task,
        genotype,
        device,
        Some(sink),
    )?;
    let path = out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&trained).unwrap_or_default(),
    )
    .map_err(TransformerError::io(&path))?;
    Ok(trained)
}
