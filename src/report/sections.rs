//! The report's sections, each built from what the run directory holds; a part that is not
//! there (a stopped run has no comparison yet) becomes a "Not available" note, and is listed
//! in the page's status line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::charts::{alpha_trajectories, line_chart, Line};
use super::html::{self, Section};
use crate::train::pipeline::Comparison;

/// Scalars of one phase's TensorBoard files.
pub type Scalars = BTreeMap<String, Vec<(i64, f64)>>;

/// A training phase of the run: its name and folder (the run itself for a single run).
pub struct Phase {
    pub name: String,
    pub dir: PathBuf,
    pub scalars: Scalars,
}

/// What the sections collect as they go: the parts that were missing.
#[derive(Default)]
pub struct Missing(pub Vec<String>);

impl Missing {
    fn note(&mut self, what: String) -> String {
        let out = html::missing(&what);
        self.0.push(what);
        out
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&read(path)?).ok()
}

/// The command lines that ran the run and its resolved configuration.
pub fn command_and_config(root: &Path, missing: &mut Missing) -> Section {
    let mut body = String::from("<h3>Command</h3>\n");
    body += &match read(&root.join(super::COMMAND_FILE)) {
        Some(c) => html::pre(c.trim_end()),
        None => missing.note(format!(
            "the command ({} was not written)",
            super::COMMAND_FILE
        )),
    };
    body += "<h3>Resolved configuration</h3>\n";
    body += &match read(&root.join(crate::train::run_dir::CONFIG_FILE)) {
        Some(c) => html::pre(&c),
        None => missing.note("the resolved configuration (config.toml)".into()),
    };
    Section {
        id: "config",
        title: "Command and configuration".into(),
        body,
    }
}

fn pm(mean: f64, std: f64) -> String {
    format!("{mean:.2} ± {std:.2}")
}

fn opt_pm(mean: Option<f64>, std: Option<f64>) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
        _ => "-".into(),
    }
}

/// The pipeline's comparison table (comparison.json).
pub fn comparison(root: &Path, missing: &mut Missing) -> Section {
    let path = root.join(crate::train::pipeline::COMPARISON_JSON);
    let parsed: Option<Comparison> = read(&path).and_then(|t| serde_json::from_str(&t).ok());
    let body = match parsed {
        Some(c) => {
            let rows: Vec<Vec<String>> = c
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.encoder.clone(),
                        r.params.to_string(),
                        r.global_step.to_string(),
                        format!("{:.0}", r.steps_per_sec),
                        pm(r.train_levels.mean_return, r.train_levels.std_return),
                        pm(r.test_levels.mean_return, r.test_levels.std_return),
                        opt_pm(
                            r.train_levels.mean_normalized_return,
                            r.train_levels.std_normalized_return,
                        ),
                        opt_pm(
                            r.test_levels.mean_normalized_return,
                            r.test_levels.std_normalized_return,
                        ),
                    ]
                })
                .collect();
            let mut body = format!(
                "<p>{} (seed {}), {} episodes per model and level set; training levels {}..{}, \
                 held-out levels from {} ({}).</p>\n",
                html::text(&c.env),
                c.seed,
                c.episodes,
                c.train_levels.start_level,
                c.train_levels.start_level + c.train_levels.num_levels,
                c.test_levels.start_level,
                if c.test_levels.num_levels == 0 {
                    "the full distribution".to_string()
                } else {
                    format!("{} levels", c.test_levels.num_levels)
                }
            );
            body += &html::table(
                &[
                    "model",
                    "encoder",
                    "parameters",
                    "env steps",
                    "steps/s",
                    "return (train levels)",
                    "return (held-out levels)",
                    "normalised (train)",
                    "normalised (held-out)",
                ],
                &rows,
            );
            if let Some(s) = &c.search {
                body += &format!(
                    "<p>Searched cell: <code>{}</code>; search {} env steps at {:.0} steps/s.</p>\n",
                    html::text(&s.genotype),
                    s.global_step,
                    s.steps_per_sec
                );
            }
            body
        }
        None => missing.note(
            "the comparison table (comparison.json is not written yet: the eval phase has not \
             completed)"
                .into(),
        ),
    };
    Section {
        id: "results",
        title: "Comparison".into(),
        body,
    }
}

/// A search run's final result (summary.json).
pub fn search_result(root: &Path, missing: &mut Missing) -> Section {
    let body = match json(&root.join("summary.json")) {
        Some(serde_json::Value::Object(map)) => {
            let rows: Vec<Vec<String>> = map
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| {
                    let value = match v {
                        serde_json::Value::Number(n) => n
                            .as_f64()
                            .map(|f| {
                                if f.fract() == 0.0 {
                                    format!("{f:.0}")
                                } else {
                                    format!("{f:.4}")
                                }
                            })
                            .unwrap_or_else(|| n.to_string()),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![k.clone(), value]
                })
                .collect();
            html::table(&["", "value"], &rows)
        }
        _ => missing.note("the final result (summary.json is written when the search ends)".into()),
    };
    Section {
        id: "results",
        title: "Result".into(),
        body,
    }
}

