//! Retraining a genotype from scratch (DARTS `train.py`): `train-arch` with checkpoints and
//! exact resume, and the same loop without them for the random-search candidates.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::config::{SupervisedConfig, TrainArchConfig};
use super::micro::accumulate;
use super::objective::{correct, cross_entropy};
use super::search::GENOTYPE_JSON;
use super::{
    batch, check_shapes, checkpoint_error, io, load_weights, read_state, setup, write_state,
    SupervisedError, SGD_FILE, WEIGHTS_FILE,
};
use crate::agents::{clip_grad_norm, NormArithmetic};
use crate::data::{epoch_batches, Dataset};
use crate::logging::MetricsSink;
use crate::nas::{DartsEvalNet, Genotype};
use crate::search::Sgd;
use crate::train::checkpoint::CheckpointConfig;
use crate::train::rl::memory::MemoryConfig;
use crate::train::rl::Progress;
use crate::train::run_dir::RunDir;

/// How a retraining ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainArchSummary {
    pub genotype: String,
    /// Epochs trained so far (all of `train_arch.epochs` unless interrupted).
    pub epochs: usize,
    pub parameters: i64,
    pub train_accuracy: f64,
    /// Accuracy on the held-out test set.
    pub test_accuracy: f64,
    pub seconds: f64,
    /// Stopped early (Ctrl-C or `max_epochs`); a checkpoint holds the state to resume from.
    pub interrupted: bool,
}

/// The summary `train_arch_run` writes into its run directory.
pub const TRAIN_ARCH_SUMMARY: &str = "train_arch_summary.json";

const RETRAIN_STATE_FILE: &str = "retrain.json";

/// Trains `genotype` from scratch with `config.train_arch` on the training set and reports
/// the test accuracy (DARTS `train.py`), without checkpoints. Writes `weights.safetensors` and
/// `train_arch_summary.json` into `out_dir` when given. [`train_arch_run`] is the same with
/// checkpoints and resume.
pub fn train_arch(
    config: &SupervisedConfig,
    genotype: &Genotype,
    out_dir: Option<&Path>,
    sink: &mut dyn MetricsSink,
    progress: &mut dyn Progress,
) -> Result<TrainArchSummary, SupervisedError> {
    train_arch_impl(config, genotype, out_dir, sink, progress, None)
}

/// One call of [`train_arch_run`].
pub struct TrainArchRun<'a> {
    pub config: &'a SupervisedConfig,
    pub genotype: &'a Genotype,
    /// Receives `genotype.json`, `checkpoints/`, the final `weights.safetensors` and the
    /// summary. The caller writes `config.toml` into it (as for [`search`](super::search)).
    pub run_dir: &'a RunDir,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    pub progress: &'a mut dyn Progress,
    /// Checked after every epoch: when set, a checkpoint is written and the run returns.
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// [`train_arch`] with checkpoints as `config.checkpoint` says (`every` in epochs, plus
/// `every_minutes`, and on stop) and exact resume: weights, BatchNorm statistics, SGD
/// momentum, the loop's RNG (shuffling, augmentation, drop-path seeds) and the epoch counter
/// are restored, so an interrupted and resumed run computes the same numbers as an
/// uninterrupted one.
pub fn train_arch_run(run: TrainArchRun<'_>) -> Result<TrainArchSummary, SupervisedError> {
    let root = run.run_dir.root.clone();
    if !run.resume {
        let path = root.join(GENOTYPE_JSON);
        run.genotype.save_json(&path)?;
    }
    let checkpoints = Checkpointing {
        run_dir: run.run_dir,
        resume: run.resume,
        cadence: run.config.checkpoint.clone(),
        last_save: Instant::now(),
        stop: run.stop,
        max_epochs: run.max_epochs,
        config: run.config,
    };
    train_arch_impl(
        run.config,
        run.genotype,
        Some(&root),
        run.sink,
        run.progress,
        Some(checkpoints),
    )
}

