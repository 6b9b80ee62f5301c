//! Plan-time checks: each trial's config is resolved the way `rl-darts train` / `search`
//! will resolve it (defaults for the env, the file, the flags, then `--set`), and validated,
//! so that a typo in a key or a budget the pipeline rejects fails the plan in a second instead
//! of every array task an hour later.
//!
//! Train trials resolve through [`crate::train::launch`], as `rl-darts train` does; search
//! trials load the supervised config as `rl-darts search` does.

use std::path::PathBuf;

use super::plan::{Plan, Trial, TrialMode};
use super::SweepError;
use crate::config::load_config;
use crate::train::launch::{quick_preset, TrainRequest};
use crate::train::supervised::SupervisedConfig;

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Every `--set` value of `args`, in order.
fn sets(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == "--set")
        .map(|w| w[1].clone())
        .collect()
}

fn check_trial(plan: &Plan, trial: &Trial) -> Result<(), String> {
    let args = &trial.args;
    let config_path: Option<PathBuf> = if args.iter().any(|a| a == "--quick") {
        Some(
            quick_preset(&plan.workdir)
                .ok_or("--quick: configs/coinrun-darts-quick.toml not found")?,
        )
    } else {
        flag(args, "--config").map(PathBuf::from)
    };
    match trial.mode {
        TrialMode::Search => {
            load_config(
                config_path.as_deref(),
                SupervisedConfig::default(),
                &sets(args),
            )
            .map_err(|e| e.to_string())?;
        }
        TrialMode::Pipeline | TrialMode::Single => {
            TrainRequest {
                config: config_path,
                env: Some(trial.env.clone()),
                encoder: flag(args, "--encoder").map(str::to_string),
                strategy: flag(args, "--strategy").map(str::to_string),
                seed: Some(trial.seed),
                skip_baseline: args.iter().any(|a| a == "--skip-baseline"),
                sets: sets(args),
                ..TrainRequest::default()
            }
            .resolve()
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Checks every trial of `plan`; the error lists each failing trial once with its reason.
pub fn check_plan(plan: &Plan) -> Result<(), SweepError> {
    let mut problems = Vec::new();
    for t in &plan.trials {
        if let Err(reason) = check_trial(plan, t) {
            // Trials of one grid point usually fail alike; say each reason once.
            if !problems.iter().any(|(_, r)| r == &reason) {
                problems.push((t.name.clone(), reason));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let text = problems
        .iter()
        .map(|(name, reason)| format!("  {name}: {reason}"))
        .collect::<Vec<_>>()
        .join("\n");
    Err(SweepError::Spec(format!(
        "trial configs do not validate (plan with --no-check to write the plan anyway):\n{text}"
    )))
}
