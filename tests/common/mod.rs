//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python (made by `make setup`), which hosts the reference implementations
/// the tests compare against. Missing is a failure, not a skip: the oracle tests are the point.
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` first",
        python.display()
    );
    python
}

/// Runs a Python oracle script with `input` as JSON on stdin and parses its JSON stdout.
/// PYTHONPATH points at the unpacked procgen wheel so that `import procgen` uses the same
/// libenv.so as the bindings under test.
pub fn run_python_oracle(script: &str, input: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let root = repo_root();
    let mut child = Command::new(venv_python())
        .arg(root.join(script))
        .env("PYTHONPATH", root.join(".deps/procgen"))
        .env("PYTHONWARNINGS", "ignore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python oracle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "oracle {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("oracle output is JSON")
}

/// The arguments of `rl-darts train --env cartpole --encoder ENCODER`, then `rest`: the start
/// of the CLI training runs the tests launch (clap reads flags by name, in any order).
pub fn cartpole_train(encoder: &str, rest: &[&str]) -> Vec<String> {
    ["train", "--env", "cartpole", "--encoder", encoder]
        .iter()
        .chain(rest)
        .map(|arg| arg.to_string())
        .collect()
}

/// The RobustDARTS early stop at its most eager (window 1, lag 1, ratio 0.99): it fires at the
/// first health measurement whose eigenvalue is more than 1% above the one before.
pub fn early_stop_at_first_rise() -> rl_darts::search::early_stop::EarlyStopConfig {
    rl_darts::search::early_stop::EarlyStopConfig {
        enabled: true,
        window: 1,
        lag: 1,
        ratio: 0.99,
        start_iteration: 0,
    }
}

/// Fails the test, showing the command's stderr, unless the command exited successfully.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rl-darts binary built for this test run.
pub fn rl_darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rl-darts"))
}

pub mod digits;
pub mod nets;
pub mod rl;

/// The devices a tensor test runs on: the CPU always, and the first CUDA device where libtorch
/// sees one, so that a test written once as `for device in common::devices()` also checks the
/// CUDA kernels on a GPU machine (STYLE.md: device tests written once as fn(Device)).
pub fn devices() -> Vec<tch::Device> {
    let mut devices = vec![tch::Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(tch::Device::Cuda(0));
    }
    devices
}