fn train_arch_impl(
    config: &SupervisedConfig,
    genotype: &Genotype,
    out_dir: Option<&Path>,
    sink: &mut dyn MetricsSink,
    progress: &mut dyn Progress,
    checkpoints: Option<Checkpointing<'_>>,
) -> Result<TrainArchSummary, SupervisedError> {
    let started = Instant::now();
    let device = setup(config)?;
    let (train, test) = config.data.load()?;
    let (train, test) = (train.to_device(device), test.to_device(device));
    let ta = &config.train_arch;
    check_shapes(
        "train_arch.network",
        ta.network.in_channels,
        ta.network.num_classes,
        &train,
    )?;
    if !checkpoints.as_ref().is_some_and(|c| c.resume) {
        sink.text("genotype", &format!("`{genotype}`"), 0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut result = retrain(
        Retrain {
            ta,
            genotype,
            device,
            train: &train,
            test: &test,
            memory: &config.memory,
            progress,
            sink: Some(sink),
            out_dir,
            checkpoints,
        },
        &mut rng,
    )?;
    result.seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = out_dir {
        let path = dir.join(TRAIN_ARCH_SUMMARY);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&result).unwrap_or_default(),
        )
        .map_err(io(&path))?;
    }
    Ok(result)
}

/// Checkpoint settings of a retraining run.
struct Checkpointing<'a> {
    run_dir: &'a RunDir,
    resume: bool,
    /// `every` counts epochs.
    cadence: CheckpointConfig,
    /// The last save, or the start of this call.
    last_save: Instant,
    stop: &'a AtomicBool,
    max_epochs: Option<usize>,
    /// Its `precision` and `layout` keys are resolved and recorded in `run_dir`.
    config: &'a SupervisedConfig,
}

/// Retraining loop state beyond the weights and SGD buffers, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetrainState {
    epochs_done: usize,
    /// Minibatches done (progress bar).
    step: u64,
    rng: ChaCha8Rng,
    train_accuracy: f64,
}

/// One retraining: the network, its data and where results go.
struct Retrain<'a> {
    ta: &'a TrainArchConfig,
    genotype: &'a Genotype,
    device: Device,
    train: &'a Dataset,
    /// Test set (train-arch) or search split (random search's candidate scoring).
    test: &'a Dataset,
    /// How a batch fits the machine (micro-batches, see [`super::micro`]).
    memory: &'a MemoryConfig,
    progress: &'a mut dyn Progress,
    /// Per-epoch scalars when given.
    sink: Option<&'a mut dyn MetricsSink>,
    /// Final weights go here when given.
    out_dir: Option<&'a Path>,
    checkpoints: Option<Checkpointing<'a>>,
}

/// Trains a random-search candidate: [`retrain`] without logs, weights or checkpoints, on
/// `(train, test)`.
pub(super) fn train_genotype(
    ta: &TrainArchConfig,
    memory: &MemoryConfig,
    genotype: &Genotype,
    device: Device,
    (train, test): (&Dataset, &Dataset),
    rng: &mut ChaCha8Rng,
    progress: &mut dyn Progress,
) -> Result<TrainArchSummary, SupervisedError> {
    retrain(
        Retrain {
            ta,
            genotype,
            device,
            train,
            test,
            memory,
            progress,
            sink: None,
            out_dir: None,
            checkpoints: None,
        },
        rng,
    )
}

/// The network being retrained, its optimizer and the loop state.
struct Retraining {
    vs: nn::VarStore,
    net: DartsEvalNet,
    sgd: Sgd,
    state: RetrainState,
    /// Examples per forward/backward pass when a batch is split ([`super::micro`]).
    micro_batch: Option<usize>,
}

/// Sums over one retraining epoch.
#[derive(Default)]
struct RetrainTally {
    loss_sum: f64,
    hits: i64,
    seen: usize,
}

