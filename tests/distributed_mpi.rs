//! Data-parallel training under a real `mpirun` (Open MPI from Debian, installed by `make
//! setup`), 2 processes on the CPU: the engine's selftest (all-reduce of known tensors, odd
//! lengths included; 2 processes on halves of a fixed batch against 1 on all of it, PPO in
//! f64), a process that dies or hangs ending the run with an error, and `rl-darts train` with
//! its resume. Skipped, saying so, only when mpirun is absent outside CI; in CI (the `CI`
//! variable set) its absence fails.

mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rl-darts");

fn mpirun() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
}

/// mpirun, or None after saying why the test does not run (a failure in CI).
fn require_mpirun() -> Option<PathBuf> {
    let found = mpirun();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mpirun not found: `make setup` installs Debian's openmpi-bin and libopenmpi-dev"
        );
        eprintln!("skipping: mpirun not found (`make setup` installs openmpi-bin)");
    }
    found
}

struct Outcome {
    /// None: killed at the time limit.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    secs: f64,
}

/// `train --env cartpole --encoder ENCODER --distributed mpi --run-dir RUN`, then `rest`.
fn mpi_train(encoder: &str, run: &Path, rest: &[&str]) -> Vec<String> {
    let run = run.to_str().unwrap();
    let mut args = vec!["--distributed", "mpi", "--run-dir", run];
    args.extend(rest);
    common::cartpole_train(encoder, &args)
}

/// `mpirun -np {np} rl-darts {args}` in `dir`, killed after `limit`.
fn launch(
    mpirun: &Path,
    np: usize,
    args: &[impl AsRef<OsStr>],
    dir: &Path,
    limit: Duration,
) -> Outcome {
    let mut cmd = Command::new(mpirun);
    cmd.args(["-np", &np.to_string(), "--oversubscribe"]);
    // SAFETY: geteuid only reads the process's effective user id.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(BIN)
        .args(args)
        .current_dir(dir)
        .env("OMP_NUM_THREADS", "1")
        // Containers often forbid the cross-memory attach of Open MPI's shared-memory
        // transport (ptrace); plain copies work everywhere.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("mpirun starts");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on mpirun") {
            break Some(status);
        }
        if start.elapsed() > limit {
            // SIGTERM first: mpirun passes it on to its processes and ends them.
            // SAFETY: kill only sends a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = start.elapsed().as_secs_f64();
    Outcome {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        secs,
    }
}

fn show(o: &Outcome) -> String {
    format!(
        "status {:?} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
        o.status, o.secs, o.stdout, o.stderr
    )
}

/// The number after `key` in `text` (e.g. "max |w_N - w_1| = 1.2e-16").
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let token: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-' | '+'))
        .collect();
    token.parse().ok()
}

#[test]
fn selftest_two_processes_all_reduce_and_match_one_process() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = launch(
        &mpirun,
        2,
        &["dist", "selftest", "--backend", "mpi"],
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    assert!(
        o.stdout.contains("2 processes, backend mpi"),
        "{}",
        show(&o)
    );
    assert!(o.stdout.contains("all-reduce: ok"), "{}", show(&o));
    assert!(o.stdout.contains("broadcast: ok"), "{}", show(&o));
    // The selftest checks its own tolerance; read the numbers back so that this test states
    // them too: 2 x 420 samples against 1 x 840 after 8 Adam steps in f64.
    let gap = number_after(&o.stdout, "max |w_N - w_1| =").expect("the gap is reported");
    let control = number_after(&o.stdout, "without the all-reduce:").expect("control reported");
    assert!(
        gap < 1e-9,
        "2 processes drift from 1 by {gap}\n{}",
        show(&o)
    );
    assert!(
        control > 1e-4,
        "the control moved by only {control}\n{}",
        show(&o)
    );
    assert!(o.stdout.contains("selftest: ok"), "{}", show(&o));
    // The bilevel strategies: 2 processes on half of each fixed batch against 1 on all of it,
    // 3 alpha steps each, f64; the same steps without averaging must end elsewhere.
    for strategy in [
        "darts first order",
        "darts second order (finite difference)",
        "darts second order (exact)",
        "idarts",
        "darts_prime",
        "gdas",
    ] {
        let key = format!("bilevel equivalence, {strategy}: max |alpha_N - alpha_1| =");
        let gap = number_after(&o.stdout, &key).expect("the bilevel gap is reported");
        assert!(gap < 1e-9, "{strategy}: 2 processes drift from 1 by {gap}");
        let line = &o.stdout[o.stdout.find(&key).unwrap()..];
        let control = number_after(line, "without averaging:").expect("control reported");
        assert!(
            control > 1e-4,
            "{strategy}: the control moved by only {control}"
        );
    }
    assert!(o.stdout.contains("bilevel selftest: ok"), "{}", show(&o));
}

