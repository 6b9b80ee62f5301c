//! `rl-darts envs list | bench | record`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rl_darts::envs::gym::GYM_ENVS;
use rl_darts::envs::procgen::{
    DistributionMode, ProcgenOptions, ProcgenVecEnv, ACTION_MEANINGS, GAMES,
};
use rl_darts::envs::{make_vec_env, VecEnv};
use rl_darts::media::{write_png, GifWriter};
use tch::Tensor;

#[derive(Subcommand, Debug)]
pub enum EnvsCommand {
    /// The games, their distribution modes, and the 15 actions.
    List,
    /// Env steps per second with uniformly random actions.
    Bench(BenchArgs),
    /// Play one env and write its frames (PNGs, GIF, frames.npy) and rewards.npy, firsts.npy.
    Record(RecordArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "coinrun")]
    env: String,
    #[arg(long, default_value_t = 64)]
    num_envs: usize,
    /// Batched steps to time (each steps every env once).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// procgen stepping threads.
    #[arg(long, default_value_t = 4)]
    threads: i32,
    #[arg(long, value_enum, default_value_t = DistributionMode::Easy)]
    distribution_mode: DistributionMode,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one machine-readable line (`steps_per_sec=...`) instead of prose.
    #[arg(long)]
    machine: bool,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[arg(long)]
    env: String,
    /// procgen's rand_seed (chooses the level sequence).
    #[arg(long, default_value_t = 0)]
    seed: i32,
    #[arg(long, default_value_t = 0)]
    num_levels: i32,
    #[arg(long, default_value_t = 0)]
    start_level: i32,
    #[arg(long, value_enum, default_value_t = DistributionMode::Easy)]
    distribution_mode: DistributionMode,
    /// A file with one action (0-14) per line.
    #[arg(long, conflicts_with_all = ["random"], required_unless_present = "random")]
    actions: Option<PathBuf>,
    /// Uniformly random actions (seeded by --seed) for --steps steps.
    #[arg(long, requires = "steps")]
    random: bool,
    #[arg(long)]
    steps: Option<usize>,
    /// Also render the 512x512 frames into the PNGs and the GIF (frames.npy stays 64x64).
    #[arg(long)]
    hires: bool,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: EnvsCommand) -> anyhow::Result<()> {
    match cmd {
        EnvsCommand::List => list(),
        EnvsCommand::Bench(args) => bench(args),
        EnvsCommand::Record(args) => record(args),
    }
}

