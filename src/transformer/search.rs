//! `rl-darts search` and `train-arch` for the transformer space (Zhao et al. 2021, Algorithm
//! 2): alternate an alpha step on a validation batch (through the chosen
//! [`crate::search::SearchStrategy`], which sees the supernet through
//! [`super::objective::SeqObjective`]) and an SGD step of the weights on a training batch,
//! then derive the per-split op choice and retrain it from scratch.
//!
//! Every epoch ends with an atomic checkpoint in the run directory, from which
//! `rl-darts search --resume RUN_DIR` continues exactly ([`super::resume`]).
//!
//! Departure: the paper trains the weights with Adam (0.9, 0.98) and warm-up; the search here
//! uses the project's SGD with momentum (what DARTS's second-order virtual step models), and
//! the retraining uses Adam. Random search from scratch lives in [`super::retrain`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{nn, Device, Tensor};

use super::genotype::{describe, to_dot};
use super::net::{SeqArch, SeqNet};
use super::objective::{check_strategy, loss_for_strategy, PlainLossObjective, SeqObjective};
use super::resume::{load_supernet, save_supernet, SupernetParts, SupernetState};
use super::retrain::random_from_scratch;
use super::tasks::{evaluate, SeqMetrics, SeqTask};
use super::TransformerError;
use crate::agents::{clip_grad_norm, NormArithmetic};
use crate::logging::MetricsSink;
use crate::nas::{ArchParams, CellSpace, Genotype, OpCost, OpCostTable};
use crate::precision::{LayoutChoice, PrecisionChoice};
use crate::search::{Phase, Sgd, SgdConfig, StrategyConfig, WeightStepReport};
use crate::train::run_dir::RunDir;
use crate::train::supervised::log_alphas;

pub use super::config::{is_transformer_config, SeqConfig, SeqSearchConfig, SeqTrainArchConfig};

pub(super) fn setup(config: &SeqConfig) -> Result<Device, TransformerError> {
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
    /// Epochs (random search from scratch: candidates) done, over every call.
    pub epochs_done: usize,
    /// Stopped before the end (Ctrl-C or `max_epochs`); resume from the run directory.
    pub interrupted: bool,
    /// Wall time of this call (a resumed run counts only its own part).
    pub seconds: f64,
}

/// One call of [`search_run`].
pub struct SeqSearchRun<'a> {
    pub config: &'a SeqConfig,
    pub run_dir: &'a RunDir,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    /// Checked after every epoch (candidate): when set, a checkpoint is written and the call
    /// returns.
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs (candidates) in this call (tests).
    pub max_epochs: Option<usize>,
}