#[test]
fn a_process_that_dies_ends_the_others_with_an_error() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No watchdog (timeout 0): the launcher's own abort is what ends rank 0, which waits in a
    // broadcast that rank 1 never joins.
    let o = launch(
        &mpirun,
        2,
        &["dist", "selftest", "--exit-rank", "1", "--timeout-s", "0"],
        dir.path(),
        Duration::from_secs(120),
    );
    let status = o
        .status
        .unwrap_or_else(|| panic!("the run hung\n{}", show(&o)));
    assert!(!status.success(), "{}", show(&o));
    assert!(
        o.stderr.contains("rank 1: exiting on purpose"),
        "{}",
        show(&o)
    );
    assert!(!o.stdout.contains("selftest: ok"), "{}", show(&o));
}

#[test]
fn a_process_that_hangs_ends_the_run_after_the_timeout() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = launch(
        &mpirun,
        2,
        &["dist", "selftest", "--stall-rank", "1", "--timeout-s", "3"],
        dir.path(),
        Duration::from_secs(120),
    );
    let status = o
        .status
        .unwrap_or_else(|| panic!("the run hung\n{}", show(&o)));
    assert!(!status.success(), "{}", show(&o));
    assert!(
        o.stderr.contains("rank 0 waited") && o.stderr.contains("distributed.timeout_s = 3"),
        "{}",
        show(&o)
    );
}

fn summary(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn train_on_two_processes_then_resume() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    // CartPole's preset: 4 envs x 128 steps, 4 minibatches; 2 envs per process.
    let o = launch(
        &mpirun,
        2,
        &mpi_train("mlp", &run, &["--total-steps", "2048", "--quiet"]),
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    let s = summary(&run);
    // The global step counts both processes' env steps: 4 iterations of 2 x 2 x 128.
    assert_eq!(s["global_step"], 2048, "{}", show(&o));
    assert_eq!(s["iterations"], 4, "{}", show(&o));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("backend = \"mpi\""), "{config}");
    // Only rank 0 wrote a run directory (the default ones would land in runs/ here).
    assert!(!dir.path().join("runs").exists());

    let o = launch(
        &mpirun,
        2,
        &[
            "train",
            "--resume",
            run_arg,
            "--total-steps",
            "3072",
            "--quiet",
        ],
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    assert!(o.stdout.contains("resuming"), "{}", show(&o));
    let s = summary(&run);
    assert_eq!(s["global_step"], 3072, "{}", show(&o));
    assert_eq!(s["iterations"], 6, "{}", show(&o));
}

/// Every file under `dir` (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Resume is exact on every process: each process's own state (its envs, its sampling and
/// shuffling generator, its reward normaliser) is gathered into rank 0's checkpoint
/// (`rank_1/`) and restored on resume, so a 2-process run stopped after 4 iterations and
/// resumed ends with the same files, byte for byte, as the uninterrupted 6-iteration run,
/// rank 1's state included. (`ppo.anneal_lr = false`: the learning rate then does not depend
/// on the total, the one thing the two runs' configs differ in before the resume.)
#[test]
fn a_resumed_two_process_run_equals_the_uninterrupted_one() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let train = |run: &Path, steps: &str| {
        let o = launch(
            &mpirun,
            2,
            &mpi_train(
                "mlp",
                run,
                &[
                    "--set",
                    "ppo.anneal_lr=false",
                    "--total-steps",
                    steps,
                    "--quiet",
                ],
            ),
            dir.path(),
            Duration::from_secs(300),
        );
        assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    };
    let whole = dir.path().join("whole");
    train(&whole, "3072");
    let parts = dir.path().join("parts");
    train(&parts, "2048");
    let o = launch(
        &mpirun,
        2,
        &[
            "train",
            "--resume",
            parts.to_str().unwrap(),
            "--total-steps",
            "3072",
            "--quiet",
        ],
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    let last = |run: &Path| files(&run.join("checkpoints").join("iter_00000006"));
    let (a, b) = (last(&whole), last(&parts));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b));
    assert!(
        a.iter().any(|(n, _)| n.starts_with("rank_1/")),
        "rank 1's state is in the checkpoint: {:?}",
        names(&a)
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the resumed and the uninterrupted run"
        );
    }
}

