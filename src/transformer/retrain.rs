//! Training derived transformers from scratch: `rl-darts train-arch` (a searched genotype, or
//! the standard transformer, optionally resized to a parameter count), and random search from
//! scratch, the baseline that trains every sampled architecture on its own instead of sharing
//! weights in a supernet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{nn, Device};

use super::genotype::arch_of;
use super::net::{SeqArch, SeqNet, SeqNetConfig, ENCODER_SPLITS};
use super::objective::loss_for_strategy;
use super::resume::{
    load_random, load_retrain, save_random, save_retrain, RandomState, RetrainState,
};
use super::search::{
    log_metrics, save_genotype, setup, Outcome, SeqConfig, SeqSearchRun, SeqTrainArchConfig,
};
use super::tasks::{evaluate, SeqMetrics, SeqTask};
use super::TransformerError;
use crate::agents::{clip_grad_norm, NormArithmetic};
use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, CellSpace, Genotype};
use crate::search::{Adam, RandomParams, RandomSearch};
use crate::train::run_dir::RunDir;

/// The libtorch seed of candidate `c`'s initial weights: a function of the run's seed and the
/// candidate's index only, so that a resumed random search initialises the candidates it has
/// left exactly as the uninterrupted search would (libtorch's generator state is not
/// checkpointed).
fn candidate_seed(seed: u64, c: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(c as u64 + 1)
}

/// Random search from scratch: architectures drawn uniformly (an op other than zero per
/// split), each trained by [`train_derived`] for `epochs_per_candidate` x
/// `train_arch.iterations_per_epoch` iterations, the best validation exact match kept (token
/// accuracy breaks ties). `num_candidates` of them, or with `search.random_budget_seconds`
/// as many as that wall time allows. A checkpoint after every candidate.
pub(super) fn random_from_scratch(
    run: &mut SeqSearchRun<'_>,
    task: &SeqTask,
    device: Device,
    params: RandomParams,
) -> Result<Outcome, TransformerError> {
    let config = run.config;
    let sc = &config.search;
    let arch = ArchParams::new(
        Device::Cpu,
        CellSpace::transformer(),
        task.config.is_seq2seq(),
        AlphaInit::default(),
    )?;
    let mut sampler = RandomSearch::new(&arch, params.clone(), config.seed)?;
    let mut state = RandomState {
        candidates_done: 0,
        iterations: 0,
        seconds: 0.0,
        best: None,
    };
    if run.resume {
        state = load_random(run.run_dir, &mut sampler)?;
    }
    let budget = sc.random_budget_seconds;
    let more = |s: &RandomState| match budget > 0.0 {
        true => s.seconds < budget,
        false => s.candidates_done < params.num_candidates,
    };
    let mut here = 0;
    let mut interrupted = false;
    while more(&state) {
        if run.max_epochs.is_some_and(|m| here >= m) {
            interrupted = true;
            break;
        }
        let started = Instant::now();
        let c = state.candidates_done;
        let genotype = sampler.sample_genotype();
        let mut tc = config.train_arch.clone();
        tc.epochs = params.epochs_per_candidate;
        let seed = candidate_seed(config.seed, c);
        let trained = train_derived(
            config,
            &tc,
            task,
            &genotype,
            device,
            seed,
            RetrainRun::default(),
        )?;
        state.iterations += (tc.epochs * tc.iterations_per_epoch) as u64;
        log_metrics(run.sink, "random/candidate_val", &trained.val, c as u64);
        let better = state.best.as_ref().is_none_or(|(_, b)| {
            (trained.val.exact_match, trained.val.token_accuracy)
                > (b.exact_match, b.token_accuracy)
        });
        if better {
            state.best = Some((genotype, trained.val));
        }
        state.candidates_done += 1;
        state.seconds += started.elapsed().as_secs_f64();
        here += 1;
        save_random(run.run_dir, sc.checkpoint_keep, &sampler, &state)?;
        if run.stop.load(std::sync::atomic::Ordering::SeqCst) && more(&state) {
            interrupted = true;
            break;
        }
    }
    let (genotype, val) = state.best.ok_or_else(|| {
        TransformerError::Config(
            "random search trained no candidate: search.strategy.params.num_candidates (or \
             search.random_budget_seconds) must allow at least one"
                .into(),
        )
    })?;
    Ok(Outcome {
        genotype,
        val,
        iterations: state.iterations,
        epochs_done: state.candidates_done,
        interrupted,
    })
}

