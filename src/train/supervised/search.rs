//! The DARTS search loop (`train_search.py`): per iteration an alpha step on a search batch
//! through the strategy and an SGD weight step on the train batch (in the order the strategy
//! asks), per epoch the supernet's validation accuracy, the alphas and a checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Tensor};

use super::config::{SearchLoopConfig, SupervisedConfig};
use super::objective::{correct, cross_entropy, VisionObjective};
use super::random::run_random_search_from_scratch;
use super::search_checkpoint::{SearchLoopState, SearchSession};
use super::{batch, check_shapes, io, setup, SupervisedError};
use crate::agents::{clip_grad_norm, NormArithmetic};
use crate::data::{epoch_batches, Dataset};
use crate::logging::MetricsSink;
use crate::nas::{ArchParams, CellWeights, Genotype, Supernet};
use crate::search::{ArchStepStats, Phase, SearchStrategy, Sgd, StrategyConfig, WeightStepReport};
use crate::train::rl::Progress;
use crate::train::run_dir::RunDir;

/// One call of [`search`].
pub struct SearchRun<'a> {
    pub config: &'a SupervisedConfig,
    pub run_dir: &'a RunDir,
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// How a search ended.
#[derive(Debug, Clone, Serialize)]
pub struct SearchSummary {
    pub genotype: Genotype,
    pub genotype_path: PathBuf,
    pub epochs_done: usize,
    /// Validation (search split) accuracy of the supernet (or best candidate) at the end.
    pub val_accuracy: f64,
    pub interrupted: bool,
    pub seconds: f64,
}

pub const GENOTYPE_JSON: &str = "genotype.json";
/// Weight steps between search-health measurements when `search.health.every` is unset.
pub const VISION_HEALTH_EVERY: u64 = 100;
pub const GENOTYPE_TXT: &str = "genotype.txt";

/// What a search loop returns to [`search`]: the genotype, epochs (or candidates) done, the
/// final validation accuracy and whether it was interrupted.
pub(super) type Outcome = (Genotype, usize, f64, bool);

/// Runs the search `config.search.strategy` describes: the DARTS-style bilevel loop, or for
/// `random` the from-scratch baseline. Writes `genotype.json` and `genotype.txt` (DARTS text).
pub fn search(mut run: SearchRun<'_>) -> Result<SearchSummary, SupervisedError> {
    let config = run.config;
    let started = Instant::now();
    let device = setup(config)?;
    let (train_full, _test) = config.data.load()?;
    check_shapes(
        "network",
        config.network.in_channels,
        config.network.num_classes,
        &train_full,
    )?;
    config
        .search
        .health
        .resolved(VISION_HEALTH_EVERY)
        .validate()
        .map_err(SupervisedError::invalid)?;
    let (w_train, w_search) = train_full.split_head(config.search.train_portion)?;
    let (w_train, w_search) = (w_train.to_device(device), w_search.to_device(device));
    if !run.resume {
        run.sink
            .text("config", &crate::config::to_markdown(config)?, 0);
    }
    crate::report::record_command(&run.run_dir.root);
    let summary = match &config.search.strategy {
        StrategyConfig::Random(p) if !p.weight_sharing => {
            // Candidates are built and trained one after another: no network to probe yet.
            let root = run.run_dir.root.clone();
            let policy = super::choose_compute(config, device, Some(&root), run.resume, None)?;
            let _compute = crate::agents::compute::enter(policy.compute());
            run_random_search_from_scratch(&mut run, device, &w_train, &w_search)?
        }
        _ => bilevel_search(&mut run, device, &w_train, &w_search)?,
    };
    let (genotype, epochs_done, val_accuracy, interrupted) = summary;
    let genotype_path = run.run_dir.root.join(GENOTYPE_JSON);
    genotype.save_json(&genotype_path)?;
    let txt = run.run_dir.root.join(GENOTYPE_TXT);
    std::fs::write(&txt, genotype.to_darts_string() + "\n").map_err(io(&txt))?;
    let summary = SearchSummary {
        genotype,
        genotype_path,
        epochs_done,
        val_accuracy,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = run.run_dir.root.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    )
    .map_err(io(&path))?;
    // The report reads the event files: everything logged so far must be on disk.
    run.sink.flush();
    crate::report::write_report_or_warn(&run.run_dir.root);
    Ok(summary)
}

/// What [`weight_step`] did.
pub struct WeightStep {
    /// `[N, num_classes]`, with graph.
    pub logits: Tensor,
    pub loss: f64,
    /// Squared global gradient norm before clipping.
    pub grad_norm_sq: f64,
}

