//! Times search iterations on the DARTS CIFAR supernet and prints one JSON line: DARTS (Liu et
//! al., ICLR 2019, `train_search.py`) first and second order for scripts/bench_darts_search.sh,
//! and any other registered strategy (`--strategy snas`, ...) for scripts/bench_strategies.sh.
//!
//! One iteration is what `rl-darts search` does per batch, through the same library code: the
//! strategy's alpha step on a search batch (first order: grad_alpha L_val; second order: the
//! virtual SGD step, grad at w', and the finite-difference Hessian-vector product), then the
//! weight step on a train batch (`supervised::weight_step`: forward, backward, global-norm
//! clip 5, SGD with momentum 0.9 and weight decay 3e-4). The batches are fixed random tensors
//! made before timing, so data loading and augmentation are not timed (the NNI side does the
//! same). Peak memory is the process's VmHWM (max resident set) from /proc/self/status.
//!
//! Other strategies run the iteration exactly as the supervised search loop does: an alpha step
//! when `wants_arch_step` says so (DARTS-PRIME's schedule may skip it), the weight step with the
//! strategy's op weights for the weight phase (GDAS: one sampled op per edge; SNAS: a
//! Gumbel-softmax sample), then `after_weight_step` (where single-level strategies such as SNAS
//! take their alpha step). The per-op costs SNAS and UNAS price are set first, as the loop does.
//!
//! cargo run --release --example bench_darts_search -- --order second --iters 10 --threads 2
//! cargo run --release --example bench_darts_search -- --strategy gdas --iters 10 --threads 2

use std::time::Instant;

use clap::Parser;
use rl_darts::nas::{AlphaInit, ArchParams, DartsSearchConfig, DartsSearchNet, OpSet, Supernet};
use rl_darts::search::{
    DartsOrder, DartsParams, Phase, Sgd, SgdConfig, StrategyConfig, WeightStepReport,
};
use rl_darts::train::supervised::{weight_step, VisionObjective};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    /// Search strategy, by its config name (darts, idarts, gdas, snas, unas, darts_prime, joint),
    /// with its default parameters; `--order` applies to darts.
    #[arg(long, default_value = "darts")]
    strategy: String,
    /// `first` or `second` (finite-difference Hessian-vector product, as the paper).
    #[arg(long, default_value = "first")]
    order: String,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first (allocator and libtorch warm-up).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Initial channels of the supernet (DARTS: 16).
    #[arg(long, default_value_t = 16)]
    c: i64,
    /// Cells (DARTS: 8).
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Input height = width (CIFAR: 32).
    #[arg(long, default_value_t = 32)]
    image: i64,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// fp32 | bf16: the precision of the convolutions and matmuls (agents::compute), as the
    /// `precision` key sets it for `rl-darts search`.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// channels_last (what the search network uses when no layout is set) | nchw.
    #[arg(long, default_value = "channels_last")]
    layout: String,
}

/// A `VmHWM` / `VmRSS` line of /proc/self/status, in MiB (None off Linux).
fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // glibc's default allocator policy, as `rl-darts search` runs: the kept heap of
    // device::keep_freed_memory_for_reuse is for fixed-encoder PPO only (its docs say why).
    let order = match args.order.as_str() {
        "first" => DartsOrder::First,
        "second" => DartsOrder::Second,
        other => anyhow::bail!("--order must be first or second, got {other}"),
    };
    tch::set_num_threads(args.threads);
    tch::manual_seed(args.seed);
    let device = Device::Cpu;
    let setting: rl_darts::precision::ComputePolicy = serde_json::from_value(serde_json::json!({
        "precision": args.precision, "layout": args.layout, "reason": "--precision/--layout"
    }))?;
    let _compute = rl_darts::agents::compute::enter(setting.compute());

    let vs = nn::VarStore::new(device);
    let config = DartsSearchConfig {
        c: args.c,
        layers: args.layers,
        num_classes: 10,
        num_nodes: 4,
        stem_multiplier: 3,
        in_channels: 3,
        op_set: OpSet::Darts,
        partial_channels: Default::default(),
    };
    let net = DartsSearchNet::new(vs.root() / "net", &config)?;
    let arch = ArchParams::new(device, net.space(), true, AlphaInit::default())?;
    let strategy_config = match args.strategy.as_str() {
        "darts" => StrategyConfig::Darts(DartsParams {
            order,
            ..DartsParams::default()
        }),
        // Random search trains sampled cells from scratch; it has no per-iteration cost to time.
        "random" => anyhow::bail!("random search has no search iteration to time"),
        other => StrategyConfig::from_name(other)?,
    };
    let mut strategy = strategy_config.build(&arch, args.seed as u64)?;
    strategy.set_op_costs(&net.op_costs([3, args.image, args.image]))?;
    let mut sgd = Sgd::new(
        vs.variables(),
        SgdConfig {
            lr: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
        },
    );
    let parameters = rl_darts::nas::count_parameters(&vs, |_| true);
    let shape = [args.batch, 3, args.image, args.image];
    let opts = (Kind::Float, device);
    let batch = || {
        (
            Tensor::randn(shape, opts),
            Tensor::randint(10, [args.batch], (Kind::Int64, device)),
        )
    };
    let (train, search) = (batch(), batch());
    let rss_before_mib = proc_status_mib("VmRSS:");

    let mut seconds = Vec::with_capacity(args.iters);
    let mut timed_arch_steps = 0usize;
    for i in 0..args.warmup + args.iters {
        let started = Instant::now();
        let mut arch_steps = 0;
        if strategy.wants_arch_step(i as u64) {
            let mut objective = VisionObjective {
                net: &net,
                vs: &vs,
                sgd: &sgd,
                train: (train.0.shallow_clone(), train.1.shallow_clone()),
                search: (search.0.shallow_clone(), search.1.shallow_clone()),
            };
            strategy.arch_step(&arch, &mut objective)?;
            arch_steps += 1;
        }
        let weights = strategy.op_weights(&arch, Phase::Weights)?;
        let step = weight_step(&net, &weights, &mut sgd, &train.0, &train.1, 5.0);
        anyhow::ensure!(step.loss.is_finite(), "loss became {}", step.loss);
        let report = WeightStepReport {
            iteration: i as u64,
            loss: step.loss,
            grad_norm_sq: step.grad_norm_sq,
            lr: 0.025,
        };
        // Single-level strategies (SNAS, joint) step alpha on the weight step's own backward.
        drop(step);
        if strategy.after_weight_step(&arch, &report)?.is_some() {
            arch_steps += 1;
        }
        if i >= args.warmup {
            seconds.push(started.elapsed().as_secs_f64());
            timed_arch_steps += arch_steps;
        }
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        f64::NAN
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let mean = seconds.iter().sum::<f64>() / seconds.len().max(1) as f64;
    let out = serde_json::json!({
        "impl": "rl-darts",
        "strategy": args.strategy,
        "order": args.order,
        "precision": args.precision,
        "layout": args.layout,
        "arch_steps_per_iter": timed_arch_steps as f64 / args.iters.max(1) as f64,
        "threads": args.threads,
        "batch": args.batch,
        "c": args.c,
        "layers": args.layers,
        "image": args.image,
        "parameters": parameters,
        "warmup": args.warmup,
        "iters": args.iters,
        "sec_per_iter_median": median,
        "sec_per_iter_mean": mean,
        "seconds": seconds,
        "rss_before_iters_mib": rss_before_mib,
        "peak_rss_mib": proc_status_mib("VmHWM:"),
    });
    println!("{out}");
    Ok(())
}
