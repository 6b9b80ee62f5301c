//! One trial on disk and how to run it: what its run directory says about it (complete,
//! partial, untouched), and `run_trial`, which starts `rl-darts train|search` as a child
//! process, fresh or `--resume`d, with its output appended to the trial's log.
//!
//! Completeness is read from what the training commands themselves leave behind
//! (`comparison.json` for a pipeline, `summary.json` with `interrupted: false` for a single
//! run or a search), never from a marker of ours alone: a run finished by hand counts, and a
//! marker written before a crash cannot make a half run look done.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::plan::{Plan, Trial, TrialMode};
use super::{io_err, SweepError};

/// The trial's log (stdout and stderr of every attempt, appended), in its run directory.
pub const LOG_FILE: &str = "sweep.log";
/// The last attempt's outcome, in the run directory (informative; `state` is authoritative).
pub const STATUS_FILE: &str = "sweep-status.json";
/// The trial's entry of the plan, copied into its run directory for provenance.
pub const TRIAL_FILE: &str = "sweep-trial.json";

/// What a trial's run directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Nothing to continue from: the next attempt starts fresh.
    Fresh,
    /// Started and not finished; the next attempt continues it with `--resume`.
    Partial,
    /// Finished: `run` skips it and `collect` reads it.
    Complete,
}

/// The last attempt, as written to `sweep-status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialStatus {
    /// running | complete | interrupted | failed
    pub status: String,
    /// Exit code of the child; None while running, or when a signal ended it.
    pub exit_code: Option<i32>,
    pub log: PathBuf,
    pub host: String,
    pub started: String,
    pub finished: Option<String>,
}

/// How one `run_trial` call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialOutcome {
    /// Already complete before this call: nothing was run.
    Skipped,
    Completed,
    /// The child exited cleanly without finishing (Ctrl-C, Slurm preemption's SIGTERM): a
    /// checkpoint holds the state; the next attempt resumes.
    Interrupted {
        log: PathBuf,
    },
    /// The child failed; `tail` is the end of its log.
    Failed {
        exit_code: Option<i32>,
        log: PathBuf,
        tail: String,
    },
}

impl TrialOutcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, TrialOutcome::Failed { .. })
    }
}

/// Process ids of the trial children running in this process. Each child runs in its own
/// process group, so a terminal's Ctrl-C reaches only the sweep process, which forwards one
/// signal per press (`forward_signal`): the child then checkpoints and stops exactly as
/// `rl-darts train` does on one Ctrl-C, instead of receiving the terminal's signal and a
/// forwarded one and quitting without a checkpoint. Slurm's `--signal` and Ray's
/// cancellation reach the sweep process the same way. A process-wide list because signal
/// handlers have no other way in.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends `signal` (`TERM`, `INT`) to every running trial child, through kill(1) (no unsafe
/// libc call; this runs on the signal-handling thread, not in a signal context).
pub fn forward_signal(signal: &str) {
    let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .stdin(Stdio::null())
            .status();
    }
}