/// What retraining a derived architecture gave.
#[derive(Debug, Clone, Serialize)]
pub struct TrainedArch {
    pub val: SeqMetrics,
    /// On the test split after the last epoch done (also when stopped early).
    pub test: SeqMetrics,
    pub parameters: i64,
    /// The width and FFN multiple trained (differ from `[network]` with
    /// `train_arch.target_parameters`).
    pub d_model: i64,
    pub ffn_mult: i64,
    /// Wall time of the epochs done, over every call of a resumed run.
    pub seconds: f64,
    pub epochs_done: usize,
    /// Stopped before the last epoch (Ctrl-C, SIGTERM or `max_epochs`); resume from the run
    /// directory's newest checkpoint.
    pub interrupted: bool,
}

/// Checkpoints of a retraining: one after every epoch, and exact resume from the newest.
pub struct RetrainCheckpoints<'a> {
    pub run_dir: &'a RunDir,
    /// Complete checkpoints kept.
    pub keep: usize,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    /// Checked after every epoch: when set, the call returns after that epoch's checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// Where a retraining reports: a metrics sink and checkpoints, each optional (random search
/// from scratch trains its candidates with neither).
#[derive(Default)]
pub struct RetrainRun<'a> {
    pub sink: Option<&'a mut dyn MetricsSink>,
    pub checkpoints: Option<RetrainCheckpoints<'a>>,
}

/// The network `arch` is trained with: `config.network` (encoder-only tasks drop the
/// decoder), resized to the parameter count nearest `target` when it is > 0.
fn sized_network(
    config: &SeqConfig,
    task: &SeqTask,
    arch: &SeqArch,
    target: i64,
) -> Result<SeqNetConfig, TransformerError> {
    let mut base = config.network.clone();
    let seq2seq = task.config.is_seq2seq();
    if !seq2seq {
        base.decoder_layers = 0;
    }
    if target <= 0 {
        return Ok(base);
    }
    let count = |network: &SeqNetConfig| -> Result<i64, TransformerError> {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = SeqNet::new(&vs.root(), network, task.src_vocab, task.tgt_vocab, arch)?;
        Ok(net.parameters().iter().map(|t| t.numel() as i64).sum())
    };
    // Every split (2 in the encoder, 3 in the decoder) a multiple of `heads`.
    let step = base.heads * if seq2seq { 6 } else { ENCODER_SPLITS as i64 };
    let mut best: Option<((i64, bool, i64), SeqNetConfig)> = None;
    for d in (1..=(4 * base.d_model / step).max(2)).map(|i| i * step) {
        for ffn_mult in 1..=8 {
            let candidate = SeqNetConfig {
                d_model: d,
                ffn_mult,
                ..base.clone()
            };
            // Nearest count first; then the preset's FFN multiple, then the nearest width.
            let key = (
                (count(&candidate)? - target).abs(),
                ffn_mult != base.ffn_mult,
                (d - base.d_model).abs(),
            );
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, candidate));
            }
        }
    }
    best.map(|(_, c)| c)
        .ok_or_else(|| TransformerError::Config("no width to size the network to".into()))
}

/// Trains the network `genotype` describes from scratch with Adam, its initial weights seeded
/// with `init_seed`, and reports validation and test metrics. Logs to `run.sink` and
/// checkpoints into `run.checkpoints` when given.
pub fn train_derived(
    config: &SeqConfig,
    tc: &SeqTrainArchConfig,
    task: &SeqTask,
    genotype: &Genotype,
    device: Device,
    init_seed: u64,
    run: RetrainRun<'_>,
) -> Result<TrainedArch, TransformerError> {
    let RetrainRun {
        mut sink,
        checkpoints,
    } = run;
    let arch = arch_of(genotype, task.config.is_seq2seq())?;
    // Sizing builds throwaway networks, which draw from libtorch's generator: seed after it.
    let network = sized_network(config, task, &arch, tc.target_parameters)?;
    tch::manual_seed(init_seed as i64);
    let mut vs = nn::VarStore::new(device);
    let net = SeqNet::new(
        &(vs.root() / "net"),
        &network,
        task.src_vocab,
        task.tgt_vocab,
        &arch,
    )?;
    let parameters: i64 = net.parameters().iter().map(|t| t.numel() as i64).sum();
    let mut adam = Adam::new(crate::search::optim::ordered_variables(&vs)?, tc.optimizer);
    let mut state = RetrainState {
        epochs_done: 0,
        step: 0,
        rng: ChaCha8Rng::seed_from_u64(init_seed.wrapping_add(1)),
        val: SeqMetrics::default(),
        seconds: 0.0,
    };
    if let Some(c) = checkpoints.as_ref().filter(|c| c.resume) {
        state = load_retrain(c.run_dir, &mut vs, &mut adam)?;
    }
    let eval_bs = config.search.eval_batch_size;
    let mut epochs_here = 0;
    let mut interrupted = false;
    while state.epochs_done < tc.epochs {
        if let Some(m) = checkpoints.as_ref().and_then(|c| c.max_epochs) {
            if epochs_here >= m {
                interrupted = true;
                break;
            }
        }
        let started = Instant::now();
        for _ in 0..tc.iterations_per_epoch {
            let step = state.step;
            let batch = task.train.sample(tc.batch_size, &mut state.rng, device);
            adam.zero_grad();
            let loss = loss_for_strategy(&net, &batch, None)?;
            loss.backward();
            if tc.grad_clip > 0.0 {
                clip_grad_norm(&adam.parameters(), tc.grad_clip, NormArithmetic::HostF64);
            }
            adam.step();
            if let Some(s) = sink.as_deref_mut() {
                s.scalar("train_arch/train_loss", loss.double_value(&[]), step as i64);
            }
            state.step += 1;
        }
        state.val = evaluate(&net, &task.val, None, eval_bs, device)?;
        if let Some(s) = sink.as_deref_mut() {
            log_metrics(s, "train_arch/val", &state.val, state.step);
            s.flush();
        }
        state.epochs_done += 1;
        epochs_here += 1;
        state.seconds += started.elapsed().as_secs_f64();
        if let Some(c) = &checkpoints {
            save_retrain(c.run_dir, c.keep, (&vs, &adam), &state)?;
            if c.stop.load(Ordering::SeqCst) && state.epochs_done < tc.epochs {
                interrupted = true;
                break;
            }
        }
    }
    let test = evaluate(&net, &task.test, None, eval_bs, device)?;
    if let Some(s) = sink {
        if !interrupted {
            log_metrics(s, "train_arch/test", &test, state.step);
        }
        s.flush();
    }
    Ok(TrainedArch {
        val: state.val,
        test,
        parameters,
        d_model: network.d_model,
        ffn_mult: network.ffn_mult,
        seconds: state.seconds,
        epochs_done: state.epochs_done,
        interrupted,
    })
}