/// What a search loop hands back to [`search_run`].
pub(super) struct Outcome {
    pub genotype: Genotype,
    pub val: SeqMetrics,
    pub iterations: u64,
    pub epochs_done: usize,
    pub interrupted: bool,
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

/// A fresh search in `run_dir` (created if missing), run to the end.
pub fn search(
    config: &SeqConfig,
    run_dir: &Path,
    sink: &mut dyn MetricsSink,
) -> Result<SeqSearchSummary, TransformerError> {
    let run_dir = RunDir::create_at(run_dir)?;
    search_run(SeqSearchRun {
        config,
        run_dir: &run_dir,
        resume: false,
        sink,
        stop: &AtomicBool::new(false),
        max_epochs: None,
    })
}

/// The run's precision and layout ([`crate::precision`]) by the device rule, without a
/// probe, recorded in `dir` (`compute.json` and `config.toml`). Sequences have no image
/// layout: `layout = "auto"` is `nchw`, which changes nothing here.
pub(crate) fn choose_compute(
    config: &SeqConfig,
    device: Device,
    dir: &Path,
    resume: bool,
) -> Result<crate::precision::ComputePolicy, TransformerError> {
    let layout = match config.layout {
        LayoutChoice::Auto => LayoutChoice::Nchw,
        l => l,
    };
    let policy =
        crate::precision::policy_for_run(config.precision, layout, device, dir, resume, true, None)
            .map_err(|e| TransformerError::Config(e.to_string()))?;
    let resolved = SeqConfig {
        precision: PrecisionChoice::from(policy.precision),
        layout: policy.layout.into(),
        ..config.clone()
    };
    crate::config::save_resolved_config(&resolved, dir)?;
    Ok(policy)
}

/// The search: DARTS-style alternation through the strategy, or random search from scratch,
/// checkpointed every epoch (candidate) and resumable. Writes the genotype files and
/// `summary.json` into the run directory, also when stopped early (the genotype derived so
/// far).
pub fn search_run(mut run: SeqSearchRun<'_>) -> Result<SeqSearchSummary, TransformerError> {
    let started = Instant::now();
    let config = run.config;
    let device = setup(config)?;
    check_strategy(&config.search.strategy, config.network.mode)?;
    let policy = choose_compute(config, device, &run.run_dir.root, run.resume)?;
    let _compute = crate::agents::compute::enter(policy.compute());
    let task = config.task.generate()?;
    if !run.resume {
        run.sink
            .text("config", &crate::config::to_markdown(config)?, 0);
    }
    crate::report::record_command(&run.run_dir.root);
    let outcome = match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => {
            random_from_scratch(&mut run, &task, device, p.clone())?
        }
        _ => supernet_search(&mut run, &task, device)?,
    };
    let seq2seq = task.config.is_seq2seq();
    let (genotype_path, description) =
        save_genotype(&outcome.genotype, seq2seq, &run.run_dir.root)?;
    run.sink.text(
        "genotype",
        &format!("```\n{description}\n```"),
        outcome.iterations as i64,
    );
    let summary = SeqSearchSummary {
        genotype: outcome.genotype,
        genotype_path,
        description,
        val: outcome.val,
        iterations: outcome.iterations,
        epochs_done: outcome.epochs_done,
        interrupted: outcome.interrupted,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = run.run_dir.root.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(TransformerError::io(&path))?;
    // The report reads the event files: everything logged so far must be on disk.
    run.sink.flush();
    crate::report::write_report_or_warn(&run.run_dir.root);
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
    run: &mut SeqSearchRun<'_>,
    task: &SeqTask,
    device: Device,
) -> Result<Outcome, TransformerError> {
    let config = run.config;
    let sc = &config.search;
    let mut vs = nn::VarStore::new(device);
    let (net, mut arch) = build_supernet(&vs, config, task)?;
    // Departure from UNAS's official default (one architecture per example): the sequence
    // objective's loss is a token mean over the batch with no per-example losses, so UNAS
    // scores one architecture per minibatch here, as in RL.
    let mut strategy = sc
        .strategy
        .with_unas_per_minibatch()
        .build(&arch, config.seed)?;
    strategy.set_op_costs(&op_costs(&net, task.train.src.size()[1]))?;
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: sc.weights.lr,
            momentum: sc.weights.momentum,
            weight_decay: sc.weights.weight_decay,
        },
    );
    let mut state = SupernetState {
        epochs_done: 0,
        iteration: 0,
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        val: SeqMetrics::default(),
        health: Default::default(),
    };
    let health_config = &sc.health.resolved(50);
    health_config.validate().map_err(TransformerError::Config)?;
    // The fixed health batches: the first examples of each split, drawn from no random
    // stream, so the run is the same with search health on or off.
    let health_index = Tensor::arange(
        (sc.batch_size.min(task.train.len()).min(task.val.len())).max(1) as i64,
        (tch::Kind::Int64, Device::Cpu),
    );
    let health_batches = (
        task.train.batch(&health_index, device),
        task.val.batch(&health_index, device),
    );
    if run.resume {
        state = load_supernet(
            run.run_dir,
            SupernetParts {
                vs: &mut vs,
                arch: &mut arch,
                sgd: &mut sgd,
                strategy: strategy.as_mut(),
            },
        )?;
    }
    materialise_grads(&sgd.parameters());
    let mut epochs_here = 0;
    let mut interrupted = false;
    // A resumed search that had stopped early stays stopped.
    while state.epochs_done < sc.epochs && state.health.stopped.is_none() {
        if run.max_epochs.is_some_and(|m| epochs_here >= m) {
            interrupted = true;
            break;
        }
        let epoch = state.epochs_done;
        strategy.begin_epoch(epoch, sc.epochs);
        let lr = sc.weights.lr_at(epoch, sc.epochs);
        sgd.set_lr(lr);
        let sink = &mut *run.sink;
        for _ in 0..sc.iterations_per_epoch {
            let iteration = state.iteration;
            let train = task.train.sample(sc.batch_size, &mut state.rng, device);
            let valid = task.val.sample(sc.batch_size, &mut state.rng, device);
            // DARTS steps the alphas before the weights; GDAS after (as the vision loop does).
            let arch_first = !strategy.arch_step_follows_weight_step();
            if arch_first {
                let mut objective = SeqObjective {
                    net: &net,
                    sgd: &sgd,
                    train: &train,
                    search: &valid,
                };
                arch_step(strategy.as_mut(), &arch, &mut objective, sink, iteration)?;
            }
            let weights = strategy.op_weights(&arch, Phase::Weights)?;
            sgd.zero_grad();
            let loss = loss_for_strategy(&net, &train, Some(&weights))?;
            loss.backward();
            let grad_norm_sq = clip_grad_norm(
                &sgd.parameters(),
                sc.weights.grad_clip,
                NormArithmetic::HostF64,
            )
            .squared();
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
            if !arch_first {
                let mut objective = SeqObjective {
                    net: &net,
                    sgd: &sgd,
                    train: &train,
                    search: &valid,
                };
                arch_step(strategy.as_mut(), &arch, &mut objective, sink, iteration)?;
            }
            state.iteration += 1;
            if health_config.due(state.iteration) && state.health.stopped.is_none() {
                let mut objective = PlainLossObjective(SeqObjective {
                    net: &net,
                    sgd: &sgd,
                    train: &health_batches.0,
                    search: &health_batches.1,
                });
                let iteration = state.iteration;
                let stopped = state.health.measure(
                    health_config,
                    strategy.as_ref(),
                    &arch,
                    &mut objective,
                    sink,
                    iteration,
                    iteration as i64,
                )?;
                if stopped.is_some() {
                    break;
                }
            }
        }
        let step = state.iteration;
        let eval_weights = strategy.op_weights(&arch, Phase::Eval)?;
        state.val = evaluate(
            &net,
            &task.val,
            Some(&eval_weights),
            sc.eval_batch_size,
            device,
        )?;
        log_metrics(sink, "search/val", &state.val, step);
        sink.scalar("search/lr", lr, step as i64);
        for (tag, value) in strategy.scalars() {
            sink.scalar(&format!("search/{tag}"), value, step as i64);
        }
        log_alphas(sink, &arch, strategy.as_ref(), step as i64)?;
        let genotype = strategy.derive(&arch)?;
        let text = describe(&genotype, task.config.is_seq2seq())?;
        sink.text("genotype", &format!("```\n{text}\n```"), step as i64);
        sink.flush();
        state.epochs_done += 1;
        epochs_here += 1;
        save_supernet(
            run.run_dir,
            sc.checkpoint_keep,
            (&vs, &arch, &sgd, strategy.as_ref()),
            &state,
        )?;
        if state.health.stopped.is_some() {
            break;
        }
        if run.stop.load(Ordering::SeqCst) && state.epochs_done < sc.epochs {
            interrupted = true;
            break;
        }
    }
    state.health.write_stop(&run.run_dir.root)?;
    // RobustDARTS returns the architecture of the earlier window, derived then.
    let genotype = match &state.health.stopped {
        Some(stop) => stop.genotype.clone(),
        None => strategy.derive(&arch)?,
    };
    Ok(Outcome {
        genotype,
        val: state.val,
        iterations: state.iteration,
        epochs_done: state.epochs_done,
        interrupted,
    })
}