/// Mean of the values logged at each step (episodes ending in one PPO iteration share it).
fn per_step_mean(points: &[(i64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for &(step, v) in points {
        match out.last_mut() {
            Some(last) if last.0 == step as f64 => {
                last.1 += v;
                last.2 += 1;
            }
            _ => out.push((step as f64, v, 1)),
        }
    }
    out.into_iter().map(|(s, v, n)| (s, v / n as f64)).collect()
}

/// Charts of `tags` over every phase that logged them, one line per (phase, tag).
fn chart_of(phases: &[Phase], tags: &[&str], title: &str, x: &str, y: &str) -> Option<String> {
    let lines: Vec<Line> = phases
        .iter()
        .flat_map(|p| {
            tags.iter().filter_map(move |t| {
                p.scalars.get(*t).map(|points| Line {
                    name: format!("{}: {t}", p.name),
                    points: per_step_mean(points),
                })
            })
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(match line_chart(title, x, y, &lines) {
        Ok(svg) => html::inline_svg(&svg, title),
        Err(e) => html::missing(&format!("{title} ({e})")),
    })
}

/// Learning curves: return (RL), accuracy and loss (supervised and transformer searches).
pub fn learning_curves(phases: &[Phase], missing: &mut Missing) -> Section {
    let charts = [
        (
            &["charts/episodic_return", "search/episodic_return"][..],
            "Episodic return during training (search envs: held-out or split levels)",
            "env step",
            "return",
        ),
        (
            &[
                "search/train_accuracy",
                "search/val_accuracy",
                "search/val_token_accuracy",
                "search/val_exact_match",
            ][..],
            "Accuracy",
            "step",
            "accuracy",
        ),
        (
            &["search/train_loss", "search/val_loss"][..],
            "Loss",
            "step",
            "loss",
        ),
    ];
    let body: String = charts
        .iter()
        .filter_map(|(tags, title, x, y)| chart_of(phases, tags, title, x, y))
        .collect();
    Section {
        id: "curves",
        title: "Learning curves".into(),
        body: if body.is_empty() {
            missing
                .note("learning curves (no training scalars in the TensorBoard files yet)".into())
        } else {
            body
        },
    }
}

/// Diagram files of the derived cells in `dir`, rendering them from genotype.json (or the
/// transformer's genotype.dot) with Graphviz when the run did not.
fn cell_figures(dir: &Path) -> Vec<String> {
    let mut figs = Vec::new();
    for cell in ["normal", "reduce"] {
        let svg = dir.join(format!("genotype_{cell}.svg"));
        let png = dir.join(format!("genotype_{cell}.png"));
        let caption = format!("{cell} cell");
        if let Some(s) = read(&svg) {
            figs.push(html::inline_svg(&s, &caption));
        } else if let Ok(bytes) = std::fs::read(&png) {
            figs.push(html::png_image(&bytes, &caption));
        } else if let Some(svg_text) = render_from_genotype(dir, cell) {
            figs.push(html::inline_svg(&svg_text, &caption));
        }
    }
    if figs.is_empty() {
        if let Some(dot) = read(&dir.join("genotype.dot")) {
            let out = dir.join("genotype.svg");
            if crate::nas::genotype::render_dot(&dot, &out).is_ok() {
                if let Some(s) = read(&out) {
                    figs.push(html::inline_svg(&s, "derived architecture"));
                }
            }
        }
    }
    figs
}

fn render_from_genotype(dir: &Path, cell: &str) -> Option<String> {
    let g = crate::nas::Genotype::load(dir.join("genotype.json")).ok()?;
    let (kind, genes) = match cell {
        "normal" => (crate::nas::CellType::Normal, &g.normal),
        _ => (crate::nas::CellType::Reduce, &g.reduce),
    };
    if genes.is_empty() {
        return None;
    }
    // Two-input cells (DARTS) have a gene reading input 1 in their first node.
    let num_inputs = if g
        .normal
        .first()
        .is_some_and(|n| n.iter().any(|&(_, i)| i == 1))
    {
        2
    } else {
        1
    };
    let out = dir.join(format!("genotype_{cell}.svg"));
    crate::nas::genotype::render_dot(&g.to_dot(kind, num_inputs), &out).ok()?;
    read(&out)
}

/// The derived cells' diagrams and their DARTS text form.
pub fn cells(search_dir: &Path, missing: &mut Missing) -> Section {
    let mut body = String::new();
    if let Some(t) = read(&search_dir.join("genotype.txt")) {
        body += &html::pre(t.trim_end());
    }
    let figs = cell_figures(search_dir);
    body += &if figs.is_empty() {
        missing.note("the derived cells' diagrams (no genotype yet, or Graphviz is missing)".into())
    } else {
        figs.concat()
    };
    if let Some(stop) = read(&search_dir.join(crate::train::health::EARLY_STOP_FILE))
        .and_then(|t| serde_json::from_str::<crate::train::health::EarlyStop>(&t).ok())
    {
        body += &format!(
            "<p><strong>Early stop.</strong> {}</p>\n",
            html::text(&stop.reason())
        );
    }
    Section {
        id: "cells",
        title: "Derived cells".into(),
        body,
    }
}

/// The alpha trajectories, from the search phase's `arch/` scalars.
pub fn trajectories(search: Option<&Phase>, missing: &mut Missing) -> Section {
    let pictures = search
        .map(|p| alpha_trajectories(&p.scalars, &p.dir))
        .unwrap_or_default();
    let body = if pictures.is_empty() {
        missing.note("alpha trajectories (no arch/ scalars logged)".into())
    } else {
        pictures
            .into_iter()
            .map(|(cell, svg)| match svg {
                Ok(svg) => html::inline_svg(&svg, &format!("{cell} cell: op weights per edge")),
                Err(e) => html::missing(&format!("{cell} trajectories ({e})")),
            })
            .collect()
    };
    Section {
        id: "alphas",
        title: "Alpha trajectories".into(),
        body,
    }
}

/// Search health: eigenvalue, entropies, parameter-free share.
pub fn health(search: Option<&Phase>, missing: &mut Missing) -> Section {
    let phases: Vec<&Phase> = search.into_iter().collect();
    let owned: Vec<Phase> = phases
        .iter()
        .map(|p| Phase {
            name: p.name.clone(),
            dir: p.dir.clone(),
            scalars: p
                .scalars
                .iter()
                .filter(|(k, _)| k.starts_with("health/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect();
    let charts = [
        (
            &["health/eigenvalue"][..],
            "Dominant eigenvalue of the alpha Hessian",
            "eigenvalue",
        ),
        (
            &["health/normal/entropy", "health/reduce/entropy"][..],
            "Mean op-choice entropy per cell type",
            "nats",
        ),
        (
            &[
                "health/normal/parameter_free_share",
                "health/reduce/parameter_free_share",
            ][..],
            "Share of parameter-free ops in the derived cell",
            "share",
        ),
    ];
    let body: String = charts
        .iter()
        .filter_map(|(tags, title, y)| chart_of(&owned, tags, title, "step", y))
        .collect();
    Section {
        id: "health",
        title: "Search health".into(),
        body: if body.is_empty() {
            missing.note(
                "search-health curves (no health/ scalars: search.health.every = 0, or no \
                 measurement yet)"
                    .into(),
            )
        } else {
            body
        },
    }
}

/// Steps per second over training and the memory plan.
pub fn speed_and_memory(phases: &[Phase], missing: &mut Missing) -> Section {
    let mut body = chart_of(
        phases,
        &["charts/SPS"],
        "Env steps per second",
        "env step",
        "steps/s",
    )
    .unwrap_or_default();
    // A vision or transformer search has no env steps: its images per second and the
    // process's peak memory per epoch instead.
    for (tag, title, y) in [
        (
            "search/images_per_sec",
            "Search: training images per second",
            "images/s",
        ),
        ("perf/peak_rss_gib", "Peak resident memory", "GiB"),
    ] {
        body += &chart_of(phases, &[tag], title, "epoch", y).unwrap_or_default();
    }
    let rows: Vec<Vec<String>> = phases
        .iter()
        .filter_map(|p| {
            let s = json(&p.dir.join("summary.json"))?;
            let num = |k: &str| s.get(k).and_then(|v| v.as_f64());
            Some(vec![
                p.name.clone(),
                num("global_step")
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("-".into()),
                num("steps_per_sec")
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or("-".into()),
                num("seconds")
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or("-".into()),
            ])
        })
        .collect();
    if !rows.is_empty() {
        body += &html::table(&["phase", "env steps", "steps/s", "seconds"], &rows);
    }
    for p in phases {
        if let Some(plan) = read(&p.dir.join("memory_plan.json")) {
            body += &format!(
                "<h3>Memory plan ({})</h3>\n{}",
                html::text(&p.name),
                html::pre(&plan)
            );
        }
    }
    Section {
        id: "speed",
        title: "Speed and memory".into(),
        body: if body.is_empty() {
            missing.note("steps/s and memory (no summary or SPS scalars yet)".into())
        } else {
            body
        },
    }
}
