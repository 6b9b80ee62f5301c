//! `sweep collect`: every complete trial's results merged into one table (mean and standard
//! deviation over seeds per game and method), the IQM of normalised scores across games with
//! stratified-bootstrap intervals (rliable's protocol, see `stats`), learning curves per game
//! from the runs' TensorBoard scalars, and the list of trials that are missing or failed.
//!
//! Nothing is averaged silently over what happens to be there: each cell says how many of its
//! planned runs it holds, and a method missing any run gets no IQM, only the list of what is
//! missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{Plan, Trial, TrialMode};
use super::plot::{plot_curves, Series};
use super::stats::{iqm, mean, std_dev, stratified_bootstrap, Interval};
use super::tfevents::read_scalars;
use super::trial::{read_status, state, TrialState};
use super::{io_err, SweepError};

/// The metrics a trial can report, in table order.
pub const METRICS: [(&str, &str); 5] = [
    ("train_return", "train levels: return"),
    ("train_normalized", "train levels: normalised"),
    ("test_return", "held-out levels: return"),
    ("test_normalized", "held-out levels: normalised"),
    ("accuracy", "accuracy"),
];

/// Metrics the IQM aggregates across games (normalised scores only: raw returns of
/// different games are not on one scale).
const AGGREGATED: [&str; 2] = ["train_normalized", "test_normalized"];

/// One model's numbers from one trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub trial: usize,
    pub env: String,
    pub method: String,
    pub seed: u64,
    pub metrics: BTreeMap<String, f64>,
    /// The run directory whose `tb/` holds this model's training curve.
    pub run_dir: PathBuf,
}

/// A (game, method) cell of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub env: String,
    pub method: String,
    /// Runs present / runs planned.
    pub runs: usize,
    pub expected: usize,
    pub seeds: Vec<u64>,
    /// metric -> (mean, sample std over seeds).
    pub metrics: BTreeMap<String, (f64, f64)>,
}

/// The IQM of one normalised metric of one method across games.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub method: String,
    pub metric: String,
    pub games: usize,
    pub runs: usize,
    /// None when some planned run is missing (see `missing`).
    pub iqm: Option<Interval>,
    pub missing: usize,
}

/// A trial that is not complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Missing {
    pub index: usize,
    pub name: String,
    /// never run | partial | failed | running | interrupted
    pub state: String,
    pub log: Option<PathBuf>,
    pub exit_code: Option<i32>,
}

/// Everything `sweep collect` found; written as collected.json and collected.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collected {
    pub plan: String,
    pub trials: usize,
    pub complete: usize,
    pub records: Vec<Record>,
    pub rows: Vec<Row>,
    pub aggregates: Vec<Aggregate>,
    pub bootstrap_reps: usize,
    pub missing: Vec<Missing>,
    pub plots: Vec<PathBuf>,
    /// Plots that could not be drawn, with why.
    pub plot_errors: Vec<String>,
}

/// Options of `collect`.
pub struct CollectOptions<'a> {
    /// Where collected.{json,md} and the PNGs go.
    pub out_dir: &'a Path,
    pub bootstrap_reps: usize,
    pub seed: u64,
    pub plots: bool,
}

#[derive(Deserialize)]
struct LevelResult {
    mean_return: f64,
    mean_normalized_return: Option<f64>,
}

#[derive(Deserialize)]
struct ComparisonRow {
    name: String,
    run_dir: PathBuf,
    train_levels: LevelResult,
    test_levels: LevelResult,
}

/// The part of the pipeline's comparison.json read here (train::pipeline::Comparison);
/// a subset, so fields added there do not break collecting.
#[derive(Deserialize)]
struct Comparison {
    rows: Vec<ComparisonRow>,
}