/// Gives every weight a zero gradient before the first step. `Sgd::step` skips a weight whose
/// gradient is undefined, and `zero_grad` zeroes a gradient but never undefines it; so with
/// sparse op weights (GDAS, sampled candidates) whether a weight that this step did not reach
/// still gets weight decay and momentum would depend on whether any earlier step reached it:
/// history that a resumed run does not have (`tests/transformer_resume.rs` caught it). With
/// every gradient defined from the start, every weight steps every iteration, as in the
/// PyTorch code of DARTS and GDAS once each op has been used, and a resumed run steps exactly
/// as the uninterrupted one.
fn materialise_grads(params: &[Tensor]) {
    tch::with_grad(|| {
        let terms: Vec<Tensor> = params
            .iter()
            .filter(|p| p.requires_grad())
            .map(|p| (p * 0.0).sum(tch::Kind::Double))
            .collect();
        if !terms.is_empty() {
            Tensor::stack(&terms, 0).sum(tch::Kind::Double).backward();
        }
    });
}

/// The iteration's alpha step, when the strategy wants one.
fn arch_step(
    strategy: &mut dyn crate::search::SearchStrategy,
    arch: &ArchParams,
    objective: &mut SeqObjective<'_>,
    sink: &mut dyn MetricsSink,
    iteration: u64,
) -> Result<(), TransformerError> {
    if strategy.wants_arch_step(iteration) {
        let stats = strategy.arch_step(arch, objective)?;
        sink.scalar("search/arch_loss", stats.loss, iteration as i64);
        sink.scalar("search/arch_grad_norm", stats.grad_norm, iteration as i64);
    }
    Ok(())
}

pub(super) fn log_metrics(sink: &mut dyn MetricsSink, prefix: &str, m: &SeqMetrics, step: u64) {
    sink.scalar(&format!("{prefix}_loss"), m.loss, step as i64);
    sink.scalar(
        &format!("{prefix}_token_accuracy"),
        m.token_accuracy,
        step as i64,
    );
    sink.scalar(&format!("{prefix}_exact_match"), m.exact_match, step as i64);
}
