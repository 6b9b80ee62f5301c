//! Plan-time checks: each trial's config is resolved the way `rl-darts train` / `search`
//! will resolve it (defaults for the env, the file, the flags, then `--set`), and validated,
//! so that a typo in a key or a budget the pipeline rejects fails the plan in a second instead
//! of every array task an hour later.
//!
//! This mirrors `resolve_config` of src/cli/train.rs (which lives in the binary); the child
//! process stays the authority, and a mismatch here only means a trial fails at its start,
//! with its log, as any other failure.

use std::path::{Path, PathBuf};

use super::plan::{Plan, Trial, TrialMode};
use super::SweepError;
use crate::config::load_config;
use crate::train::pipeline::{pipeline_defaults, validate as validate_pipeline};
use crate::train::rl::TrainConfig;
use crate::train::supervised::SupervisedConfig;

/// The quick preset as `train --quick` finds it: in the working directory, else in the
/// source tree this binary was built from.
fn quick_preset(workdir: &Path) -> Option<PathBuf> {
    let name = Path::new("configs").join("coinrun-darts-quick.toml");
    [
        workdir.join(&name),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

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
            let env = &trial.env;
            let mut all = vec![format!("env={env:?}")];
            if let Some(e) = flag(args, "--encoder") {
                all.push(format!("encoder={{ kind = {e:?}, params = {{}} }}"));
            }
            if let Some(s) = flag(args, "--strategy") {
                all.push(format!("search.strategy={{ kind = {s:?} }}"));
            }
            all.push(format!("seed={}", trial.seed));
            if args.iter().any(|a| a == "--skip-baseline") {
                all.push("pipeline.skip_baseline=true".into());
            }
            all.extend(sets(args));
            let defaults = if trial.mode == TrialMode::Pipeline {
                pipeline_defaults(env)
            } else {
                TrainConfig::defaults_for(env)
            };
            let config =
                load_config(config_path.as_deref(), defaults, &all).map_err(|e| e.to_string())?;
            if trial.mode == TrialMode::Pipeline {
                validate_pipeline(&config).map_err(|e| e.to_string())?;
            } else {
                config.ppo.validate().map_err(|e| e.to_string())?;
            }
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
