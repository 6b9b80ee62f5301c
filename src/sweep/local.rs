//! The local runner: the plan's trials on this machine, `jobs` at a time (by default as many
//! as the cores allow at `resources.cpus_per_trial` each), one progress bar for the sweep, a
//! failed trial reported with its log path while the others go on.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use super::plan::Plan;
use super::trial::{run_trial, TrialOutcome};
use super::SweepError;

/// What happened to one trial in this call.
#[derive(Debug, Clone)]
pub struct TrialReport {
    pub index: usize,
    pub name: String,
    pub outcome: TrialOutcome,
}

/// How many trials fit on this machine at once: cores / cpus_per_trial, and for trials that
/// ask for GPUs also visible GPUs / gpus_per_trial.
pub fn default_jobs(plan: &Plan) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut jobs = cores / plan.resources.cpus_per_trial.max(1) as usize;
    if let Some(gpu_jobs) = gpu_count().checked_div(plan.resources.gpus_per_trial as usize) {
        jobs = jobs.min(gpu_jobs);
    }
    jobs.max(1)
}

/// CUDA devices this process may use.
fn gpu_count() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

/// The child environment of worker slot `slot`: its own `gpus_per_trial` devices, so that
/// trials running side by side do not share a GPU (none when no GPUs are asked for, or when
/// the machine has fewer than the slots need, which the user then chose with --jobs).
fn slot_env(plan: &Plan, slot: usize) -> Vec<(String, String)> {
    let per_trial = plan.resources.gpus_per_trial as usize;
    if per_trial == 0 || (slot + 1) * per_trial > gpu_count() {
        return Vec::new();
    }
    // Device numbers are positions in this process's own CUDA_VISIBLE_DEVICES when it has
    // one (a Slurm or Ray allocation), physical ids otherwise.
    let inherited: Option<Vec<String>> = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|v| v.split(',').map(|d| d.trim().to_string()).collect());
    let devices: Vec<String> = (slot * per_trial..(slot + 1) * per_trial)
        .map(|d| match &inherited {
            Some(list) => list.get(d).cloned().unwrap_or_else(|| d.to_string()),
            None => d.to_string(),
        })
        .collect();
    vec![("CUDA_VISIBLE_DEVICES".to_string(), devices.join(","))]
}

/// Runs the trials `indices` of `plan` (all when None) with `binary`, `jobs` at a time. Stops
/// taking new trials once `stop` is set (the running ones get the forwarded signal and
/// checkpoint). Errors of one trial's own I/O end that trial's report, not the sweep.
pub fn run_local(
    plan: &Plan,
    binary: &Path,
    jobs: usize,
    indices: Option<&[usize]>,
    quiet: bool,
    stop: &AtomicBool,
) -> Result<Vec<TrialReport>, SweepError> {
    let queue: VecDeque<usize> = match indices {
        Some(list) => list.to_vec().into(),
        None => (0..plan.trials.len()).collect(),
    };
    let total = queue.len() as u64;
    let queue = Mutex::new(queue);
    let reports = Mutex::new(Vec::new());
    let running = Mutex::new(Vec::<String>::new());
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} trials {msg}")
            .expect("valid template"),
    );
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let say = |line: String| {
        if quiet {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let refresh = |running: &[String]| {
        let f = failed.load(Ordering::SeqCst);
        let mut msg = format!("| running: {}", running.join(", "));
        if f > 0 {
            msg.push_str(&format!(" | failed: {f}"));
        }
        bar.set_message(msg);
    };
    std::thread::scope(|scope| {
        for slot in 0..jobs.max(1) {
            let env = slot_env(plan, slot);
            let (queue, reports, running, failed, say, refresh, bar) =
                (&queue, &reports, &running, &failed, &say, &refresh, &bar);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(index) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                    break;
                };
                let trial = &plan.trials[index];
                if let Ok(mut r) = running.lock() {
                    r.push(trial.name.clone());
                    refresh(&r);
                }
                let outcome =
                    run_trial(plan, trial, binary, &env).unwrap_or_else(|e| TrialOutcome::Failed {
                        exit_code: None,
                        log: trial.run_dir.join(super::trial::LOG_FILE),
                        tail: e.to_string(),
                    });
                match &outcome {
                    TrialOutcome::Skipped => {
                        say(format!("#{index} {}: already complete", trial.name))
                    }
                    TrialOutcome::Completed => say(format!("#{index} {}: complete", trial.name)),
                    TrialOutcome::Interrupted { log } => say(format!(
                        "#{index} {}: interrupted, resumable (log {})",
                        trial.name,
                        log.display()
                    )),
                    TrialOutcome::Failed {
                        exit_code,
                        log,
                        tail,
                    } => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        say(format!(
                            "#{index} {}: FAILED (exit code {}), log {}\n{}",
                            trial.name,
                            exit_code.map_or("none: killed by a signal".into(), |c| c.to_string()),
                            log.display(),
                            indent(tail)
                        ));
                    }
                }
                if let Ok(mut r) = running.lock() {
                    r.retain(|n| n != &trial.name);
                    refresh(&r);
                }
                bar.inc(1);
                if let Ok(mut rep) = reports.lock() {
                    rep.push(TrialReport {
                        index,
                        name: trial.name.clone(),
                        outcome,
                    });
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.index);
    Ok(reports)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
