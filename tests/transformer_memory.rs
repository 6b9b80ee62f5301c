//! Activation memory of the transformer supernet is flat in depth in reversible mode, grows
//! with depth in plain mode, and in between with per-layer activation checkpointing. Each measurement runs in its own child process (this test binary
//! re-run on the ignored `memory_child` test), with weight-tied layers so that parameters and
//! their gradients do not grow with depth, and glibc told to return freed tensors to the system.

use std::process::Command;

use rl_darts::transformer::bench::{run_case, BenchCase};
use rl_darts::transformer::net::Mode;
use rl_darts::transformer::tasks::TaskKind;

const CASE_ENV: &str = "RL_DARTS_MEMORY_CASE";

fn case(mode: Mode, layers: usize) -> BenchCase {
    BenchCase {
        mode,
        layers,
        d_model: 64,
        heads: 2,
        batch: 8,
        task: TaskKind::Sort,
        length: 24,
        tie_layers: true,
        iterations: 1,
    }
}

fn measure(case: &BenchCase) -> i64 {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["memory_child", "--exact", "--ignored", "--nocapture"])
        .env(CASE_ENV, serde_json::to_string(case).unwrap())
        .env("MALLOC_MMAP_THRESHOLD_", "4096")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("ACTIVATION_BYTES ").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no measurement in {stdout}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Run by [`memory_is_flat_in_depth_when_reversible`] in a child process.
#[test]
#[ignore = "a child process of memory_is_flat_in_depth_when_reversible"]
fn memory_child() {
    let Ok(json) = std::env::var(CASE_ENV) else {
        return;
    };
    let case: BenchCase = serde_json::from_str(&json).unwrap();
    let result = run_case(&case).unwrap();
    println!("ACTIVATION_BYTES {}", result.activation_bytes);
}

#[test]
fn memory_is_flat_in_depth_when_reversible() {
    let mb = |b: i64| b as f64 / (1 << 20) as f64;
    let rev2 = measure(&case(Mode::Reversible, 2));
    let rev24 = measure(&case(Mode::Reversible, 24));
    let plain2 = measure(&case(Mode::Plain, 2));
    let plain24 = measure(&case(Mode::Plain, 24));
    let ckpt2 = measure(&case(Mode::Checkpointed, 2));
    let ckpt24 = measure(&case(Mode::Checkpointed, 24));
    let report = format!(
        "reversible {:.1} -> {:.1} MB, plain {:.1} -> {:.1} MB, checkpointed {:.1} -> {:.1} MB \
         (2 -> 24 layers)",
        mb(rev2),
        mb(rev24),
        mb(plain2),
        mb(plain24),
        mb(ckpt2),
        mb(ckpt24)
    );
    eprintln!("{report}");
    assert!(rev2 > 0 && plain2 > 0 && ckpt2 > 0, "{report}");
    assert!(rev24 as f64 <= 1.15 * rev2 as f64, "{report}");
    assert!(plain24 as f64 >= 6.0 * plain2 as f64, "{report}");
    // Checkpointing keeps one hidden state per layer: it grows with depth, but far slower than
    // plain autograd, which keeps every op's activations.
    assert!(ckpt24 as f64 >= 1.3 * ckpt2 as f64, "{report}");
    assert!(ckpt24 as f64 <= plain24 as f64 / 3.0, "{report}");
}