/// The weight half of a search iteration (`train_search.py` `train`): cross-entropy on the
/// train batch with the given op weights, backward, global-norm clipping, SGD step. Public so
/// that the search benchmark (examples/bench_darts_search.rs) times exactly this code.
pub fn weight_step(
    net: &dyn Supernet,
    weights: &CellWeights,
    sgd: &mut Sgd,
    x: &Tensor,
    y: &Tensor,
    grad_clip: f64,
) -> WeightStep {
    sgd.zero_grad();
    let logits = net.forward_with(x, weights, true);
    let loss = cross_entropy(&logits, y);
    loss.backward();
    let grad_norm_sq =
        clip_grad_norm(&sgd.parameters(), grad_clip, NormArithmetic::HostF64).squared();
    sgd.step();
    WeightStep {
        logits,
        loss: loss.double_value(&[]),
        grad_norm_sq,
    }
}

/// Sums over one epoch's iterations, for its log line and scalars.
#[derive(Default)]
struct EpochTally {
    /// Training loss summed over examples.
    loss_sum: f64,
    hits: i64,
    seen: usize,
    arch: ArchStepStats,
    arch_steps: u32,
    /// The search health's early stop fired during the epoch.
    stopped_early: bool,
}

impl EpochTally {
    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.hits as f64 / self.seen.max(1) as f64
    }

    fn add_arch_step(&mut self, s: ArchStepStats) {
        self.arch.loss += s.loss;
        self.arch.grad_norm += s.grad_norm;
        self.arch_steps += 1;
    }
}

