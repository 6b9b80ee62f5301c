//! The comparison table: each model's results on training and held-out levels.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::envs::procgen::DistributionMode;
use crate::train::rl::EvalResult;

/// A level set, as procgen takes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    pub num_levels: i32,
    pub start_level: i32,
}

impl Levels {
    pub(super) fn describe(self) -> String {
        if self.num_levels == 0 {
            "the full level distribution, num_levels = 0".to_string()
        } else {
            format!(
                "levels {}..{}",
                self.start_level,
                i64::from(self.start_level) + i64::from(self.num_levels) - 1
            )
        }
    }
}

/// One evaluation of one model on one level set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    pub levels: Levels,
    pub episodes: usize,
    pub mean_return: f64,
    pub std_return: f64,
    pub mean_normalized_return: Option<f64>,
    pub std_normalized_return: Option<f64>,
}

impl From<EvalResult> for LevelResult {
    fn from(r: EvalResult) -> Self {
        Self {
            levels: Levels {
                num_levels: r.num_levels,
                start_level: r.start_level,
            },
            episodes: r.episodes,
            mean_return: r.mean_return,
            std_return: r.std_return,
            mean_normalized_return: r.mean_normalized_return,
            std_normalized_return: r.std_normalized_return,
        }
    }
}

/// One row of the comparison: a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// `rl_darts` (the retrained discrete cell) or `impala` (the baseline).
    pub name: String,
    pub encoder: String,
    pub run_dir: PathBuf,
    pub params: i64,
    /// Env steps trained.
    pub global_step: u64,
    /// Training env steps per second (rollout + update).
    pub steps_per_sec: f64,
    pub train_levels: LevelResult,
    pub test_levels: LevelResult,
}

/// The search phase in the table's footnote: its cost next to the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchInfo {
    pub params: i64,
    pub global_step: u64,
    pub steps_per_sec: f64,
    /// The derived genotype in the DARTS text form.
    pub genotype: String,
    /// Random search from scratch: how many cells it trained (`params` is then the best
    /// one's). None: a supernet search.
    #[serde(default)]
    pub random_candidates: Option<usize>,
}

/// RUN_DIR/comparison.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub env: String,
    pub seed: u64,
    pub distribution_mode: DistributionMode,
    pub search_timesteps: u64,
    pub retrain_timesteps: u64,
    pub episodes: usize,
    pub greedy: bool,
    pub train_levels: Levels,
    pub test_levels: Levels,
    pub rows: Vec<ComparisonRow>,
    pub search: Option<SearchInfo>,
    /// The search's time per env step over the baseline's (RL-DARTS reports about 3x).
    pub search_overhead: Option<f64>,
}

pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn pm(mean: Option<f64>, std: Option<f64>, decimals: usize) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.decimals$} ± {s:.decimals$}"),
        _ => "-".into(),
    }
}

impl Comparison {
    /// The table as markdown (comparison.md, the terminal and TensorBoard's text tab).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## RL-DARTS pipeline on {} ({:?} mode, seed {})\n",
            self.env, self.distribution_mode, self.seed
        );
        let _ = writeln!(
            out,
            "Evaluated on the training levels ({}) and on held-out levels ({}); {} episodes each, {} policy.\n",
            self.train_levels.describe(),
            self.test_levels.describe(),
            self.episodes,
            if self.greedy { "greedy" } else { "stochastic" }
        );
        let _ = writeln!(
            out,
            "| model | params | env steps | train steps/s | train levels: return | normalised | held-out: return | normalised |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let random = self.search.as_ref().and_then(|s| s.random_candidates);
        for r in &self.rows {
            let title = match r.name.as_str() {
                "rl_darts" if random.is_some() => "random-search cell, retrained",
                "rl_darts" => "RL-DARTS cell, retrained",
                "impala" => "IMPALA-CNN baseline",
                other => other,
            };
            let _ = writeln!(
                out,
                "| {title} | {} | {} | {:.0} | {} | {} | {} | {} |",
                thousands(r.params.max(0) as u64),
                thousands(r.global_step),
                r.steps_per_sec,
                pm(
                    Some(r.train_levels.mean_return),
                    Some(r.train_levels.std_return),
                    2
                ),
                pm(
                    r.train_levels.mean_normalized_return,
                    r.train_levels.std_normalized_return,
                    3
                ),
                pm(
                    Some(r.test_levels.mean_return),
                    Some(r.test_levels.std_return),
                    2
                ),
                pm(
                    r.test_levels.mean_normalized_return,
                    r.test_levels.std_normalized_return,
                    3
                ),
            );
        }
        if let Some(s) = &self.search {
            let _ = match s.random_candidates {
                Some(k) => write!(
                    out,
                    "\nSearch: random search, {k} cells trained from scratch (the best has {} params), {} env steps at {:.0} steps/s",
                    thousands(s.params.max(0) as u64),
                    thousands(s.global_step),
                    s.steps_per_sec
                ),
                None => write!(
                    out,
                    "\nSearch: supernet with {} params, {} env steps at {:.0} steps/s",
                    thousands(s.params.max(0) as u64),
                    thousands(s.global_step),
                    s.steps_per_sec
                ),
            };
            match self.search_overhead {
                Some(x) => {
                    let _ = writeln!(out, " ({x:.2}x the baseline's time per step).");
                }
                None => out.push_str(".\n"),
            }
            let _ = writeln!(out, "\nDerived cell: `{}`", s.genotype);
        }
        out
    }
}