/// DARTS `train.py`: SGD with cosine lr per epoch, drop-path ramped linearly, auxiliary loss,
/// gradient clipping. Draws shuffling and augmentation from `rng` (left where the run ended).
fn retrain(r: Retrain<'_>, rng: &mut ChaCha8Rng) -> Result<TrainArchSummary, SupervisedError> {
    let Retrain {
        ta,
        genotype,
        device,
        train,
        test,
        memory,
        progress,
        mut sink,
        out_dir,
        mut checkpoints,
    } = r;
    let mut vs = nn::VarStore::new(device);
    let net = DartsEvalNet::new(vs.root() / "net", &ta.network, genotype)?;
    let mut sgd = Sgd::new(vs.variables(), ta.weights.sgd());
    // A train-arch run chooses its precision and layout here, with the network built; a
    // random-search candidate runs in the search's.
    let policy = match checkpoints.as_ref() {
        Some(ck) => {
            let n = (ta.batch_size as i64).min(train.images.size()[0]);
            let x = train.images.narrow(0, 0, n);
            let y = train.labels.narrow(0, 0, n);
            let mut pass = || -> Result<(), String> {
                let (logits, _aux) = net.forward_t(&x, false);
                super::cross_entropy(&logits, &y)
                    .f_backward()
                    .map_err(|e| e.to_string())
            };
            let policy = super::choose_compute(
                ck.config,
                device,
                Some(&ck.run_dir.root),
                ck.resume,
                Some(&mut pass),
            )?;
            sgd.zero_grad();
            Some(policy)
        }
        None => None,
    };
    let _compute = policy.map(|p| crate::agents::compute::enter(p.compute()));
    let parameters = crate::nas::count_parameters(&vs, |name| !name.contains("auxiliary"));
    let mut state = RetrainState {
        epochs_done: 0,
        step: 0,
        rng: rng.clone(),
        train_accuracy: 0.0,
    };
    if let Some(ck) = checkpoints.as_ref().filter(|c| c.resume) {
        state = resume_retrain(ck.run_dir, &mut vs, &mut sgd)?;
    }
    // The planner's probe runs the loss of train.py's step (auxiliary head included) on the
    // first examples; the micro-batch divides the batch size, so only a short last batch of an
    // epoch can have a shorter last micro-batch (its share then weighs it right).
    let micro_batch = {
        let probe_batch = ta.batch_size.min(train.len());
        let index: Vec<i64> = (0..probe_batch as i64).collect();
        let (x, y) = batch(train, &index, &ta.augment, &mut state.rng.clone());
        let note = super::micro::BN_NOTE;
        super::micro::plan_micro_batch(
            "train-arch step",
            note,
            ta.batch_size,
            memory,
            &vs,
            &mut |n| retrain_loss(&net, &x.narrow(0, 0, n), &y.narrow(0, 0, n), ta).0,
        )?
    };
    let mut r = Retraining {
        vs,
        net,
        sgd,
        state,
        micro_batch,
    };
    let mut epochs_here = 0;
    let mut interrupted = false;
    while r.state.epochs_done < ta.epochs {
        let tally = retrain_epoch(&mut r, ta, train, progress)?;
        epochs_here += 1;
        if let Some(sink) = sink.as_deref_mut() {
            let test_acc = accuracy(&r.net, test, ta.batch_size);
            sink.scalars(
                &[
                    (
                        "train_arch/train_loss",
                        tally.loss_sum / tally.seen.max(1) as f64,
                    ),
                    ("train_arch/train_accuracy", r.state.train_accuracy),
                    ("train_arch/test_accuracy", test_acc),
                    ("train_arch/lr", r.sgd.config.lr),
                ],
                r.state.epochs_done as i64,
            );
            sink.flush();
        }
        if let Some(ck) = checkpoints.as_mut() {
            let done = r.state.epochs_done == ta.epochs;
            let stop = !done
                && (ck.stop.load(Ordering::SeqCst)
                    || ck.max_epochs.is_some_and(|m| epochs_here >= m));
            let due = ck
                .cadence
                .due(r.state.epochs_done as u64, ck.last_save.elapsed());
            if stop || done || due {
                save_retrain_checkpoint(ck, &r)?;
                ck.last_save = Instant::now();
            }
            if stop {
                interrupted = true;
                break;
            }
        }
    }
    *rng = r.state.rng.clone();
    let test_accuracy = accuracy(&r.net, test, ta.batch_size);
    if let Some(dir) = out_dir.filter(|_| !interrupted) {
        r.vs.save(dir.join(WEIGHTS_FILE))?;
    }
    progress.finish(&format!(
        "trained {} of {} epochs: test accuracy {test_accuracy:.4}",
        r.state.epochs_done, ta.epochs
    ));
    Ok(TrainArchSummary {
        genotype: genotype.to_darts_string(),
        epochs: r.state.epochs_done,
        parameters,
        train_accuracy: r.state.train_accuracy,
        test_accuracy,
        seconds: 0.0,
        interrupted,
    })
}

/// The weights, SGD momentum and loop state of the newest checkpoint of `run_dir`.
fn resume_retrain(
    run_dir: &RunDir,
    vs: &mut nn::VarStore,
    sgd: &mut Sgd,
) -> Result<RetrainState, SupervisedError> {
    let dir = run_dir.latest_checkpoint()?.ok_or_else(|| {
        SupervisedError::invalid(format!(
            "{} has no complete checkpoint to resume from",
            run_dir.root.display()
        ))
    })?;
    load_weights(vs, &dir.join(WEIGHTS_FILE))?;
    sgd.load(&dir.join(SGD_FILE))?;
    read_state(&dir.join(RETRAIN_STATE_FILE))
}