/// A single-level search (joint) on two processes: the alphas' gradients are all-reduced with
/// the weights', so both processes end with the same weights and alphas (the run checks it
/// at its end and fails otherwise; leaving the alphas out of the all-reduce made this run
/// fail with "drifted apart").
#[test]
fn a_single_level_search_on_two_processes_keeps_the_alphas_in_sync() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    search_on_two_processes(&mpirun, &["--strategy", "joint"], 2048);
}

/// A CartPole MLP-supernet search of `total_steps` on two processes with `strategy_args`:
/// it succeeds, the processes do not drift apart, and rank 0 writes the genotype.
fn search_on_two_processes(mpirun: &Path, strategy_args: &[&str], total_steps: u64) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let steps = total_steps.to_string();
    let mut rest = strategy_args.to_vec();
    rest.extend(["--total-steps", steps.as_str(), "--quiet"]);
    let o = launch(
        mpirun,
        2,
        &mpi_train("mlp_darts", &run, &rest),
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.is_some_and(|s| s.success()), "{}", show(&o));
    assert!(!o.stderr.contains("drifted apart"), "{}", show(&o));
    assert_eq!(summary(&run)["global_step"], total_steps, "{}", show(&o));
    assert!(run.join("genotype.json").is_file(), "{}", show(&o));
}

#[test]
fn a_process_count_that_does_not_divide_the_envs_is_an_error() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = launch(
        &mpirun,
        2,
        &mpi_train(
            "mlp",
            &run,
            &["--set", "ppo.num_envs=3", "--set", "ppo.num_minibatches=3"],
        ),
        dir.path(),
        Duration::from_secs(120),
    );
    let status = o
        .status
        .unwrap_or_else(|| panic!("the run hung\n{}", show(&o)));
    assert!(!status.success(), "{}", show(&o));
    assert!(
        o.stderr
            .contains("ppo.num_envs = 3 does not split over 2 processes"),
        "{}",
        show(&o)
    );
    assert!(!run.exists(), "a refused run left its directory behind");
}

/// A bilevel search (DARTS second order: the virtual step's gradient, the validation
/// gradients and both sides of the finite difference averaged over the processes) on two
/// processes: both end with the same weights and alphas (the run checks it at its end and
/// fails with "drifted apart" otherwise).
#[test]
fn a_bilevel_search_on_two_processes_keeps_the_alphas_in_sync() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    search_on_two_processes(
        &mpirun,
        &[
            "--strategy",
            "darts",
            "--set",
            "search.strategy.params.order=\"second\"",
        ],
        1024,
    );
}

/// UNAS has no exact data-parallel form: refused with the reason, before the first iteration.
#[test]
fn unas_is_refused_on_several_processes() {
    let Some(mpirun) = require_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = launch(
        &mpirun,
        2,
        &mpi_train(
            "mlp_darts",
            &dir.path().join("run"),
            &["--strategy", "unas", "--total-steps", "2048"],
        ),
        dir.path(),
        Duration::from_secs(300),
    );
    let status = o
        .status
        .unwrap_or_else(|| panic!("the run hung\n{}", show(&o)));
    assert!(!status.success(), "{}", show(&o));
    assert!(
        o.stderr.contains("unas cannot run data-parallel exactly"),
        "{}",
        show(&o)
    );
}

/// No launcher needed: the name is checked before any engine starts.
#[test]
fn an_unknown_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(common::cartpole_train("mlp", &["--distributed", "gloo"]))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown distributed backend 'gloo'; use one of none, mpi, nccl"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(common::cartpole_train(
            "mlp",
            &["--set", "distributed.backend=\"gloo\""],
        ))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("distributed.backend") && err.contains("gloo"),
        "{err}"
    );
    assert!(!dir.path().join("runs").exists());
}