/// `rl-darts train-arch` for a transformer preset without checkpoints: retrains `genotype`
/// and writes `summary.json` into `out`.
pub fn train_arch(
    config: &SeqConfig,
    genotype: &Genotype,
    out: &std::path::Path,
    sink: &mut dyn MetricsSink,
) -> Result<TrainedArch, TransformerError> {
    train_arch_in(config, genotype, out, sink, None)
}

/// One call of `rl-darts train-arch` for a transformer preset (fresh or `--resume`).
pub struct SeqTrainArchRun<'a> {
    pub config: &'a SeqConfig,
    pub genotype: &'a Genotype,
    /// Receives the genotype files, `checkpoints/` and `summary.json`; the caller writes
    /// `config.toml` into it.
    pub run_dir: &'a RunDir,
    pub resume: bool,
    pub sink: &'a mut dyn MetricsSink,
    /// Checked after every epoch: when set, the call returns after that epoch's checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop after this many epochs in this call (tests).
    pub max_epochs: Option<usize>,
}

/// [`train_arch`] with a checkpoint after every epoch (the newest `search.checkpoint_keep`
/// kept) and exact resume: weights, Adam's moments and step, the batch RNG and the counters
/// are restored, so a stopped and resumed retraining ends bit for bit where an uninterrupted
/// one ends (`tests/transformer_resume.rs`).
pub fn train_arch_run(run: SeqTrainArchRun<'_>) -> Result<TrainedArch, TransformerError> {
    let checkpoints = RetrainCheckpoints {
        run_dir: run.run_dir,
        keep: run.config.search.checkpoint_keep.max(1),
        resume: run.resume,
        stop: run.stop,
        max_epochs: run.max_epochs,
    };
    train_arch_in(
        run.config,
        run.genotype,
        &run.run_dir.root,
        run.sink,
        Some(checkpoints),
    )
}

fn train_arch_in(
    config: &SeqConfig,
    genotype: &Genotype,
    out: &std::path::Path,
    sink: &mut dyn MetricsSink,
    checkpoints: Option<RetrainCheckpoints<'_>>,
) -> Result<TrainedArch, TransformerError> {
    let device = setup(config)?;
    std::fs::create_dir_all(out).map_err(TransformerError::io(out))?;
    let policy = super::search::choose_compute(config, device, out, false)?;
    let _compute = crate::agents::compute::enter(policy.compute());
    let task = config.task.generate()?;
    if !checkpoints.as_ref().is_some_and(|c| c.resume) {
        sink.text("config", &crate::config::to_markdown(config)?, 0);
    }
    save_genotype(genotype, task.config.is_seq2seq(), out)?;
    let trained = train_derived(
        config,
        &config.train_arch,
        &task,
        genotype,
        device,
        config.seed,
        RetrainRun {
            sink: Some(sink),
            checkpoints,
        },
    )?;
    let path = out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&trained).unwrap_or_default(),
    )
    .map_err(TransformerError::io(&path))?;
    Ok(trained)
}
