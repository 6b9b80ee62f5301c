//! Training derived transformers from scratch: `rl-darts train-arch` (a searched genotype, or
//! the standard transformer, optionally resized to a parameter count), and random search from
//! scratch, the baseline that trains every sampled architecture on its own instead of sharing
//! weights in a supernet.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{nn, Device};

use super::genotype::arch_of;
use super::net::{SeqArch, SeqNet, SeqNetConfig, ENCODER_SPLITS};
use super::objective::loss_for_strategy;
use super::resume::{load_random, save_random, RandomState};
use super::search::{
    log_metrics, save_genotype, setup, Outcome, SeqConfig, SeqSearchRun, SeqTrainArchConfig,
};
use super::tasks::{evaluate, SeqMetrics, SeqTask};
use super::TransformerError;
use crate::logging::MetricsSink;
use crate::nas::{AlphaInit, ArchParams, CellSpace, Genotype};
use crate::search::{Adam, RandomParams, RandomSearch};
use crate::train::supervised::clip_grad_norm;

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
        let trained = train_derived(config, &tc, task, &genotype, device, seed, None)?;
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
    pub test: SeqMetrics,
    pub parameters: i64,
    /// The width and FFN multiple trained (differ from `[network]` with
    /// `train_arch.target_parameters`).
    pub d_model: i64,
    pub ffn_mult: i64,
    pub seconds: f64,
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
/// with `init_seed`, and reports validation and test metrics. Logs to `sink` when given.
pub fn train_derived(
    config: &SeqConfig,
    tc: &SeqTrainArchConfig,
    task: &SeqTask,
    genotype: &Genotype,
    device: Device,
    init_seed: u64,
    mut sink: Option<&mut dyn MetricsSink>,
) -> Result<TrainedArch, TransformerError> {
    let started = Instant::now();
    let arch = arch_of(genotype, task.config.is_seq2seq())?;
    // Sizing builds throwaway networks, which draw from libtorch's generator: seed after it.
    let network = sized_network(config, task, &arch, tc.target_parameters)?;
    tch::manual_seed(init_seed as i64);
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
    let mut rng = ChaCha8Rng::seed_from_u64(init_seed.wrapping_add(1));
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
        d_model: network.d_model,
        ffn_mult: network.ffn_mult,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `rl-darts train-arch` for a transformer preset: retrains `genotype` and writes
/// `summary.json` into `out`.
pub fn train_arch(
    config: &SeqConfig,
    genotype: &Genotype,
    out: &std::path::Path,
    sink: &mut dyn MetricsSink,
) -> Result<TrainedArch, TransformerError> {
    let device = setup(config)?;
    std::fs::create_dir_all(out).map_err(TransformerError::io(out))?;
    let policy = super::search::choose_compute(config, device, out, false)?;
    let _compute = crate::agents::compute::enter(policy.compute());
    let task = config.task.generate()?;
    sink.text("config", &crate::config::to_markdown(config)?, 0);
    save_genotype(genotype, task.config.is_seq2seq(), out)?;
    let trained = train_derived(
        config,
        &config.train_arch,
        &task,
        genotype,
        device,
        config.seed,
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