/// `summary.json` of a train or search run says whether it ran to the end.
fn summary_finished(run_dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Summary {
        interrupted: bool,
    }
    fs::read(run_dir.join("summary.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Summary>(&bytes).ok())
        .is_some_and(|s| !s.interrupted)
}

/// A complete checkpoint (`checkpoints/iter_N/COMPLETE`, see train::run_dir) exists.
fn has_checkpoint(run_dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(run_dir.join("checkpoints")) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| e.path().join("COMPLETE").is_file())
}

/// What `trial`'s run directory holds now.
pub fn state(trial: &Trial) -> TrialState {
    let dir = &trial.run_dir;
    match trial.mode {
        TrialMode::Pipeline => {
            if dir.join("comparison.json").is_file() {
                TrialState::Complete
            } else if dir.join("config.toml").is_file() {
                // The pipeline resumes phase by phase (each phase from its own checkpoint),
                // so any started pipeline directory continues with --resume.
                TrialState::Partial
            } else {
                TrialState::Fresh
            }
        }
        TrialMode::Single | TrialMode::Search => {
            if summary_finished(dir) {
                TrialState::Complete
            } else if dir.join("config.toml").is_file() && has_checkpoint(dir) {
                TrialState::Partial
            } else {
                TrialState::Fresh
            }
        }
    }
}

/// The last attempt's status file, if any.
pub fn read_status(trial: &Trial) -> Option<TrialStatus> {
    let bytes = fs::read(trial.run_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn now() -> String {
    chrono::Local::now().to_rfc3339()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn write_status(trial: &Trial, status: &TrialStatus) -> Result<(), SweepError> {
    let path = trial.run_dir.join(STATUS_FILE);
    let tmp = trial.run_dir.join(format!(".{STATUS_FILE}.tmp"));
    let text = serde_json::to_string_pretty(status).expect("status serialises");
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The last `lines` lines of a log file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `trial` of `plan` to completion (or to its next interruption) with `binary`, the
/// `rl-darts` executable: skipped when complete, resumed when partial, started otherwise.
/// `env` adds variables to the child's environment (the local runner's CUDA_VISIBLE_DEVICES).
/// A failing child is an outcome, not an error; errors are this process's own I/O.
pub fn run_trial(
    plan: &Plan,
    trial: &Trial,
    binary: &Path,
    env: &[(String, String)],
) -> Result<TrialOutcome, SweepError> {
    let dir = &trial.run_dir;
    let before = state(trial);
    if before == TrialState::Complete {
        return Ok(TrialOutcome::Skipped);
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let trial_path = dir.join(TRIAL_FILE);
    fs::write(
        &trial_path,
        serde_json::to_string_pretty(trial).expect("a trial serialises"),
    )
    .map_err(io_err(&trial_path))?;
    if before == TrialState::Fresh && trial.mode != TrialMode::Pipeline {
        // An attempt that died before its first checkpoint left TensorBoard events that the
        // fresh start would log again; drop them so curves have one point per step.
        let tb = dir.join("tb");
        if tb.exists() {
            fs::remove_dir_all(&tb).map_err(io_err(&tb))?;
        }
    }
    let args = match before {
        TrialState::Partial => &trial.resume_args,
        _ => &trial.args,
    };
    let log_path = dir.join(LOG_FILE);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let started = now();
    writeln!(
        log,
        "=== {started} on {}: {} {}",
        hostname(),
        binary.display(),
        args.join(" ")
    )
    .map_err(io_err(&log_path))?;
    let err_log = log.try_clone().map_err(io_err(&log_path))?;
    let mut status = TrialStatus {
        status: "running".into(),
        exit_code: None,
        log: log_path.clone(),
        host: hostname(),
        started,
        finished: None,
    };
    write_status(trial, &status)?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .env("RL_DARTS_SWEEP_TRIAL", trial.index.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)));
    // Trials run where the plan was made, so relative paths inside configs (the digits CSV
    // under .deps/, configs/) resolve as they did for the user; absent on another machine
    // without a shared filesystem, the caller's directory stands in.
    if plan.workdir.is_dir() {
        command.current_dir(&plan.workdir);
    }
    command.process_group(0);
    let mut child = command.spawn().map_err(|source| SweepError::Spawn {
        program: binary.display().to_string(),
        source,
    })?;
    let pid = child.id();
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
    let waited = child.wait();
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|&p| p != pid);
    }
    let exit = waited.map_err(io_err(&log_path))?;
    status.exit_code = exit.code();
    status.finished = Some(now());
    let outcome = if !exit.success() {
        status.status = "failed".into();
        TrialOutcome::Failed {
            exit_code: exit.code(),
            log: log_path.clone(),
            tail: tail(&log_path, 15),
        }
    } else if state(trial) == TrialState::Complete {
        status.status = "complete".into();
        TrialOutcome::Completed
    } else {
        status.status = "interrupted".into();
        TrialOutcome::Interrupted {
            log: log_path.clone(),
        }
    };
    write_status(trial, &status)?;
    Ok(outcome)
}