fn list() -> anyhow::Result<()> {
    println!("Procgen games (procgen 0.10.7):");
    println!(
        "  {:<10} {:<40} {:>9} {:>9}",
        "game", "distribution modes", "timeout", "R easy"
    );
    for g in GAMES.iter() {
        let modes: Vec<&str> = DistributionMode::ALL
            .iter()
            .filter(|m| m.allowed_for(g))
            .map(|m| m.name())
            .collect();
        println!(
            "  {:<10} {:<40} {:>9} {:>4}-{:<4}",
            g.name,
            modes.join(", "),
            g.timeout,
            g.easy_range.0,
            g.easy_range.1
        );
    }
    println!("\nDistribution modes:");
    for m in DistributionMode::ALL {
        let games = m.games();
        let which = if games.len() == GAMES.len() {
            "all games".to_string()
        } else {
            games.join(", ")
        };
        println!("  {:<12} {which}", m.name());
    }
    println!("\nActions (all games):");
    for (i, a) in ACTION_MEANINGS.iter().enumerate() {
        println!("  {i:>2} {a}");
    }
    println!("\nClassic control (gym-rs): {}", GYM_ENVS.join(", "));
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let options = ProcgenOptions {
        num_threads: args.threads,
        distribution_mode: args.distribution_mode,
        rand_seed: Some(args.seed as i32),
        ..Default::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    // Actions are drawn before timing so that only stepping is measured.
    let warmup = (args.steps / 10).clamp(1, 200);
    let mut draws = |num_actions: i64| -> Vec<Vec<i64>> {
        (0..args.steps + warmup)
            .map(|_| {
                (0..args.num_envs)
                    .map(|_| rng.gen_range(0..num_actions))
                    .collect()
            })
            .collect()
    };
    // Procgen directly, to also report the time inside the C library; gym-rs via the factory.
    let (secs, library_secs) = if GYM_ENVS.contains(&args.env.as_str()) {
        let mut env = make_vec_env(&args.env, args.num_envs, args.seed, &options)?;
        let draws = draws(env.spec().num_actions);
        (time_steps(env.as_mut(), &draws, warmup)?, None)
    } else {
        let mut env = ProcgenVecEnv::new(&args.env, args.num_envs, options)?;
        let draws = draws(env.spec().num_actions);
        time_steps(&mut env, &draws[..warmup], 0)?;
        let before = env.library_time();
        let secs = time_steps(&mut env, &draws[warmup..], 0)?;
        (secs, Some((env.library_time() - before).as_secs_f64()))
    };
    let sps = (args.steps * args.num_envs) as f64 / secs;
    if args.machine {
        let lib = library_secs
            .map(|l| format!(" library_secs={l:.4}"))
            .unwrap_or_default();
        println!("steps_per_sec={sps:.1} secs={secs:.4}{lib}");
    } else {
        println!(
            "{}: {} envs x {} steps in {:.2}s = {:.0} env steps/s ({} threads)",
            args.env, args.num_envs, args.steps, secs, sps, args.threads
        );
        if let Some(lib) = library_secs {
            println!(
                "  inside libenv act+observe: {:.2}s ({:.1}% of the loop; the library alone would run {:.0} steps/s)",
                lib,
                100.0 * lib / secs,
                (args.steps * args.num_envs) as f64 / lib
            );
        }
    }
    Ok(())
}

/// Steps through `draws`; the first `warmup` are untimed. Returns the timed seconds.
fn time_steps(env: &mut dyn VecEnv, draws: &[Vec<i64>], warmup: usize) -> anyhow::Result<f64> {
    for actions in &draws[..warmup] {
        env.step(actions)?;
    }
    let start = Instant::now();
    for actions in &draws[warmup..] {
        env.step(actions)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn read_actions(path: &PathBuf) -> anyhow::Result<Vec<i64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading actions file {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let a: i64 = l.trim().parse().with_context(|| {
                format!(
                    "{}:{}: '{}' is not an integer action",
                    path.display(),
                    i + 1,
                    l.trim()
                )
            })?;
            if !(0..ACTION_MEANINGS.len() as i64).contains(&a) {
                bail!("{}:{}: action {a} is outside 0..=14", path.display(), i + 1);
            }
            Ok(a)
        })
        .collect()
}

fn record(args: RecordArgs) -> anyhow::Result<()> {
    let actions = match (&args.actions, args.steps) {
        (Some(path), _) => read_actions(path)?,
        (None, Some(steps)) => {
            let mut rng = ChaCha8Rng::seed_from_u64(args.seed as u64);
            (0..steps)
                .map(|_| rng.gen_range(0..ACTION_MEANINGS.len() as i64))
                .collect()
        }
        (None, None) => bail!("give --actions FILE or --random --steps N"),
    };
    let options = ProcgenOptions {
        num_levels: args.num_levels,
        start_level: args.start_level,
        distribution_mode: args.distribution_mode,
        rand_seed: Some(args.seed),
        render_human: args.hires,
        num_threads: 1,
        ..Default::default()
    };
    let mut env = ProcgenVecEnv::new(&args.env, 1, options)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let side = if args.hires { 512 } else { 64 };
    let mut gif = GifWriter::create(&args.out.join("episode.gif"), side, side, 15)?;

    // Frame t is the observation after t actions; frame 0 is the initial one (first = 1).
    let mut frames: Vec<Tensor> = Vec::with_capacity(actions.len() + 1);
    let mut rewards: Vec<f32> = Vec::with_capacity(actions.len() + 1);
    let mut firsts: Vec<u8> = Vec::with_capacity(actions.len() + 1);
    let mut save = |env: &ProcgenVecEnv, t: usize, reward: f32, first: u8| -> anyhow::Result<()> {
        let view = env.observe();
        frames.push(view.obs.get(0).copy());
        rewards.push(reward);
        firsts.push(first);
        let shown = if args.hires {
            env.render_frames().expect("render_human is on").get(0)
        } else {
            view.obs.get(0)
        };
        let rgb = Vec::<u8>::try_from(shown.flatten(0, -1))?;
        write_png(
            &args.out.join(format!("frame_{t:05}.png")),
            &rgb,
            side,
            side,
        )?;
        gif.add_frame(&rgb)?;
        Ok(())
    };
    let initial_first = env.observe().first[0];
    save(&env, 0, 0.0, initial_first)?;
    let mut episodes = 0;
    for (t, &a) in actions.iter().enumerate() {
        let step = env.step(&[a])?;
        let (reward, first) = (step.reward[0], step.first[0]);
        episodes += step.finished.len();
        save(&env, t + 1, reward, first)?;
    }
    drop(gif);
    Tensor::stack(&frames, 0).write_npy(args.out.join("frames.npy"))?;
    Tensor::from_slice(&rewards).write_npy(args.out.join("rewards.npy"))?;
    Tensor::from_slice(&firsts).write_npy(args.out.join("firsts.npy"))?;
    let total: f32 = rewards.iter().sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} frames to {} (episode.gif, frame_*.png, frames.npy [{},64,64,3] u8, rewards.npy, firsts.npy); \
         reward {total}, {episodes} episode(s) ended",
        frames.len(),
        args.out.display(),
        frames.len()
    )?;
    Ok(())
}
