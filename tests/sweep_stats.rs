//! The IQM and its stratified-bootstrap interval against the `rliable` package itself
//! (Agarwal et al. 2021), from the project's .venv (`make setup` installs it).
//!
//! The point estimate must match to rounding; the interval bounds are Monte-Carlo estimates
//! on both sides (different random streams), so they must agree within a tolerance far
//! below the interval's width: 20,000 resamples each.

use std::path::PathBuf;
use std::process::Command;

use rl_darts::sweep::stats::{iqm, stratified_bootstrap};

const ORACLE: &str = r#"
import json, sys
import numpy as np
from rliable import library as rly, metrics
scores = np.array(json.loads(sys.stdin.read()))        # [runs, tasks], rliable's layout
point, ci = rly.get_interval_estimates(
    {"m": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=20000)
print(json.dumps({"iqm": float(point["m"][0]), "lower": float(ci["m"][0][0]), "upper": float(ci["m"][1][0])}))
"#;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `make setup`", p.display());
    p
}

fn rliable(scores_runs_by_tasks: &[Vec<f64>]) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", ORACLE])
        .env("PYTHONWARNINGS", "ignore")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::to_string(scores_runs_by_tasks)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rliable oracle failed (is rliable installed? `make setup`)"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn iqm_and_stratified_bootstrap_match_rliable() {
    // 5 runs x 4 games of normalised scores, with spread and one outlier per game.
    let runs_by_tasks: Vec<Vec<f64>> = vec![
        vec![0.10, 0.55, 0.90, 0.20],
        vec![0.15, 0.60, 0.80, 0.25],
        vec![0.05, 0.40, 0.95, 0.90],
        vec![0.30, 0.50, 0.10, 0.22],
        vec![0.12, 0.58, 0.85, 0.18],
    ];
    // Our layout is per task: [tasks][runs].
    let per_task: Vec<Vec<f64>> = (0..4)
        .map(|t| runs_by_tasks.iter().map(|r| r[t]).collect())
        .collect();
    let want = rliable(&runs_by_tasks);
    let ours = stratified_bootstrap(&per_task, iqm, 20_000, 0.95, 3).unwrap();
    eprintln!("rliable {want}\nours    {ours:?}");
    assert!((ours.estimate - want["iqm"].as_f64().unwrap()).abs() < 1e-12);
    let width = want["upper"].as_f64().unwrap() - want["lower"].as_f64().unwrap();
    assert!(width > 0.1, "a case whose interval has some width");
    for (a, b) in [(ours.lower, &want["lower"]), (ours.upper, &want["upper"])] {
        assert!(
            (a - b.as_f64().unwrap()).abs() < 0.01,
            "bound {a} vs rliable {b}"
        );
    }
}