/// The DARTS loop (`train_search.py`): per epoch, [`search_epoch`], the supernet's validation
/// loss and accuracy, the logs and, when due, a checkpoint.
fn bilevel_search(
    run: &mut SearchRun<'_>,
    device: Device,
    w_train: &Dataset,
    w_search: &Dataset,
) -> Result<Outcome, SupervisedError> {
    let config = run.config;
    let epochs = config.search.epochs;
    let mut s = SearchSession::new(config, device, w_train)?;
    let policy = {
        let n = (config.search.batch_size as i64).min(w_train.images.size()[0]);
        let x = w_train.images.narrow(0, 0, n);
        let y = w_train.labels.narrow(0, 0, n);
        let (net, arch) = (&s.net, &s.arch);
        let mut pass = || -> Result<(), String> {
            let logits = net.forward_with(&x, &arch.softmax_weights(1.0), false);
            cross_entropy(&logits, &y)
                .f_backward()
                .map_err(|e| e.to_string())
        };
        super::choose_compute(
            config,
            device,
            Some(&run.run_dir.root),
            run.resume,
            Some(&mut pass),
        )?
    };
    // The probe's gradients are nobody's.
    s.sgd.zero_grad();
    for alpha in crate::search::alphas(&s.arch) {
        let mut g = alpha.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let _compute = crate::agents::compute::enter(policy.compute());
    if run.resume {
        s.resume(run.run_dir)?;
    }
    let mut last_save = Instant::now();
    let mut epochs_here = 0;
    let mut interrupted = false;
    let mut val_accuracy = f64::NAN;
    // A resumed search that had stopped early stays stopped.
    while s.state.epochs_done < epochs && s.health.stopped.is_none() {
        if run.max_epochs.is_some_and(|m| epochs_here >= m) {
            break;
        }
        let lr = config.search.weights.lr_at(s.state.epochs_done, epochs);
        let epoch_start = Instant::now();
        let tally = search_epoch(
            &mut s,
            &config.search,
            lr,
            w_train,
            w_search,
            run.progress,
            &mut *run.sink,
        )?;
        let (val_loss, val_acc) = evaluate_supernet(
            &s.net,
            &s.arch,
            s.strategy.as_mut(),
            w_search,
            config.search.batch_size,
        )?;
        val_accuracy = val_acc;
        s.state.epochs_done += 1;
        epochs_here += 1;
        let step = s.state.epochs_done as i64;
        // Speed and memory for the report's "Speed and memory" section: training images (the
        // weight steps' batches) per second of the epoch, validation included, and the
        // process's peak resident memory so far.
        let images_per_sec = tally.seen as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
        if let Some(peak) = crate::device::host_memory::peak_rss() {
            run.sink.scalar(
                "perf/peak_rss_gib",
                peak as f64 / f64::from(1u32 << 30),
                step,
            );
        }
        run.sink.scalars(
            &[
                ("search/images_per_sec", images_per_sec),
                ("search/train_loss", tally.loss()),
                ("search/train_accuracy", tally.accuracy()),
                ("search/val_loss", val_loss),
                ("search/val_accuracy", val_acc),
                ("search/lr", lr),
            ],
            step,
        );
        log_search_state(&mut *run.sink, &s, &tally, step)?;

        let stop = run.stop.load(Ordering::SeqCst) || tally.stopped_early;
        let done = s.state.epochs_done as u64;
        if stop || config.checkpoint.due(done, last_save.elapsed()) || done == epochs as u64 {
            s.save(run.run_dir, config.checkpoint.keep)?;
            last_save = Instant::now();
        }
        if stop {
            interrupted = !tally.stopped_early;
            break;
        }
    }
    s.health.write_stop(&run.run_dir.root)?;
    // RobustDARTS returns the architecture of the earlier window, derived then.
    let genotype = match &s.health.stopped {
        Some(stop) => stop.genotype.clone(),
        None => s.strategy.derive(&s.arch)?,
    };
    run.progress.finish(&format!(
        "search: {} epochs, val accuracy {val_accuracy:.4}",
        s.state.epochs_done
    ));
    Ok((genotype, s.state.epochs_done, val_accuracy, interrupted))
}

/// One epoch of the bilevel loop at weight learning rate `lr`: per train batch, the alpha step
/// (before or after the weight step, as the strategy asks) and the weight step.
fn search_epoch(
    s: &mut SearchSession,
    sc: &SearchLoopConfig,
    lr: f64,
    w_train: &Dataset,
    w_search: &Dataset,
    progress: &mut dyn Progress,
    sink: &mut dyn MetricsSink,
) -> Result<EpochTally, SupervisedError> {
    let epoch = s.state.epochs_done;
    let epochs = sc.epochs;
    let total = epochs as u64 * w_train.len().div_ceil(sc.batch_size.max(1)) as u64;
    s.sgd.set_lr(lr);
    s.strategy.begin_epoch(epoch, epochs);
    let batches = epoch_batches(w_train.len(), sc.batch_size, true, &mut s.state.rng);
    let mut tally = EpochTally::default();
    for index in &batches {
        let (x, y) = batch(w_train, index, &sc.augment, &mut s.state.rng);
        let arch_first = !s.strategy.arch_step_follows_weight_step();
        if arch_first {
            arch_step_of_iteration(s, (&x, &y), (w_search, sc), &mut tally)?;
        }
        // Per example for strategies that draw one architecture per example (UNAS).
        let examples = index.len() as i64;
        let weights = s
            .strategy
            .op_weights_for_batch(&s.arch, Phase::Weights, examples)?;
        let step = weight_step(&s.net, &weights, &mut s.sgd, &x, &y, sc.weights.grad_clip);
        if !step.loss.is_finite() {
            return Err(SupervisedError::NonFinite {
                epoch,
                what: "training loss".into(),
                value: step.loss,
            });
        }
        let report = WeightStepReport {
            iteration: s.state.iteration,
            loss: step.loss,
            grad_norm_sq: step.grad_norm_sq,
            lr,
        };
        if let Some(stats) = s.strategy.after_weight_step(&s.arch, &report)? {
            tally.add_arch_step(stats);
        }
        if !arch_first {
            arch_step_of_iteration(s, (&x, &y), (w_search, sc), &mut tally)?;
        }
        tally.loss_sum += step.loss * index.len() as f64;
        tally.hits += correct(&step.logits, &y);
        tally.seen += index.len();
        s.state.iteration += 1;
        if s.health_config.due(s.state.iteration) && s.health.stopped.is_none() {
            let stopped = measure_health(s, sc, w_train, w_search, sink)?;
            if stopped {
                tally.stopped_early = true;
                break;
            }
        }
        progress.update(
            s.state.iteration,
            total,
            &format!(
                "epoch {}/{epochs} | loss {:.3} | acc {:.3}",
                epoch + 1,
                tally.loss(),
                tally.accuracy()
            ),
        );
    }
    Ok(tally)
}

/// The epoch's alpha-step means, the strategy's own scalars, the alphas and the derived
/// genotype.
fn log_search_state(
    sink: &mut dyn MetricsSink,
    s: &SearchSession,
    tally: &EpochTally,
    step: i64,
) -> Result<(), SupervisedError> {
    if tally.arch_steps > 0 {
        let n = tally.arch_steps as f64;
        sink.scalar("search/arch_loss", tally.arch.loss / n, step);
        sink.scalar("search/arch_grad_norm", tally.arch.grad_norm / n, step);
    }
    for (name, value) in s.strategy.scalars() {
        sink.scalar(&format!("strategy/{name}"), value, step);
    }
    log_alphas(sink, &s.arch, s.strategy.as_ref(), step)?;
    let genotype = s.strategy.derive(&s.arch)?;
    sink.text(
        "genotype",
        &format!("`{}`", genotype.to_darts_string()),
        step,
    );
    sink.flush();
    Ok(())
}

/// The iteration's alpha step when the strategy wants one: a search batch (augmented like the
/// train batch: `train_search.py` builds both queues from the one dataset with
/// `train_transform`) and the strategy's `arch_step` on the two batches; its statistics are
/// added to `tally`.
fn arch_step_of_iteration(
    s: &mut SearchSession,
    (x, y): (&Tensor, &Tensor),
    (w_search, sc): (&Dataset, &SearchLoopConfig),
    tally: &mut EpochTally,
) -> Result<(), SupervisedError> {
    if !s.strategy.wants_arch_step(s.state.iteration) {
        return Ok(());
    }
    let search_index = next_search_batch(&mut s.state, w_search.len(), sc.batch_size);
    let search = batch(w_search, &search_index, &sc.augment, &mut s.state.rng);
    let mut objective = VisionObjective {
        net: &s.net,
        vs: &s.vs,
        sgd: &s.sgd,
        train: (x.shallow_clone(), y.shallow_clone()),
        search,
    };
    tally.add_arch_step(s.strategy.arch_step(&s.arch, &mut objective)?);
    Ok(())
}

/// Search health on a fixed batch (the first `batch_size` images of each split, not
/// augmented: drawn from no random stream, so the run is the same with health on or off).
/// Returns whether the early stop fired.
fn measure_health(
    s: &mut SearchSession,
    sc: &SearchLoopConfig,
    w_train: &Dataset,
    w_search: &Dataset,
    sink: &mut dyn MetricsSink,
) -> Result<bool, SupervisedError> {
    use crate::train::health::head;
    let n = sc.batch_size.max(1) as i64;
    let mut objective = VisionObjective {
        net: &s.net,
        vs: &s.vs,
        sgd: &s.sgd,
        train: (head(&w_train.images, n), head(&w_train.labels, n)),
        search: (head(&w_search.images, n), head(&w_search.labels, n)),
    };
    let iteration = s.state.iteration;
    let stopped = s.health.measure(
        &s.health_config,
        s.strategy.as_ref(),
        &s.arch,
        &mut objective,
        sink,
        iteration,
        iteration as i64,
    )?;
    Ok(stopped.is_some())
}

/// The next search batch, cycling through a reshuffled search split.
fn next_search_batch(state: &mut SearchLoopState, len: usize, batch_size: usize) -> Vec<i64> {
    let bs = batch_size.min(len).max(1);
    if state.search_order.len() != len || state.search_cursor + bs > len {
        state.search_order = epoch_batches(len, len, true, &mut state.rng).concat();
        state.search_cursor = 0;
    }
    let out = state.search_order[state.search_cursor..state.search_cursor + bs].to_vec();
    state.search_cursor += bs;
    out
}

/// Mean loss and accuracy of the supernet with the strategy's evaluation weights.
fn evaluate_supernet(
    net: &dyn Supernet,
    arch: &ArchParams,
    strategy: &mut dyn SearchStrategy,
    data: &Dataset,
    batch_size: usize,
) -> Result<(f64, f64), SupervisedError> {
    tch::no_grad(|| {
        let (mut loss, mut hits) = (0.0, 0i64);
        for start in (0..data.len()).step_by(batch_size.max(1)) {
            let n = batch_size.min(data.len() - start) as i64;
            let x = data.images.narrow(0, start as i64, n);
            let y = data.labels.narrow(0, start as i64, n);
            let weights = strategy.op_weights(arch, Phase::Eval)?;
            let logits = net.forward_with(&x, &weights, false);
            loss += cross_entropy(&logits, &y).double_value(&[]) * n as f64;
            hits += correct(&logits, &y);
        }
        let len = data.len().max(1) as f64;
        Ok((loss / len, hits as f64 / len))
    })
}

/// Per edge and op the strategy's expected op weight (`softmax(alpha)` for most strategies),
/// logged as every search loop logs an architecture ([`crate::logging::arch`]: scalars
/// `arch/{cell}/{edge}/{op}`, `arch/{cell}/entropy`, a labelled heatmap per cell type).
pub fn log_alphas(
    sink: &mut dyn MetricsSink,
    arch: &ArchParams,
    strategy: &dyn SearchStrategy,
    step: i64,
) -> Result<(), SupervisedError> {
    let cells: Vec<(&str, Vec<Vec<f64>>)> = ["normal", "reduce"]
        .into_iter()
        .zip(strategy.expected_op_weights(arch)?)
        .collect();
    crate::logging::arch::log_architecture(sink, arch.space(), &cells, step);
    crate::logging::arch::log_selectors(sink, &strategy.selector_tables()?, step);
    Ok(())
}