#[derive(Deserialize)]
struct Summary {
    mean_return: Option<f64>,
    mean_normalized_return: Option<f64>,
    val_accuracy: Option<f64>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SweepError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| SweepError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The grid label of a trial's method (`joint lr=3e-4` -> ` lr=3e-4`), for the baseline row.
fn grid_suffix(trial: &Trial) -> String {
    match trial.method.split_once(' ') {
        Some((_, label)) => format!(" {label}"),
        None => String::new(),
    }
}

/// The records of a complete trial.
fn records_of(plan: &Plan, trial: &Trial) -> Result<Vec<Record>, SweepError> {
    let record = |method: String, metrics: BTreeMap<String, f64>, run_dir: PathBuf| Record {
        trial: trial.index,
        env: trial.env.clone(),
        method,
        seed: trial.seed,
        metrics,
        run_dir,
    };
    match trial.mode {
        TrialMode::Pipeline => {
            let c: Comparison = read_json(&trial.run_dir.join("comparison.json"))?;
            Ok(c.rows
                .into_iter()
                .map(|r| {
                    let method = match r.name.as_str() {
                        "rl_darts" => trial.method.clone(),
                        "impala" => format!("impala{}", grid_suffix(trial)),
                        other => format!("{other}{}", grid_suffix(trial)),
                    };
                    let mut m = BTreeMap::new();
                    m.insert("train_return".into(), r.train_levels.mean_return);
                    m.insert("test_return".into(), r.test_levels.mean_return);
                    if let Some(v) = r.train_levels.mean_normalized_return {
                        m.insert("train_normalized".into(), v);
                    }
                    if let Some(v) = r.test_levels.mean_normalized_return {
                        m.insert("test_normalized".into(), v);
                    }
                    let dir = if r.run_dir.is_absolute() {
                        r.run_dir
                    } else {
                        plan.workdir.join(r.run_dir)
                    };
                    record(method, m, dir)
                })
                .collect())
        }
        TrialMode::Single | TrialMode::Search => {
            let s: Summary = read_json(&trial.run_dir.join("summary.json"))?;
            let mut m = BTreeMap::new();
            // A single PPO run reports its last 100 training episodes (on the training
            // levels); it has no held-out evaluation.
            if let Some(v) = s.mean_return {
                m.insert("train_return".into(), v);
            }
            if let Some(v) = s.mean_normalized_return {
                m.insert("train_normalized".into(), v);
            }
            if let Some(v) = s.val_accuracy {
                m.insert("accuracy".into(), v);
            }
            Ok(vec![record(trial.method.clone(), m, trial.run_dir.clone())])
        }
    }
}

/// How many runs each (env, method) cell should have, from the plan alone.
fn expected_cells(plan: &Plan) -> BTreeMap<(String, String), usize> {
    let mut cells = BTreeMap::new();
    for t in &plan.trials {
        *cells.entry((t.env.clone(), t.method.clone())).or_insert(0) += 1;
        if t.trains_baseline {
            *cells
                .entry((t.env.clone(), format!("impala{}", grid_suffix(t))))
                .or_insert(0) += 1;
        }
    }
    cells
}

/// Whether `method` has normalised Procgen scores of kind `metric`: pipelines evaluate on
/// training and held-out levels; a single PPO run on a Procgen game reports training episodes
/// only; classic control and vision have none.
fn normalised_metric_applies(plan: &Plan, method: &str, metric: &str) -> bool {
    plan.trials.iter().any(|t| {
        let hosts = t.method == method
            || (t.trains_baseline && format!("impala{}", grid_suffix(t)) == method);
        let procgen = crate::envs::procgen::find_game(&t.env).is_ok();
        hosts
            && procgen
            && match t.mode {
                TrialMode::Pipeline => true,
                TrialMode::Single => metric == "train_normalized",
                TrialMode::Search => false,
            }
    })
}

/// The scalar tag of a run's learning curve: the first of these that it logged.
const CURVE_TAGS: [(&str, &str); 3] = [
    ("charts/episodic_return", "episodic return (training)"),
    ("search/val_accuracy", "validation accuracy"),
    ("random/best_val_accuracy", "best validation accuracy"),
];

/// Collects `plan`'s trials (see the module docs).
pub fn collect(
    plan: &Plan,
    plan_path: &Path,
    opts: &CollectOptions<'_>,
) -> Result<Collected, SweepError> {
    let mut records = Vec::new();
    let mut missing = Vec::new();
    let mut complete = 0;
    for trial in &plan.trials {
        let st = state(trial);
        if st == TrialState::Complete {
            complete += 1;
            records.extend(records_of(plan, trial)?);
            continue;
        }
        let status = read_status(trial);
        let label = match (&status, st) {
            (Some(s), _) => s.status.clone(),
            (None, TrialState::Partial) => "partial".into(),
            (None, _) => "never run".into(),
        };
        missing.push(Missing {
            index: trial.index,
            name: trial.name.clone(),
            state: label,
            log: status.as_ref().map(|s| s.log.clone()),
            exit_code: status.and_then(|s| s.exit_code),
        });
    }

    let expected = expected_cells(plan);
    let mut rows = Vec::new();
    for ((env, method), want) in &expected {
        let mine: Vec<&Record> = records
            .iter()
            .filter(|r| &r.env == env && &r.method == method)
            .collect();
        let mut metrics = BTreeMap::new();
        for (key, _) in METRICS {
            let values: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.metrics.get(key).copied())
                .collect();
            if let (Some(m), Some(s)) = (mean(&values), std_dev(&values)) {
                metrics.insert(key.to_string(), (m, s));
            }
        }
        rows.push(Row {
            env: env.clone(),
            method: method.clone(),
            runs: mine.len(),
            expected: *want,
            seeds: mine.iter().map(|r| r.seed).collect(),
            metrics,
        });
    }

