//! The Ray runner: hands the plan to a small Python driver (scripts/ray_sweep.py, compiled
//! into the binary) that submits one Ray task per trial with the plan's CPUs and GPUs per
//! trial; each task runs `rl-darts sweep run PLAN --index I`. Ray schedules; nothing here
//! does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::SweepError;

/// The driver, embedded so an installed binary needs no source tree.
pub const DRIVER: &str = include_str!("../../scripts/ray_sweep.py");

/// The Python that has Ray: `RL_DARTS_PYTHON`, else the project's `.venv` (where `make setup`
/// installs Ray) under `workdir`, else `python3` on PATH.
pub fn default_python(workdir: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("RL_DARTS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workdir.join(".venv/bin/python");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Ray's version in `python`, or why Ray cannot be used.
pub fn ray_version(python: &Path) -> Result<String, SweepError> {
    let out = Command::new(python)
        .args(["-c", "import ray; print(ray.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SweepError::Spawn {
            program: python.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(SweepError::Ray(format!(
            "Ray is not installed in {} (run `make setup`, or `pip install ray`, or point RL_DARTS_PYTHON at a Python that has it)",
            python.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the trials `indices` (all when None) of the plan at `plan_path` on the Ray cluster at
/// `address` (`auto`, `HOST:PORT`, `ray://HOST:PORT`, or `local` for a throwaway one-node
/// cluster). The driver prints one line per finished trial. Ok(true) when every trial
/// completed.
pub fn run_ray(
    python: &Path,
    address: &str,
    plan_path: &Path,
    binary: &Path,
    indices: Option<&[usize]>,
) -> Result<bool, SweepError> {
    ray_version(python)?;
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(DRIVER)
        .args(["--address", address])
        .arg("--plan")
        .arg(plan_path)
        .arg("--binary")
        .arg(binary)
        .stdin(Stdio::null());
    if let Some(list) = indices {
        let joined: Vec<String> = list.iter().map(usize::to_string).collect();
        cmd.args(["--indices", &joined.join(",")]);
    }
    let status = cmd.status().map_err(|source| SweepError::Spawn {
        program: python.display().to_string(),
        source,
    })?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        other => Err(SweepError::Ray(format!(
            "the Ray driver failed (exit status {other:?}); see its output above"
        ))),
    }
}
