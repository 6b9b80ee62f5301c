//! The plan a sweep spec expands to: one trial per point of the grid env x config-key values x
//! strategy x seed, each with a deterministic run-directory name and the exact command line
//! that runs it.
//!
//! The plan is a JSON file written once by `rl-darts sweep plan`; every runner reads the same
//! file, so trial `I` means the same run on a laptop, a Ray worker or a Slurm array task.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{flatten, toml_literal, BaselinePolicy, Resources, SweepKind, SweepSpec};
use super::{io_err, SweepError};
use crate::envs::gym::GYM_ENVS;
use crate::envs::procgen::find_game;
use crate::train::launch::wants_pipeline;

/// Format version of the plan file; bumped when a field changes meaning.
pub const PLAN_VERSION: u32 = 1;

/// How a trial's run directory is run and resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialMode {
    /// `rl-darts train` on a Procgen game without `--encoder`: search, retrain, baseline, eval;
    /// complete once `comparison.json` exists.
    Pipeline,
    /// `rl-darts train --encoder ...` (or classic control): one PPO run; complete once
    /// `summary.json` says it was not interrupted.
    Single,
    /// `rl-darts search`: complete once `summary.json` says it was not interrupted.
    Search,
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub index: usize,
    /// The run directory's name: `{env}__{method}__{seed}[__{grid point}]`.
    pub name: String,
    /// Game, classic-control env, or data set of a search.
    pub env: String,
    /// The method this trial stands for in the table: the strategy, else the encoder, plus
    /// the grid point (`joint lr=0.0003`).
    pub method: String,
    pub seed: u64,
    pub strategy: Option<String>,
    /// The grid point: config key -> TOML literal.
    pub grid: BTreeMap<String, String>,
    pub mode: TrialMode,
    /// Whether this pipeline trial trains the IMPALA-CNN baseline.
    pub trains_baseline: bool,
    pub run_dir: PathBuf,
    /// `rl-darts` arguments of a fresh start (without the program name).
    pub args: Vec<String>,
    /// `rl-darts` arguments that continue a partial run directory.
    pub resume_args: Vec<String>,
}

/// The plan file: everything a runner needs, with absolute paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub name: String,
    pub kind: SweepKind,
    /// Folder holding every trial's run directory.
    pub out_dir: PathBuf,
    /// Working directory of every trial (relative paths in configs, e.g. `.deps/digits`,
    /// resolve against it).
    pub workdir: PathBuf,
    pub resources: Resources,
    /// The `--set`s common to all trials, for the record.
    pub set: BTreeMap<String, String>,
    pub trials: Vec<Trial>,
}

fn spec_err(msg: impl Into<String>) -> SweepError {
    SweepError::Spec(msg.into())
}

/// A run-directory-safe rendering of a grid point: `learning_rate-0.0003`.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