/// `train.py`'s training loss on `(x, y)` (cross-entropy, plus the auxiliary head's weighted
/// by `auxiliary_weight`) and the logits.
fn retrain_loss(
    net: &DartsEvalNet,
    x: &Tensor,
    y: &Tensor,
    ta: &TrainArchConfig,
) -> (Tensor, Tensor) {
    let (logits, aux) = net.forward_t(x, true);
    let mut loss = cross_entropy(&logits, y);
    if let Some(aux) = aux {
        loss += cross_entropy(&aux, y) * ta.auxiliary_weight;
    }
    (loss, logits)
}

/// One epoch of `train.py`'s `train`: cosine lr, drop-path probability ramped with the epoch,
/// then per minibatch the loss (plus the auxiliary head's), backward, clipping and SGD.
fn retrain_epoch(
    r: &mut Retraining,
    ta: &TrainArchConfig,
    train: &Dataset,
    progress: &mut dyn Progress,
) -> Result<RetrainTally, SupervisedError> {
    let epoch = r.state.epochs_done;
    let total = (ta.epochs * train.len().div_ceil(ta.batch_size.max(1))) as u64;
    r.sgd.set_lr(ta.weights.lr_at(epoch, ta.epochs));
    // DARTS ramps drop-path linearly from 0 over training.
    r.net
        .set_drop_path_prob(ta.network.drop_path_prob * epoch as f64 / ta.epochs as f64);
    // Drop-path masks come from libtorch's global generator, whose state tch cannot read
    // or write; reseeding it from the loop's (checkpointed) RNG at each epoch makes a
    // resumed run draw the same masks. The official code lets one stream run instead.
    tch::manual_seed(r.state.rng.gen_range(0..i64::MAX));
    let mut tally = RetrainTally::default();
    for index in epoch_batches(train.len(), ta.batch_size, true, &mut r.state.rng) {
        let (x, y) = batch(train, &index, &ta.augment, &mut r.state.rng);
        r.sgd.zero_grad();
        let n = index.len() as i64;
        let (value, logits) = accumulate(n, r.micro_batch, |start, len| {
            retrain_loss(
                &r.net,
                &x.narrow(0, start, len),
                &y.narrow(0, start, len),
                ta,
            )
        });
        clip_grad_norm(
            &r.sgd.parameters(),
            ta.weights.grad_clip,
            NormArithmetic::HostF64,
        );
        r.sgd.step();
        if !value.is_finite() {
            return Err(SupervisedError::NonFinite {
                epoch,
                what: "training loss".into(),
                value,
            });
        }
        tally.loss_sum += value * index.len() as f64;
        tally.hits += correct(&logits, &y);
        tally.seen += index.len();
        r.state.step += 1;
        progress.update(
            r.state.step,
            total,
            &format!(
                "epoch {}/{} | loss {:.3} | acc {:.3}",
                epoch + 1,
                ta.epochs,
                tally.loss_sum / tally.seen as f64,
                tally.hits as f64 / tally.seen as f64
            ),
        );
    }
    r.state.train_accuracy = tally.hits as f64 / tally.seen.max(1) as f64;
    r.state.epochs_done += 1;
    Ok(tally)
}

fn save_retrain_checkpoint(ck: &Checkpointing<'_>, r: &Retraining) -> Result<(), SupervisedError> {
    ck.run_dir
        .save_checkpoint(r.state.epochs_done as u64, ck.cadence.keep, |dir| {
            (|| -> Result<(), SupervisedError> {
                r.vs.save(dir.join(WEIGHTS_FILE))?;
                r.sgd.save(&dir.join(SGD_FILE))?;
                write_state(&dir.join(RETRAIN_STATE_FILE), &r.state)
            })()
            .map_err(checkpoint_error(dir))
        })?;
    Ok(())
}

fn accuracy(net: &DartsEvalNet, data: &Dataset, batch_size: usize) -> f64 {
    tch::no_grad(|| {
        let mut hits = 0i64;
        for start in (0..data.len()).step_by(batch_size.max(1)) {
            let n = batch_size.min(data.len() - start) as i64;
            let x = data.images.narrow(0, start as i64, n);
            let (logits, _) = net.forward_t(&x, false);
            hits += correct(&logits, &data.labels.narrow(0, start as i64, n));
        }
        hits as f64 / data.len().max(1) as f64
    })
}
