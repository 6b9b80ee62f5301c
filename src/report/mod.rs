//! A self-contained run report, `report.html`: the command and the resolved config, the
//! comparison table (pipeline) or the final result (search), learning curves, the derived
//! cells, the alpha trajectories, the search-health curves, steps/s and memory, all read from
//! what the run directory holds (JSON files, Graphviz diagrams, the TensorBoard event files
//! via [`crate::sweep::tfevents::read_scalars`]). Inline SVG (plotters' SVG backend) and CSS,
//! PNGs as data URIs, no script, no network: the file alone shows the run. Written at the end
//! of every pipeline and search run (also a stopped one) and rebuilt by `rl-darts report`.

pub mod charts;
pub mod html;
pub mod sections;

use std::io::Write;
use std::path::{Path, PathBuf};

use sections::{Missing, Phase};

/// The report's file name in a run directory.
pub const REPORT_FILE: &str = "report.html";
/// The command lines that worked on a run, one per invocation.
pub const COMMAND_FILE: &str = "command.txt";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0} is not a run directory (no config.toml, tb/ or pipeline.json in it)")]
    NotARun(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutcome {
    pub path: PathBuf,
    /// The parts the run did not (yet) have.
    pub missing: Vec<String>,
}

/// Appends this process's command line to `command.txt` in `dir` (each invocation that
/// works on a run, resumes included, adds a line).
pub fn record_command(dir: &Path) {
    let line: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let path = dir.join(COMMAND_FILE);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{}", line.join(" ")));
    if let Err(e) = written {
        eprintln!(
            "warning: could not record the command in {}: {e}",
            path.display()
        );
    }
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn phase(name: &str, dir: PathBuf) -> Phase {
    let tb = dir.join(crate::train::run_dir::TENSORBOARD_DIR);
    // A phase that has not started has no events: an empty series, reported as missing.
    let scalars = crate::sweep::tfevents::read_scalars(&tb).unwrap_or_default();
    Phase {
        name: name.to_string(),
        dir,
        scalars,
    }
}

/// Builds `report.html` in the run directory `root` (a pipeline run or a single search or
/// training run) from what is on disk.
pub fn write_report(root: &Path) -> Result<ReportOutcome, ReportError> {
    let is_pipeline = crate::train::pipeline::is_pipeline_run(root);
    let is_run = root.join(crate::train::run_dir::CONFIG_FILE).is_file()
        || root.join(crate::train::run_dir::TENSORBOARD_DIR).is_dir();
    if !is_pipeline && !is_run {
        return Err(ReportError::NotARun(root.to_path_buf()));
    }
    let mut missing = Missing::default();
    let (phases, search_index, result) = if is_pipeline {
        use crate::train::pipeline::{BASELINE_DIR, RETRAIN_DIR, SEARCH_DIR};
        let phases: Vec<Phase> = [SEARCH_DIR, RETRAIN_DIR, BASELINE_DIR]
            .into_iter()
            .filter_map(|name| {
                let dir = root.join(name);
                if dir.is_dir() {
                    Some(phase(name, dir))
                } else {
                    missing.0.push(format!("the {name} phase (not started)"));
                    None
                }
            })
            .collect();
        let search = phases.iter().position(|p| p.name == SEARCH_DIR);
        let result = sections::comparison(root, &mut missing);
        (phases, search, result)
    } else {
        let phases = vec![phase("run", root.to_path_buf())];
        let result = sections::search_result(root, &mut missing);
        (phases, Some(0), result)
    };
    let search = search_index.map(|i| &phases[i]);
    let search_dir = search.map_or_else(|| root.to_path_buf(), |p| p.dir.clone());
    let list = vec![
        sections::command_and_config(root, &mut missing),
        result,
        sections::learning_curves(&phases, &mut missing),
        sections::cells(&search_dir, &mut missing),
        sections::trajectories(search, &mut missing),
        sections::health(search, &mut missing),
        sections::speed_and_memory(&phases, &mut missing),
    ];
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| root.display().to_string());
    let kind = if is_pipeline { "pipeline run" } else { "run" };
    let status = if missing.0.is_empty() {
        "Complete: every part of the report is present.".to_string()
    } else {
        format!(
            "Incomplete (a stopped or unfinished run); missing: {}.",
            missing.0.join("; ")
        )
    };
    let page = html::page(
        &format!("rl-darts {kind}: {name}"),
        &status,
        missing.0.is_empty(),
        &list,
    );
    let path = root.join(REPORT_FILE);
    std::fs::write(&path, page).map_err(|source| ReportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(ReportOutcome {
        path,
        missing: missing.0,
    })
}

/// [`write_report`] at the end of a run: a failure is a warning, never the end of the run.
pub fn write_report_or_warn(root: &Path) {
    match write_report(root) {
        Ok(outcome) => eprintln!("report: {}", outcome.path.display()),
        Err(e) => eprintln!("warning: no report.html ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_plain_words() {
        assert_eq!(shell_quote("--set"), "--set");
        assert_eq!(shell_quote("a=b.c"), "a=b.c");
        assert_eq!(shell_quote("x y"), "'x y'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    /// A stopped pipeline (search phase only, no comparison) still gets a page that names
    /// what is missing.
    #[test]
    fn a_stopped_pipeline_report_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(crate::train::pipeline::PIPELINE_FILE), "{}").unwrap();
        std::fs::write(root.join("config.toml"), "env = \"coinrun\"\n").unwrap();
        std::fs::create_dir_all(root.join("search")).unwrap();
        let outcome = write_report(root).unwrap();
        let page = std::fs::read_to_string(&outcome.path).unwrap();
        assert!(page.contains("Incomplete"), "status line");
        assert!(
            page.contains("comparison.json is not written yet"),
            "{page}"
        );
        assert!(page.contains("the retrain phase (not started)"));
        assert!(
            page.contains("env = &quot;coinrun&quot;"),
            "config escaped and shown"
        );
        assert!(!page.contains("<script"));
    }

    #[test]
    fn a_folder_that_is_no_run_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_report(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a run directory"), "{e}");
    }
}
