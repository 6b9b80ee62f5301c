//! One memory / time measurement of the transformer supernet search iteration, plain,
//! reversible or checkpointed (Zhao et al. 2021); run each case in its own process
//! (scripts/bench_transformer.sh), with `MALLOC_MMAP_THRESHOLD_=4096`. Prints one JSON line.
//!
//!   cargo run --release --example bench_transformer -- --mode reversible --layers 12

use clap::Parser;
use rl_darts::transformer::bench::{run_case, BenchCase};
use rl_darts::transformer::net::Mode;
use rl_darts::transformer::tasks::TaskKind;

#[derive(Parser, Debug)]
struct Args {
    /// plain | reversible | checkpointed
    #[arg(long, default_value = "reversible")]
    mode: String,
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 64)]
    d_model: i64,
    #[arg(long, default_value_t = 2)]
    heads: i64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// sort (encoder only) | addition (encoder + decoder, `layers` each)
    #[arg(long, default_value = "sort")]
    task: String,
    /// Sort length, or digits per operand for addition.
    #[arg(long, default_value_t = 32)]
    length: usize,
    #[arg(long)]
    tie_layers: bool,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.mode.as_str() {
        "plain" => Mode::Plain,
        "reversible" => Mode::Reversible,
        "checkpointed" => Mode::Checkpointed,
        other => anyhow::bail!("--mode {other}: use plain, reversible or checkpointed"),
    };
    let task = match args.task.as_str() {
        "sort" => TaskKind::Sort,
        "addition" => TaskKind::Addition,
        other => anyhow::bail!("--task {other}: use sort or addition"),
    };
    let case = BenchCase {
        mode,
        layers: args.layers,
        d_model: args.d_model,
        heads: args.heads,
        batch: args.batch,
        task,
        length: args.length,
        tie_layers: args.tie_layers,
        iterations: args.iterations,
    };
    let result = run_case(&case)?;
    println!("{}", serde_json::json!({ "case": case, "result": result }));
    Ok(())
}
