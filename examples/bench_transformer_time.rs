//! Time per search iteration, reversible against plain, in one process with alternating
//! repetitions (robust to a shared machine's load; `rl_darts::transformer::bench_time`).
//! Prints one JSON line.
//!
//!   cargo run --release --example bench_transformer_time -- --layers 12 --repetitions 9

use clap::Parser;
use rl_darts::transformer::bench_time::{time_case, TimeCase};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 64)]
    d_model: i64,
    #[arg(long, default_value_t = 2)]
    heads: i64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Sort length.
    #[arg(long, default_value_t = 32)]
    length: usize,
    /// Alternating repetitions per mode (plain, reversible, plain, ...).
    #[arg(long, default_value_t = 9)]
    repetitions: usize,
    /// Search iterations per repetition.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let case = TimeCase {
        layers: a.layers,
        d_model: a.d_model,
        heads: a.heads,
        batch: a.batch,
        length: a.length,
        repetitions: a.repetitions,
        iterations: a.iterations,
    };
    let result = time_case(&case)?;
    println!("{}", serde_json::json!({ "case": case, "result": result }));
    Ok(())
}