    // IQM across games per method, over every (game, seed) normalised score.
    let methods: Vec<String> = {
        let mut m: Vec<String> = expected.keys().map(|(_, m)| m.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    let mut aggregates = Vec::new();
    for method in &methods {
        let cells: Vec<&Row> = rows.iter().filter(|r| &r.method == method).collect();
        let missing_runs: usize = cells
            .iter()
            .map(|r| r.expected.saturating_sub(r.runs))
            .sum();
        for metric in AGGREGATED {
            if !normalised_metric_applies(plan, method, metric) {
                continue; // classic control or vision: no normalised score to aggregate
            }
            let per_game: Vec<Vec<f64>> = cells
                .iter()
                .map(|row| {
                    records
                        .iter()
                        .filter(|r| r.env == row.env && &r.method == method)
                        .filter_map(|r| r.metrics.get(metric).copied())
                        .collect()
                })
                .collect();
            let runs: usize = per_game.iter().map(Vec::len).sum();
            let iqm = if missing_runs == 0 {
                stratified_bootstrap(&per_game, iqm, opts.bootstrap_reps, 0.95, opts.seed)
            } else {
                None
            };
            aggregates.push(Aggregate {
                method: method.clone(),
                metric: metric.to_string(),
                games: cells.len(),
                runs,
                iqm,
                missing: missing_runs,
            });
        }
    }

    fs::create_dir_all(opts.out_dir).map_err(io_err(opts.out_dir))?;
    let mut plots = Vec::new();
    let mut plot_errors = Vec::new();
    if opts.plots {
        let envs: Vec<&String> = {
            let mut e: Vec<&String> = expected.keys().map(|(e, _)| e).collect();
            e.dedup();
            e
        };
        for env in envs {
            let mut series = Vec::new();
            let mut y_label = "";
            for method in &methods {
                let mut runs = Vec::new();
                for r in records
                    .iter()
                    .filter(|r| &r.env == env && &r.method == method)
                {
                    let scalars = match read_scalars(&r.run_dir.join("tb")) {
                        Ok(s) => s,
                        Err(e) => {
                            plot_errors.push(e.to_string());
                            continue;
                        }
                    };
                    if let Some((tag, label)) =
                        CURVE_TAGS.iter().find(|(t, _)| scalars.contains_key(*t))
                    {
                        y_label = label;
                        runs.push(scalars[*tag].clone());
                    }
                }
                if !runs.is_empty() {
                    series.push(Series {
                        method: method.clone(),
                        runs,
                    });
                }
            }
            if series.is_empty() {
                continue;
            }
            let path = opts.out_dir.join(format!("curves_{env}.png"));
            match plot_curves(&path, &format!("{env}: learning curves"), y_label, &series) {
                Ok(()) => plots.push(path),
                Err(e) => plot_errors.push(e.to_string()),
            }
        }
    }

    let collected = Collected {
        plan: plan_path.display().to_string(),
        trials: plan.trials.len(),
        complete,
        records,
        rows,
        aggregates,
        bootstrap_reps: opts.bootstrap_reps,
        missing,
        plots,
        plot_errors,
    };
    let json = opts.out_dir.join("collected.json");
    fs::write(
        &json,
        serde_json::to_string_pretty(&collected).expect("serialises"),
    )
    .map_err(io_err(&json))?;
    let md = opts.out_dir.join("collected.md");
    fs::write(&md, collected.to_markdown(&plan.name)).map_err(io_err(&md))?;
    Ok(collected)
}

impl Collected {
    /// The table, the IQM lines and the missing trials, as markdown.
    pub fn to_markdown(&self, name: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Sweep {name}: {} of {} trials complete\n",
            self.complete, self.trials
        );
        let present: Vec<(&str, &str)> = METRICS
            .iter()
            .copied()
            .filter(|(k, _)| self.rows.iter().any(|r| r.metrics.contains_key(*k)))
            .collect();
        let _ = write!(out, "| game | method | runs |");
        for (_, title) in &present {
            let _ = write!(out, " {title} |");
        }
        let _ = write!(out, "\n|---|---|---:|");
        for _ in &present {
            let _ = write!(out, "---:|");
        }
        out.push('\n');
        for r in &self.rows {
            let flag = if r.runs < r.expected {
                " (incomplete)"
            } else {
                ""
            };
            let _ = write!(
                out,
                "| {} | {} | {}/{}{flag} |",
                r.env, r.method, r.runs, r.expected
            );
            for (key, _) in &present {
                let decimals = if key.ends_with("return") { 2 } else { 3 };
                match r.metrics.get(*key) {
                    // One run has no spread to show; "± 0" would claim one.
                    Some((m, _)) if r.runs < 2 => {
                        let _ = write!(out, " {m:.decimals$} |");
                    }
                    Some((m, s)) => {
                        let _ = write!(out, " {m:.decimals$} ± {s:.decimals$} |");
                    }
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
        let mut note = String::from("\nMean ± sample standard deviation over seeds.");
        if present.iter().any(|(k, _)| k.starts_with("test")) {
            note.push_str(
                " A pipeline evaluates each model on the training levels and on held-out levels.",
            );
        }
        if present.iter().any(|(k, _)| k.starts_with("train"))
            && self.records.iter().any(|r| {
                !r.metrics.contains_key("test_return") && r.metrics.contains_key("train_return")
            })
        {
            note.push_str(
                " A single PPO run reports the mean return of its last 100 training episodes.",
            );
        }
        if present.iter().any(|(k, _)| *k == "accuracy") {
            note.push_str(" A search reports its supernet's accuracy on the search (validation) split at the end.");
        }
        let _ = writeln!(out, "{note}");
        if !self.aggregates.is_empty() {
            let _ = writeln!(
                out,
                "\n### Across games: interquartile mean of normalised scores, 95% stratified-bootstrap CI ({} resamples)\n",
                self.bootstrap_reps
            );
            let _ = writeln!(out, "| method | score | games | runs | IQM [95% CI] |");
            let _ = writeln!(out, "|---|---|---:|---:|---|");
            for a in &self.aggregates {
                let value = match (&a.iqm, a.missing) {
                    (Some(i), _) => format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.lower, i.upper),
                    (None, 0) => "-".into(),
                    (None, k) => format!("not computed: {k} planned runs missing"),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {value} |",
                    a.method, a.metric, a.games, a.runs
                );
            }
        }
        if !self.missing.is_empty() {
            let _ = writeln!(
                out,
                "\n### Missing or failed trials ({})\n",
                self.missing.len()
            );
            for m in &self.missing {
                let _ = write!(out, "- #{} {}: {}", m.index, m.name, m.state);
                if let Some(code) = m.exit_code.filter(|_| m.state == "failed") {
                    let _ = write!(out, " (exit code {code})");
                }
                if let Some(log) = &m.log {
                    let _ = write!(out, ", log {}", log.display());
                }
                out.push('\n');
            }
        }
        for p in &self.plots {
            let _ = writeln!(
                out,
                "\n![learning curves]({})",
                p.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            );
        }
        for e in &self.plot_errors {
            let _ = writeln!(out, "\nplot not drawn: {e}");
        }
        out
    }
}
