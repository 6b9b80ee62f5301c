//! Times the forward and the backward of one PPO-update micro-batch through the RL encoders
//! that the search-overhead benchmark compares (issue 18): the IMPALA-CNN baseline, the
//! RL-DARTS supernet with every op (joint first order), with partial channels (PC-DARTS, K = 4,
//! edge normalisation) and with one sampled op per edge (GDAS's hard one-hot), at the quick
//! preset's size or at paper size. Prints one JSON line per encoder with the median forward,
//! backward and alpha-softmax times over `--steps` timed passes (after two untimed ones).
//!
//! Run it under `perf record` with a large `--steps` to see which kernels the time goes to
//! (the process does nothing else, unlike a training run, whose start-up loads the game
//! assets):
//!
//!     cargo run --example profile_search -- --size paper --variant pc4 --steps 30
//!
//! The loss is the sum of the features times a fixed random probe, so backward reaches every
//! weight and architecture parameter as the PPO loss would; the heads are left out (they are
//! the same for every encoder).

use std::time::Instant;

use clap::Parser;
use rl_darts::agents::compute::{self, Compute, Layout, Precision};
use rl_darts::agents::{Encoder, ImpalaCnn, ImpalaConfig};
use rl_darts::nas::network::RlDartsConfig;
use rl_darts::nas::ops::to_channels_last;
use rl_darts::nas::{
    CellWeights, EdgeBetas, OpWeights, PartialChannels, RlDartsSupernet, Supernet,
};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    /// quick ([4, 8, 8], 1 normal cell per stage, embedding 32) or paper ([16, 32, 32], 2, 256).
    #[arg(long, default_value = "paper")]
    size: String,
    /// Comma-separated: baseline, joint, pc4, gdas.
    #[arg(long, default_value = "baseline,joint,pc4,gdas")]
    variant: String,
    /// Frames per pass (the benchmark's micro-batch).
    #[arg(long, default_value_t = 128)]
    batch: i64,
    /// nchw | channels_last (what a debug-build run's `layout = auto` resolves to).
    #[arg(long, default_value = "channels_last")]
    layout: String,
    /// Timed passes per encoder.
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

/// The encoder's features for the current architecture parameters.
type Forward = Box<dyn Fn(&[Tensor]) -> Tensor>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(1);
    rl_darts::device::keep_freed_memory_for_reuse();
    let layout = match args.layout.as_str() {
        "nchw" => Layout::Nchw,
        "channels_last" => Layout::ChannelsLast,
        other => anyhow::bail!("--layout nchw | channels_last, got {other}"),
    };
    let _compute = compute::enter(Compute {
        precision: Precision::Fp32,
        layout: Some(layout),
    });
    let (channels, cells, embedding) = match args.size.as_str() {
        "quick" => (vec![4, 8, 8], 1, 32),
        "paper" => (vec![16, 32, 32], 2, 256),
        other => anyhow::bail!("--size quick | paper, got {other}"),
    };
    let f32s = (Kind::Float, Device::Cpu);
    for variant in args.variant.split(',') {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let obs = Tensor::rand([args.batch, 3, 64, 64], f32s);
        let obs = match layout {
            Layout::ChannelsLast => to_channels_last(&obs),
            Layout::Nchw => obs,
        };
        // (encoder forward, alphas to differentiate) per variant.
        let mut alphas: Vec<Tensor> = Vec::new();
        let forward: Forward = match variant {
            "baseline" => {
                let config = ImpalaConfig {
                    channels: channels.clone(),
                    embedding,
                    ..ImpalaConfig::default()
                };
                let enc = ImpalaCnn::new(vs.root() / "encoder", &[3, 64, 64], &config)?;
                let obs = obs.shallow_clone();
                Box::new(move |_| enc.features(&obs, &()))
            }
            "joint" | "pc4" | "gdas" => {
                let k = if variant == "pc4" { 4 } else { 1 };
                let config = RlDartsConfig {
                    channels: channels.clone(),
                    normal_cells_per_stage: cells,
                    embedding,
                    partial_channels: PartialChannels(k),
                    ..RlDartsConfig::default()
                };
                let mut net = RlDartsSupernet::new(vs.root() / "encoder", &config, &[3, 64, 64])?;
                let space = net.space();
                let (e, o) = (space.num_edges() as i64, space.num_ops() as i64);
                for _ in 0..2 {
                    alphas.push((Tensor::randn([e, o], f32s) * 1e-3).set_requires_grad(true));
                }
                if k > 1 {
                    let betas: Vec<Tensor> = (0..2)
                        .map(|_| (Tensor::randn([e], f32s) * 1e-3).set_requires_grad(true))
                        .collect();
                    net.set_edge_betas(EdgeBetas {
                        space,
                        normal: betas[0].shallow_clone(),
                        reduce: Some(betas[1].shallow_clone()),
                    })?;
                    alphas.extend(betas);
                }
                // GDAS: one op per edge, drawn once (seeded), a straight-through one-hot.
                let sample: Option<Vec<Vec<usize>>> = (variant == "gdas").then(|| {
                    (0..2)
                        .map(|_| {
                            let idx = Tensor::randint(o, [e], (Kind::Int64, Device::Cpu));
                            Vec::<i64>::try_from(idx)
                                .expect("int64 indices")
                                .into_iter()
                                .map(|i| i as usize)
                                .collect()
                        })
                        .collect()
                });
                let obs = obs.shallow_clone();
                Box::new(move |alphas: &[Tensor]| {
                    let w = |a: &Tensor, cell: usize| {
                        let p = a.softmax(-1, Kind::Float);
                        match &sample {
                            None => OpWeights::dense(p),
                            Some(s) => {
                                let hard = Tensor::zeros_like(&p);
                                for (edge, &op) in s[cell].iter().enumerate() {
                                    let _ = hard.get(edge as i64).get(op as i64).fill_(1.0);
                                }
                                OpWeights::one_hot(&hard - p.detach() + &p, &s[cell])
                                    .expect("valid sample")
                            }
                        }
                    };
                    let weights = CellWeights {
                        normal: w(&alphas[0], 0),
                        reduce: Some(w(&alphas[1], 1)),
                    };
                    net.features(&obs, &weights)
                })
            }
            other => anyhow::bail!("unknown variant {other}"),
        };
        let probe = Tensor::randn([args.batch, embedding], f32s);
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for step in 0..args.steps + 2 {
            let start = Instant::now();
            let features = forward(&alphas);
            let loss = (&features * &probe).sum(Kind::Float);
            let t_fwd = start.elapsed().as_secs_f64();
            let start = Instant::now();
            loss.backward();
            let t_bwd = start.elapsed().as_secs_f64();
            for v in vs.trainable_variables().iter().chain(&alphas) {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            if step >= 2 {
                fwd.push(t_fwd);
                bwd.push(t_bwd);
            }
        }
        let (f, b) = (median(fwd), median(bwd));
        println!(
            "{}",
            serde_json::json!({
                "size": args.size, "variant": variant, "layout": args.layout, "batch": args.batch,
                "forward_ms": (f * 1e3 * 10.0).round() / 10.0,
                "backward_ms": (b * 1e3 * 10.0).round() / 10.0,
                "total_ms": ((f + b) * 1e3 * 10.0).round() / 10.0,
            })
        );
    }
    Ok(())
}
