//! Times one PPO minibatch update of the IMPALA-CNN agent (the Procgen paper's 15-action
//! agent on 64x64 frames) in a given precision and layout, through the library's own
//! `ppo_update` (forward, the clipped loss, backward, gradient-norm clip, Adam step), and
//! prints one JSON line. scripts/bench_precision.sh runs it once per setting and repetition.
//!
//! The frames are random u8 NHWC frames made before timing, handed over as the rollout
//! storage holds them, so the observation permute and the cast to float are timed as in
//! training. Peak memory is the process's VmHWM from /proc/self/status. The glibc heap policy
//! is the PPO loop's (`device::keep_freed_memory_for_reuse`).
//!
//! cargo run --release --example bench_precision -- --precision bf16 --layout channels_last

use std::time::Instant;

use clap::Parser;
use rand::SeedableRng;
use rl_darts::agents::{
    ppo_update, ActorCritic, Adam, AdamConfig, Batch, FixedArch, ImpalaCnn, ImpalaConfig,
    NoHeartbeat, PpoConfig, UpdateDriver,
};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    /// fp32 | bf16 (the `precision` key).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// nchw | channels_last (the `layout` key).
    #[arg(long, default_value = "nchw")]
    layout: String,
    /// Frames per minibatch (Procgen paper: 16384 / 8 = 2048).
    #[arg(long, default_value_t = 2048)]
    minibatch: i64,
    /// Timed minibatch updates, after one untimed.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    rl_darts::device::keep_freed_memory_for_reuse();
    let setting: rl_darts::precision::ComputePolicy = serde_json::from_value(serde_json::json!({
        "precision": args.precision, "layout": args.layout, "reason": "--precision/--layout"
    }))?;
    let _compute = rl_darts::agents::compute::enter(setting.compute());
    tch::manual_seed(0);
    let device = Device::Cpu;
    let vs = nn::VarStore::new(device);
    let encoder = ImpalaCnn::new(
        vs.root() / "encoder",
        &[3, 64, 64],
        &ImpalaConfig::default(),
    )?;
    let policy = ActorCritic::new(vs.root() / "policy", Box::new(encoder), 15);
    let config = PpoConfig {
        num_envs: 1,
        num_steps: args.minibatch as usize,
        num_minibatches: 1,
        update_epochs: 1,
        ..PpoConfig::default()
    };
    let mut adam = Adam::new(
        &vs,
        AdamConfig {
            lr: config.learning_rate,
            eps: config.adam_eps,
            ..AdamConfig::default()
        },
    );
    let n = args.minibatch;
    let f32s = (Kind::Float, device);
    let batch = Batch {
        obs: Tensor::randint(256, [n, 64, 64, 3], (Kind::Uint8, device)),
        actions: Tensor::randint(15, [n], (Kind::Int64, device)),
        logprobs: Tensor::full([n], -(15f64.ln()), f32s),
        values: Tensor::zeros([n], f32s),
        advantages: Tensor::randn([n], f32s),
        returns: Tensor::randn([n], f32s),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut step = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let driver = UpdateDriver {
            arch: &mut FixedArch,
            micro_batch: None,
            progress: &mut NoHeartbeat,
            data_parallel: None,
            loss_scale: None,
        };
        ppo_update(&policy, &mut adam, driver, &batch, &config, &mut rng)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    let seconds: Vec<f64> = (0..args.steps).map(|_| step()).collect::<Result<_, _>>()?;
    let out = serde_json::json!({
        "impl": "rl-darts",
        "precision": args.precision,
        "layout": args.layout,
        "minibatch": n,
        "threads": tch::get_num_threads(),
        "seconds": seconds,
        "peak_rss_mib": proc_status_mib("VmHWM:"),
    });
    println!("{out}");
    Ok(())
}