/// The short label of a grid point: last key segment and value (`learning_rate=0.0003`).
fn grid_label(point: &BTreeMap<String, String>) -> String {
    point
        .iter()
        .map(|(k, v)| {
            let short = k.rsplit('.').next().unwrap_or(k);
            format!("{short}={}", v.trim_matches('"'))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The cartesian product of the grid, in key order then value order.
fn grid_points(grid: &BTreeMap<String, Vec<toml::Value>>) -> Vec<BTreeMap<String, String>> {
    let mut points = vec![BTreeMap::new()];
    for (key, values) in grid {
        let mut next = Vec::with_capacity(points.len() * values.len());
        for point in &points {
            for v in values {
                let mut p = point.clone();
                p.insert(key.clone(), toml_literal(v));
                next.push(p);
            }
        }
        points = next;
    }
    points
}

/// Reads `encoder.kind` and `data.dataset` from a config file, to decide the trial mode and
/// the label of a search's data set before any trial runs.
fn peek(config: Option<&Path>, keys: &[&str]) -> Result<Option<String>, SweepError> {
    let Some(path) = config else { return Ok(None) };
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| SweepError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut value = table.get(keys[0]);
    for k in &keys[1..] {
        value = value.and_then(|v| v.get(*k));
    }
    Ok(value.and_then(|v| v.as_str()).map(str::to_string))
}

fn absolute(path: &Path, workdir: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workdir.join(path)
    }
}

impl Plan {
    /// Expands `spec` into trials. `workdir` is where relative paths in the spec resolve and
    /// where trials will run (normally the current directory).
    pub fn build(spec: &SweepSpec, workdir: &Path) -> Result<Plan, SweepError> {
        let name = spec.name.clone().unwrap_or_else(|| "sweep".to_string());
        if sanitize(&name) != name {
            return Err(spec_err(format!(
                "name {name:?} must use only letters, digits, '.', '-', '_' (it names folders and the Slurm job)"
            )));
        }
        if spec.seeds.is_empty() {
            return Err(spec_err(
                "no seeds: give `seeds = [1, 2, 3]` or --seeds 1,2,3",
            ));
        }
        if spec.resources.cpus_per_trial == 0 {
            return Err(spec_err("resources.cpus_per_trial must be at least 1"));
        }
        let mut seen_seeds = spec.seeds.clone();
        seen_seeds.sort_unstable();
        seen_seeds.dedup();
        if seen_seeds.len() != spec.seeds.len() {
            return Err(spec_err("seeds repeat a value"));
        }
        if spec.quick && spec.config.is_some() {
            return Err(spec_err(
                "`quick` and `config` exclude each other (quick is configs/coinrun-darts-quick.toml)",
            ));
        }
        for s in &spec.strategies {
            crate::search::StrategyConfig::from_name(s).map_err(|e| spec_err(e.to_string()))?;
        }
        let config = spec.config.as_deref().map(|c| absolute(c, workdir));
        if let Some(c) = &config {
            if !c.is_file() {
                return Err(spec_err(format!("config {} not found", c.display())));
            }
        }
        let out_dir = absolute(
            &spec
                .out_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{name}"))),
            workdir,
        );
        let mut set = BTreeMap::new();
        flatten("", &spec.set, &mut set);
        let mut grid_raw = BTreeMap::new();
        flatten("", &spec.grid, &mut grid_raw);
        let mut grid = BTreeMap::new();
        for (key, value) in grid_raw {
            match value {
                toml::Value::Array(values) if !values.is_empty() => {
                    grid.insert(key, values);
                }
                _ => {
                    return Err(spec_err(format!(
                    "grid key `{key}` needs a non-empty array of values, e.g. \"{key}\" = [1, 2]"
                )))
                }
            }
        }
        for key in grid.keys() {
            if set.contains_key(key) {
                return Err(spec_err(format!(
                    "`{key}` is both in [set] and in [grid]; keep it in one"
                )));
            }
        }
        let set: BTreeMap<String, String> = set
            .iter()
            .map(|(k, v)| (k.clone(), toml_literal(v)))
            .collect();
        let set_args: Vec<String> = set
            .iter()
            .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
            .collect();

        let envs: Vec<String> = match spec.kind {
            SweepKind::Train => {
                if spec.envs.is_empty() {
                    return Err(spec_err(
                        "no envs: give `envs = [\"coinrun\"]` or --env coinrun",
                    ));
                }
                for env in &spec.envs {
                    if !GYM_ENVS.contains(&env.as_str()) {
                        find_game(env).map_err(|e| spec_err(e.to_string()))?;
                    }
                }
                spec.envs.clone()
            }
            SweepKind::Search => {
                if !spec.envs.is_empty() || spec.encoder.is_some() || spec.quick {
                    return Err(spec_err(
                        "a search sweep takes its data set from `config`; drop envs, encoder and quick",
                    ));
                }
                let dataset = peek(config.as_deref(), &["data", "dataset"])?
                    .unwrap_or_else(|| "digits".to_string());
                vec![dataset]
            }
        };
        let config_encoder = peek(config.as_deref(), &["encoder", "kind"])?;
        let strategies: Vec<Option<String>> = if spec.strategies.is_empty() {
            vec![None]
        } else {
            spec.strategies.iter().cloned().map(Some).collect()
        };

        let mut trials = Vec::new();
        for env in &envs {
            let mode = match spec.kind {
                SweepKind::Search => TrialMode::Search,
                SweepKind::Train => {
                    if wants_pipeline(env, spec.encoder.as_deref(), config_encoder.as_deref()) {
                        TrialMode::Pipeline
                    } else {
                        TrialMode::Single
                    }
                }
            };
            for point in grid_points(&grid) {
                for (si, strategy) in strategies.iter().enumerate() {
                    for &seed in &spec.seeds {
                        let base_method = strategy
                            .clone()
                            .or_else(|| spec.encoder.clone())
                            .or_else(|| config_encoder.clone())
                            .unwrap_or_else(|| match mode {
                                TrialMode::Pipeline => "joint".into(),
                                TrialMode::Single => "default".into(),
                                TrialMode::Search => "config".into(),
                            });
                        let label = grid_label(&point);
                        let method = if label.is_empty() {
                            base_method.clone()
                        } else {
                            format!("{base_method} {label}")
                        };
                        let mut trial_name = format!("{env}__{base_method}__{seed}");
                        if !label.is_empty() {
                            trial_name.push_str("__");
                            trial_name.push_str(&sanitize(&label));
                        }
                        let run_dir = out_dir.join(&trial_name);
                        let trains_baseline = mode == TrialMode::Pipeline
                            && match spec.baseline {
                                BaselinePolicy::Once => si == 0,
                                BaselinePolicy::Every => true,
                                BaselinePolicy::None => false,
                            };
                        let grid_args = point
                            .iter()
                            .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]);
                        let mut args: Vec<String> = Vec::new();
                        match mode {
                            TrialMode::Pipeline | TrialMode::Single => {
                                args.extend(["train".into(), "--env".into(), env.clone()]);
                                if let Some(e) = &spec.encoder {
                                    args.extend(["--encoder".into(), e.clone()]);
                                }
                                if let Some(s) = strategy {
                                    args.extend(["--strategy".into(), s.clone()]);
                                }
                                if spec.quick {
                                    args.push("--quick".into());
                                }
                                if let Some(c) = &config {
                                    args.extend(["--config".into(), c.display().to_string()]);
                                }
                                args.extend(["--seed".into(), seed.to_string()]);
                                if mode == TrialMode::Pipeline && !trains_baseline {
                                    args.push("--skip-baseline".into());
                                }
                            }
                            TrialMode::Search => {
                                args.push("search".into());
                                if let Some(c) = &config {
                                    args.extend(["--config".into(), c.display().to_string()]);
                                }
                                args.extend(["--set".into(), format!("seed={seed}")]);
                                if let Some(s) = strategy {
                                    // The whole table, so the strategy starts from its own
                                    // default params (as `train --strategy` does).
                                    args.extend([
                                        "--set".into(),
                                        format!("search.strategy={{ kind = {s:?} }}"),
                                    ]);
                                }
                            }
                        }
                        args.extend(set_args.iter().cloned());
                        args.extend(grid_args);
                        args.extend([
                            "--run-dir".into(),
                            run_dir.display().to_string(),
                            "--quiet".into(),
                        ]);
                        let command = if mode == TrialMode::Search {
                            "search"
                        } else {
                            "train"
                        };
                        let resume_args = vec![
                            command.to_string(),
                            "--resume".into(),
                            run_dir.display().to_string(),
                            "--quiet".into(),
                        ];
                        trials.push(Trial {
                            index: trials.len(),
                            name: trial_name,
                            env: env.clone(),
                            method,
                            seed,
                            strategy: strategy.clone(),
                            grid: point.clone(),
                            mode,
                            trains_baseline,
                            run_dir,
                            args,
                            resume_args,
                        });
                    }
                }
            }
        }
        // Two grid values that sanitise alike (`a/b`, `a-b`) would share a run directory.
        let mut names: Vec<&str> = trials.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(spec_err(format!(
                "two trials would share the run directory {:?}; make the grid values differ in letters or digits",
                w[0]
            )));
        }
        Ok(Plan {
            version: PLAN_VERSION,
            name,
            kind: spec.kind,
            out_dir,
            workdir: workdir.to_path_buf(),
            resources: spec.resources.clone(),
            set,
            trials,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), SweepError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let text = serde_json::to_string_pretty(self).expect("a plan serialises");
        // Written whole then renamed: a runner never reads half a plan.
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }

    pub fn load(path: &Path) -> Result<Plan, SweepError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let plan: Plan = serde_json::from_str(&text).map_err(|e| SweepError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if plan.version != PLAN_VERSION {
            return Err(SweepError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "plan version {} but this binary reads version {PLAN_VERSION}; plan the sweep again",
                    plan.version
                ),
            });
        }
        Ok(plan)
    }

    pub fn trial(&self, index: usize, plan_path: &Path) -> Result<&Trial, SweepError> {
        self.trials
            .get(index)
            .ok_or_else(|| SweepError::IndexOutOfRange {
                index,
                len: self.trials.len(),
                plan: plan_path.to_path_buf(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SweepSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn grid_is_the_product_in_a_fixed_order() {
        let s = spec(
            r#"
            envs = ["coinrun", "starpilot"]
            seeds = [1, 2]
            strategies = ["joint", "random"]
            quick = true
            [grid]
            "ppo.learning_rate" = [3e-4, 5e-4]
            "#,
        );
        let plan = Plan::build(&s, Path::new("/w")).unwrap();
        assert_eq!(plan.trials.len(), 2 * 2 * 2 * 2);
        let t = &plan.trials[0];
        assert_eq!(t.name, "coinrun__joint__1__learning_rate-0.0003");
        assert_eq!(t.mode, TrialMode::Pipeline);
        assert!(t.trains_baseline);
        assert!(t.args.contains(&"ppo.learning_rate=0.0003".to_string()));
        // Seeds vary fastest, then strategies; the second strategy skips the baseline.
        assert_eq!(plan.trials[1].seed, 2);
        assert_eq!(plan.trials[2].strategy.as_deref(), Some("random"));
        assert!(plan.trials[2].args.contains(&"--skip-baseline".to_string()));
        assert!(!plan.trials[2].trains_baseline);
        // Planning twice gives the same plan (names are deterministic, no time in them).
        assert_eq!(plan, Plan::build(&s, Path::new("/w")).unwrap());
        assert_eq!(plan.out_dir, Path::new("/w/runs/sweep-sweep"));
    }

    #[test]
    fn nested_set_tables_are_dotted_keys() {
        let s = spec(
            r#"
            envs = ["cartpole"]
            seeds = [0]
            [set]
            ppo.total_timesteps = 512
            "ppo.num_envs" = 2
            "#,
        );
        let plan = Plan::build(&s, Path::new("/w")).unwrap();
        let t = &plan.trials[0];
        assert_eq!(t.mode, TrialMode::Single);
        assert!(t.args.contains(&"ppo.total_timesteps=512".to_string()));
        assert!(t.args.contains(&"ppo.num_envs=2".to_string()));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = |text: &str| {
            Plan::build(&spec(text), Path::new("/w"))
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"envs = ["coinrun"]"#).contains("no seeds"));
        assert!(err("seeds = [1]").contains("no envs"));
        assert!(err(r#"envs = ["coinrnu"]
seeds = [1]"#)
        .contains("coinrun"));
        assert!(err(r#"envs = ["coinrun"]
seeds = [1]
strategies = ["jiont"]"#)
        .contains("joint"));
        assert!(err(r#"envs = ["coinrun"]
seeds = [1]
[grid]
"ppo.gamma" = 0.99"#)
        .contains("array"));
        assert!(toml::from_str::<SweepSpec>("sedes = [1]").is_err());
    }

    #[test]
    fn string_values_round_trip_through_set_literals() {
        let v = toml::Value::String("a b".into());
        assert_eq!(toml_literal(&v), "\"a b\"");
        let t: toml::Table = toml::from_str("x = { kind = \"gdas\" }").unwrap();
        let lit = toml_literal(&t["x"]);
        let back: toml::Table = toml::from_str(&format!("v = {lit}")).unwrap();
        assert_eq!(back["v"], t["x"]);
    }
}
