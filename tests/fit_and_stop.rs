//! The main job on the machine it is given: a run under a memory cap splits its PPO minibatches
//! into micro-batches and stays under the cap (measured on the child process's peak resident
//! size), and Ctrl-C or SIGTERM stops a run within seconds, at the next env step or minibatch,
//! keeping its last checkpoint, from which `--resume` continues.
//!
//! Each measurement runs the real binary as a child process (libtorch's allocations are only
//! visible as the process's resident size; address-space limits do not suit it). This file
//! holds the only tests that spawn children, so `RUSAGE_CHILDREN` is theirs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rl_darts::train::rl::{MemoryPlan, MEMORY_PLAN_FILE};

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rl-darts"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A small RL-DARTS search on CoinRun whose one minibatch per update is 512 frames.
fn search_args(run_dir: &Path, total_steps: u64, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--env",
        "coinrun",
        "--encoder",
        "rl_darts",
        "--device",
        "cpu",
        "--quiet",
        "--total-steps",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(total_steps.to_string());
    args.push("--run-dir".into());
    args.push(run_dir.display().to_string());
    for set in [
        "encoder.params.supernet.channels=[4, 8, 8]",
        "encoder.params.supernet.normal_cells_per_stage=1",
        "encoder.params.supernet.embedding=32",
        "ppo.num_envs=8",
        "ppo.num_steps=64",
        "ppo.num_minibatches=1",
        "ppo.update_epochs=1",
        "procgen.num_threads=1",
        "torch_threads=1",
        "checkpoint.every=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().cloned())
    {
        args.push("--set".into());
        args.push(set);
    }
    args
}

fn plan(run_dir: &Path) -> MemoryPlan {
    let text = std::fs::read_to_string(run_dir.join(MEMORY_PLAN_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs the binary with `args`, stdout and stderr into files of `dir`; returns its exit
/// success, its stderr, and its peak resident size as the kernel accounted it (wait4).
fn run_measured(args: &[String], dir: &Path) -> (bool, String, f64) {
    let err_path = dir.join("stderr.txt");
    // Waited for by wait4 below (for its resource usage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = cli()
        .args(args)
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let (status, usage) = wait_with_usage(child.id());
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    (status, stderr, usage.ru_maxrss as f64 * 1024.0) // Linux reports KiB
}

fn wait_with_usage(pid: u32) -> (bool, libc::rusage) {
    // SAFETY: wait4 on our own child's pid, writing into locals we own.
    unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        let got = libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage);
        assert_eq!(got, pid as libc::pid_t);
        (
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            usage,
        )
    }
}

#[test]
fn a_run_under_a_memory_cap_splits_its_minibatches_and_stays_under_the_cap() {
    let base = tempfile::tempdir().unwrap();
    // Unconstrained: the plan keeps the minibatch whole on this machine and says why.
    let free = base.path().join("free");
    std::fs::create_dir_all(base.path().join("logs_free")).unwrap();
    let (ok, stderr, free_peak) = run_measured(
        &search_args(&free, 512, &[]),
        &base.path().join("logs_free"),
    );
    assert!(ok, "{stderr}");
    let unconstrained = plan(&free);
    assert_eq!(unconstrained.micro_batch, 512, "{unconstrained:?}");
    assert!(unconstrained.per_sample_bytes > 0.0, "{unconstrained:?}");

    // A cap between the resident base and the whole minibatch's estimated peak.
    let cap = unconstrained.base_bytes
        + 0.5 * (unconstrained.estimated_peak_bytes - unconstrained.base_bytes);
    let cap_gib = cap / (1u64 << 30) as f64;
    let capped = base.path().join("capped");
    std::fs::create_dir_all(base.path().join("logs_capped")).unwrap();
    let (ok, stderr, capped_peak) = run_measured(
        &search_args(&capped, 1024, &[format!("memory.cap_gib={cap_gib}")]),
        &base.path().join("logs_capped"),
    );
    assert!(ok, "{stderr}");
    let split = plan(&capped);
    println!(
        "unconstrained: {} (peak RSS {:.0} MB)\ncapped at {:.0} MB: {} (peak RSS {:.0} MB)",
        unconstrained.describe(),
        free_peak / 1e6,
        cap / 1e6,
        split.describe(),
        capped_peak / 1e6
    );
    assert!(split.micro_batch < 512, "{split:?}");
    assert!(stderr.contains("minibatch 512 as"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(capped.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["global_step"], 1024);
    assert!(
        capped_peak <= cap,
        "the capped run peaked at {:.0} MB, over its cap of {:.0} MB",
        capped_peak / 1e6,
        cap / 1e6
    );
}

/// A cap below what one sample needs is an error before any training, with the numbers.
#[test]
fn a_cap_that_nothing_fits_is_refused_before_training() {
    let base = tempfile::tempdir().unwrap();
    let run_dir = base.path().join("tiny");
    let out = cli()
        .args(search_args(
            &run_dir,
            512,
            &["memory.cap_gib=0.01".to_string()],
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not fit in memory"), "{stderr}");
    assert!(stderr.contains("memory.cap_gib"), "{stderr}");
    assert!(!run_dir.join("checkpoints").join("iter_00000001").exists());
}

/// SIGINT (Ctrl-C) and SIGTERM (what schedulers send before preemption) stop a run within
/// seconds, mid-iteration, keeping the last checkpoint; `--resume` continues from it.
#[test]
fn a_signal_stops_the_run_within_seconds_and_the_run_resumes() {
    for (signal, name) in [(libc::SIGINT, "sigint"), (libc::SIGTERM, "sigterm")] {
        let base = tempfile::tempdir().unwrap();
        let run_dir = base.path().join(name);
        let logs = base.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // Waited for by wait4 (for its resource usage), not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let child = cli()
            .args(search_args(&run_dir, 512 * 1000, &[]))
            .stdout(std::fs::File::create(logs.join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(logs.join("stderr.txt")).unwrap())
            .spawn()
            .unwrap();
        // Wait for the first checkpoint, then signal during the second iteration.
        let first = run_dir.join("checkpoints").join("iter_00000001");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !first.exists() {
            assert!(Instant::now() < deadline, "{name}: no first checkpoint");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let sent = Instant::now();
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let (ok, _) = wait_with_usage(child.id());
        let took = sent.elapsed();
        let stderr = std::fs::read_to_string(logs.join("stderr.txt")).unwrap();
        println!(
            "{name}: stopped {:.1} s after the signal",
            took.as_secs_f64()
        );
        assert!(ok, "{name}: {stderr}");
        assert!(took < Duration::from_secs(60), "{name}: took {took:?}");
        assert!(stderr.contains("stopped:"), "{name}: {stderr}");
        // The partial iteration was abandoned, the last checkpoint kept.
        let out = cli()
            .args(["train", "--resume"])
            .arg(&run_dir)
            .args(["--total-steps", "1024", "--quiet", "--device", "cpu"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["global_step"], 1024, "{name}");
    }
}
