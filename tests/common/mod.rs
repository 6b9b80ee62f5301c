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

/// The rl-darts binary built for this test run.
pub fn rl_darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rl-darts"))
}
