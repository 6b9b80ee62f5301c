//! The RL-DARTS pipeline (`rl-darts train --env coinrun` without --encoder) end to end on the
//! quick preset shrunk further: every phase through the CLI (`--phase search`, then
//! `--resume`), a run stopped in the middle of each phase and resumed that ends with the same
//! genotype and table as an uninterrupted one, and a reused or skipped baseline.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rl_darts::config::ConfigFile;
use rl_darts::logging::{tags, MemorySink, MetricsSink};
use rl_darts::nas::Genotype;
use rl_darts::search::{RandomParams, StrategyConfig};
use rl_darts::train::pipeline::PipelineRunConfig;
use rl_darts::train::pipeline::{
    self, Comparison, PipelineOutcome, PipelinePhase, PipelineReporter, PipelineRun,
    RandomCandidate,
};
use rl_darts::train::rl::{NoProgress, Progress};

/// The quick preset shrunk so that one pipeline takes seconds: 2 envs x 16 steps per PPO
/// iteration, 3 search and 2 retrain iterations, a 2-stage supernet of 4 channels and 2 nodes.
const TINY: &[&str] = &[
    "device=\"cpu\"",
    "torch_threads=1",
    "ppo.num_envs=2",
    "ppo.num_steps=16",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=1",
    "procgen.num_threads=1",
    "checkpoint.every=1",
    "encoder.params.supernet.channels=[4, 4]",
    "encoder.params.supernet.num_nodes=2",
    "encoder.params.supernet.embedding=16",
    "pipeline.search_timesteps=96",
    "pipeline.retrain_timesteps=64",
    "pipeline.baseline_encoder.channels=[4, 4]",
    "pipeline.baseline_encoder.embedding=16",
    "pipeline.eval.episodes=2",
    "pipeline.eval.num_envs=2",
];

fn quick_preset() -> PathBuf {
    common::repo_root().join("configs/coinrun-darts-quick.toml")
}

fn tiny_config() -> PipelineRunConfig {
    let sets: Vec<String> = TINY.iter().map(|s| s.to_string()).collect();
    let file = ConfigFile::read(&quick_preset()).unwrap();
    PipelineRunConfig::load(Some(&file), pipeline::pipeline_defaults("coinrun"), &sets).unwrap()
}

fn cli(args: &[&str]) -> std::process::Output {
    common::rl_darts().args(args).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn comparison(root: &Path) -> Comparison {
    serde_json::from_slice(&std::fs::read(root.join("comparison.json")).unwrap()).unwrap()
}

fn check_table(c: &Comparison, models: &[&str]) {
    let names: Vec<&str> = c.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, models);
    for r in &c.rows {
        assert!(
            r.params > 0 && r.steps_per_sec.is_finite() && r.steps_per_sec > 0.0,
            "{r:?}"
        );
        for l in [&r.train_levels, &r.test_levels] {
            assert_eq!(l.episodes, 2);
            let numbers = [
                l.mean_return,
                l.std_return,
                l.mean_normalized_return.unwrap(),
                l.std_normalized_return.unwrap(),
            ];
            assert!(numbers.iter().all(|x| x.is_finite()), "{l:?}");
        }
        assert_eq!(
            (
                r.train_levels.levels.num_levels,
                r.train_levels.levels.start_level
            ),
            (200, 0)
        );
        // Held out: the full distribution, start level past the training range.
        assert_eq!(
            (
                r.test_levels.levels.num_levels,
                r.test_levels.levels.start_level
            ),
            (0, 200)
        );
    }
    let search = c.search.as_ref().unwrap();
    assert_eq!(search.global_step, 96);
    assert!(search.params > 0 && search.steps_per_sec > 0.0);
}

#[test]
fn cli_runs_the_search_phase_then_resumes_through_every_other_phase() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("run");
    let sets: Vec<String> = TINY
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();

    let mut args = vec![
        "train",
        "--quick",
        "--quiet",
        "--phase",
        "search",
        "--run-dir",
    ];
    args.push(root.to_str().unwrap());
    args.extend(&sets);
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("[search]") && shown.contains("phase search complete"),
        "{shown}"
    );
    assert!(pipeline::is_pipeline_run(&root));
    assert!(!root.join("retrain").exists());

    // The derived cell: JSON, DARTS text and diagrams per cell type, all of one genotype.
    let search = root.join("search");
    let genotype = Genotype::load(search.join("genotype.json")).unwrap();
    let text_form = std::fs::read_to_string(search.join("genotype.txt")).unwrap();
    assert_eq!(Genotype::parse_any(text_form.trim()).unwrap(), genotype);
    assert!(
        !genotype.reduce.is_empty(),
        "the standard layout has reduction cells"
    );
    for cell in ["normal", "reduce"] {
        let dot = std::fs::read_to_string(search.join(format!("genotype_{cell}.dot"))).unwrap();
        assert!(dot.starts_with(&format!("digraph {cell}")), "{dot}");
        let png = std::fs::read(search.join(format!("genotype_{cell}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(search.join(format!("genotype_{cell}.svg"))).unwrap();
        assert!(svg.contains("<svg"));
    }

    // Eval before retraining is refused with a way forward.
    let out = common::rl_darts()
        .args(["train", "--phase", "eval", "--resume"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("needs the retrain phase"),
        "{}",
        text(&out)
    );

    let out = common::rl_darts()
        .args(["train", "--quiet", "--resume"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    for needle in [
        "[search] already complete",
        "[retrain]",
        "[baseline]",
        "[eval]",
        "| RL-DARTS cell, retrained |",
        "| IMPALA-CNN baseline |",
    ] {
        assert!(shown.contains(needle), "no {needle:?} in\n{shown}");
    }
    let c = comparison(&root);
    check_table(&c, &["rl_darts", "impala"]);
    assert!(c.rows.iter().all(|r| r.global_step == 64));
    assert_eq!(c.rows[0].encoder, "rl_darts_fixed");
    assert!(c.search_overhead.is_some_and(|x| x.is_finite() && x > 0.0));
    let md = std::fs::read_to_string(root.join("comparison.md")).unwrap();
    assert!(md.contains("| IMPALA-CNN baseline |"), "{md}");
    // The table is in TensorBoard as text, in the eval phase's event file.
    assert!(std::fs::read_dir(root.join("eval/tb")).unwrap().count() > 0);
    let status = std::fs::read_to_string(root.join("pipeline.json")).unwrap();
    assert_eq!(status.matches("\"complete\"").count(), 3, "{status}");
}

/// Records each phase's metrics; sets the stop flag (as Ctrl-C does) at the first flush of
/// the run labelled `stop_in`.
struct Reporter {
    stop_in: Option<&'static str>,
    stop: Arc<AtomicBool>,
    sinks: Vec<(String, MemorySink)>,
}

struct StopAtFlush {
    inner: MemorySink,
    stop: Option<Arc<AtomicBool>>,
}

impl MetricsSink for StopAtFlush {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        self.inner.scalar(tag, value, step)
    }
    fn histogram(&mut self, tag: &str, values: &[f64], step: i64) {
        self.inner.histogram(tag, values, step)
    }
    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64) {
        self.inner.image(tag, rgb, height, width, step)
    }
    fn text(&mut self, tag: &str, markdown: &str, step: i64) {
        self.inner.text(tag, markdown, step)
    }
    fn flush(&mut self) {
        self.inner.flush();
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

impl PipelineReporter for Reporter {
    fn sink(&mut self, label: &str, _dir: &Path) -> Box<dyn MetricsSink> {
        let inner = MemorySink::new();
        self.sinks.push((label.to_string(), inner.clone()));
        let stop = (self.stop_in == Some(label)).then(|| self.stop.clone());
        Box::new(StopAtFlush { inner, stop })
    }
    fn progress(&mut self, _label: &str) -> Box<dyn Progress> {
        Box::new(NoProgress)
    }
    fn message(&mut self, _line: &str) {}
}

fn run(
    config: &PipelineRunConfig,
    root: &Path,
    stop_in: Option<&'static str>,
) -> (PipelineOutcome, Vec<(String, MemorySink)>) {
    run_phases(config, root, None, stop_in)
}

/// The search phase alone (`--phase search`).
fn run_search(
    config: &PipelineRunConfig,
    root: &Path,
    stop_in: Option<&'static str>,
) -> (PipelineOutcome, Vec<(String, MemorySink)>) {
    run_phases(config, root, Some(PipelinePhase::Search), stop_in)
}

/// Runs the pipeline (every remaining phase, or `only`); `stop_in` stops it at the first flush
/// of that phase's metrics, as Ctrl-C would.
fn run_phases(
    config: &PipelineRunConfig,
    root: &Path,
    only: Option<PipelinePhase>,
    stop_in: Option<&'static str>,
) -> (PipelineOutcome, Vec<(String, MemorySink)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut reporter = Reporter {
        stop_in,
        stop: stop.clone(),
        sinks: Vec::new(),
    };
    let outcome = pipeline::run_pipeline(PipelineRun {
        config,
        root,
        only,
        reporter: &mut reporter,
        stop: &stop,
    })
    .unwrap();
    (outcome, reporter.sinks)
}

/// Global steps at which the runs of a phase logged their value loss (one point per PPO
/// iteration), in the order the runs started.
fn iteration_steps(sinks: &[(String, MemorySink)], label: &str) -> Vec<i64> {
    assert!(sinks.iter().any(|(l, _)| l == label), "no {label} run");
    sinks
        .iter()
        .filter(|(l, _)| l == label)
        .flat_map(|(_, sink)| sink.scalars(tags::VALUE_LOSS))
        .map(|(step, _)| step)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_pipeline_stopped_in_every_phase_resumes_to_the_uninterrupted_result() {
    tch::set_num_threads(1);
    let config = tiny_config();
    let base = tempfile::tempdir().unwrap();

    let straight = base.path().join("straight");
    let (outcome, _) = run(&config, &straight, None);
    let PipelineOutcome::Complete(expected) = outcome else {
        panic!("{outcome:?}")
    };
    check_table(&expected, &["rl_darts", "impala"]);

    // Stopped after the first of 3 search iterations, then resumed from its checkpoint.
    let root = base.path().join("stopped");
    let (outcome, sinks) = run(&config, &root, Some("search"));
    assert!(
        matches!(outcome, PipelineOutcome::Interrupted(PipelinePhase::Search)),
        "{outcome:?}"
    );
    assert_eq!(iteration_steps(&sinks, "search"), [32]);
    assert!(!root.join("search/phase.json").exists());

    let (outcome, sinks) = run(&config, &root, Some("retrain"));
    assert!(
        matches!(
            outcome,
            PipelineOutcome::Interrupted(PipelinePhase::Retrain)
        ),
        "{outcome:?}"
    );
    assert_eq!(
        iteration_steps(&sinks, "search"),
        [64, 96],
        "the search continues at iteration 2"
    );
    assert_eq!(iteration_steps(&sinks, "retrain"), [32]);

    let (outcome, sinks) = run(&config, &root, Some("baseline"));
    assert!(
        matches!(
            outcome,
            PipelineOutcome::Interrupted(PipelinePhase::Retrain)
        ),
        "{outcome:?}"
    );
    assert_eq!(iteration_steps(&sinks, "retrain"), [64]);
    assert_eq!(iteration_steps(&sinks, "baseline"), [32]);

    // Stopped after the first of four evaluations.
    let (outcome, sinks) = run(&config, &root, Some("eval"));
    assert!(
        matches!(outcome, PipelineOutcome::Interrupted(PipelinePhase::Eval)),
        "{outcome:?}"
    );
    assert_eq!(iteration_steps(&sinks, "baseline"), [64]);
    assert!(
        root.join("eval/rl_darts_train.json").exists()
            && !root.join("eval/rl_darts_test.json").exists()
    );
    assert!(!root.join("comparison.json").exists());

    let (outcome, sinks) = run(&config, &root, None);
    let PipelineOutcome::Complete(resumed) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        sinks.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
        ["eval"]
    );
    let (_, eval_sink) = &sinks[0];
    assert!(eval_sink.texts("pipeline/comparison")[0]
        .1
        .contains("| RL-DARTS cell, retrained |"));

    // Resumed exactly: same genotype, same trained networks, hence the same evaluations.
    assert_eq!(
        resumed.search.as_ref().unwrap().genotype,
        expected.search.as_ref().unwrap().genotype
    );
    for (a, b) in resumed.rows.iter().zip(&expected.rows) {
        assert_eq!(
            (&a.name, a.params, a.global_step),
            (&b.name, b.params, b.global_step)
        );
        assert_eq!(a.train_levels, b.train_levels, "{}", a.name);
        assert_eq!(a.test_levels, b.test_levels, "{}", a.name);
    }

    // A completed pipeline is not redone.
    let (outcome, sinks) = run(&config, &root, None);
    assert!(matches!(outcome, PipelineOutcome::Complete(_)) && sinks.is_empty());

    // The baseline reused from the straight run: its rows equal the straight run's.
    // The searched cell's evaluations are copied too: only the baseline's run here.
    let reuse = base.path().join("reuse");
    for phase in ["search", "retrain"] {
        copy_dir(&root.join(phase), &reuse.join(phase));
    }
    std::fs::create_dir_all(reuse.join("eval")).unwrap();
    for set in ["train", "test"] {
        let name = format!("eval/rl_darts_{set}.json");
        std::fs::copy(root.join(&name), reuse.join(&name)).unwrap();
    }
    let mut reusing = config.clone();
    reusing.pipeline.baseline_from = Some(straight.clone());
    let (outcome, sinks) = run(&reusing, &reuse, None);
    let PipelineOutcome::Complete(c) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        sinks.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(),
        ["eval"]
    );
    assert_eq!(c.rows[1].run_dir, straight.join("baseline"));
    assert_eq!(c.rows[1].test_levels, expected.rows[1].test_levels);
    assert!(!reuse.join("baseline").exists());

    // Without a baseline the table has the searched cell only.
    let skip = base.path().join("skip");
    for phase in ["search", "retrain", "eval"] {
        copy_dir(&root.join(phase), &skip.join(phase));
    }
    let mut skipping = config.clone();
    skipping.pipeline.skip_baseline = true;
    let (outcome, _) = run(&skipping, &skip, None);
    let PipelineOutcome::Complete(c) = outcome else {
        panic!("{outcome:?}")
    };
    check_table(&c, &["rl_darts"]);
    assert!(c.search_overhead.is_none());
}

#[test]
fn the_full_preset_is_the_defaults_written_out_and_the_cli_picks_the_pipeline() {
    let path = common::repo_root().join("configs/coinrun-darts.toml");
    let file = ConfigFile::read(&path).unwrap();
    let loaded =
        PipelineRunConfig::load(Some(&file), pipeline::pipeline_defaults("coinrun"), &[]).unwrap();
    assert_eq!(loaded, pipeline::pipeline_defaults("coinrun"));
    assert_eq!(loaded.pipeline.search_timesteps, 25_000_000);
    // Every key of the defaults appears in the file (it documents them all), in each section
    // the file has.
    let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let defaults = toml::Table::try_from(pipeline::pipeline_defaults("coinrun")).unwrap();
    fn missing(defaults: &toml::Table, file: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in defaults {
            match (value, file.get(key)) {
                (toml::Value::Table(d), Some(toml::Value::Table(f))) => {
                    missing(d, f, &format!("{prefix}{key}."), out)
                }
                // A whole section added to the config type later (not a key left out here).
                (toml::Value::Table(_), None) => {}
                (_, None) => out.push(format!("{prefix}{key}")),
                _ => {}
            }
        }
    }
    let mut absent = Vec::new();
    missing(&defaults, &file, "", &mut absent);
    assert!(
        absent.is_empty(),
        "configs/coinrun-darts.toml lacks {absent:?}"
    );

    // The PC-DARTS preset is the same pipeline with partial channels (and so edge
    // normalisation) on.
    let pc = ConfigFile::read(&common::repo_root().join("configs/coinrun-pcdarts.toml")).unwrap();
    let pc =
        PipelineRunConfig::load(Some(&pc), pipeline::pipeline_defaults("coinrun"), &[]).unwrap();
    let mut expected = pipeline::pipeline_defaults("coinrun");
    match &mut expected.train.encoder {
        rl_darts::train::rl::EncoderConfig::RlDarts(c) => {
            c.supernet.partial_channels = rl_darts::nas::PartialChannels(4)
        }
        other => panic!("the pipeline's default encoder is {other:?}"),
    }
    assert_eq!(pc, expected);

    let base = tempfile::tempdir().unwrap();
    // A config asking for another encoder is a single PPO run; pipeline flags then are errors.
    let out = common::rl_darts()
        .args([
            "train",
            "--config",
            "configs/coinrun-impala.toml",
            "--skip-baseline",
            "--run-dir",
        ])
        .arg(base.path().join("x"))
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("belong to the RL-DARTS pipeline"),
        "{}",
        text(&out)
    );
    // The pipeline refuses a budget below one PPO iteration before creating anything.
    let out = common::rl_darts()
        .args([
            "train",
            "--env",
            "coinrun",
            "--total-steps",
            "100",
            "--run-dir",
        ])
        .arg(base.path().join("y"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("pipeline.search_timesteps = 100"),
        "{}",
        text(&out)
    );
    assert!(!base.path().join("y").exists());
}

fn candidates(root: &Path) -> Vec<RandomCandidate> {
    serde_json::from_slice(&std::fs::read(root.join("search/candidates.json")).unwrap()).unwrap()
}

/// `--strategy random` in the pipeline: the search budget split over candidates trained from
/// scratch, each its own resumable PPO run; the best becomes the search's genotype; a run
/// stopped in the first candidate resumes to the same candidates and scores.
#[test]
fn random_search_trains_candidates_from_scratch_within_the_search_budget() {
    tch::set_num_threads(1);
    let mut config = tiny_config();
    config.train.search.strategy = StrategyConfig::Random(RandomParams {
        num_candidates: 3,
        ..Default::default()
    });
    config.pipeline.search_timesteps = 200; // 66 per candidate -> 2 iterations of 32
    let base = tempfile::tempdir().unwrap();

    let straight = base.path().join("straight");
    let (outcome, _) = run_search(&config, &straight, None);
    assert!(
        matches!(outcome, PipelineOutcome::PhaseDone(PipelinePhase::Search)),
        "{outcome:?}"
    );
    let expected = candidates(&straight);
    assert_eq!(expected.len(), 3);
    let mut drawn = Vec::new();
    for (k, c) in expected.iter().enumerate() {
        assert_eq!(c.index, k);
        assert_eq!(c.global_step, 64, "candidate {k}");
        let dir = straight.join(format!("search/candidate_{k:02}"));
        assert!(dir.join("phase.json").is_file(), "{}", dir.display());
        let g = Genotype::load(dir.join("genotype.json")).unwrap();
        assert_eq!(g.to_darts_string(), c.genotype);
        // A discrete cell: two inputs per node where two predecessors exist (one input).
        for (j, node) in g.normal.iter().chain(&g.reduce).enumerate() {
            assert_eq!(node.len(), (j % 2 + 1).min(2), "{g}");
        }
        drawn.push(g);
    }
    assert!(
        drawn[0] != drawn[1] || drawn[1] != drawn[2],
        "the candidates are distinct draws"
    );
    let chosen = Genotype::load(straight.join("search/genotype.json")).unwrap();
    assert!(drawn.contains(&chosen), "{chosen}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("search/phase.json")).unwrap())
            .unwrap();
    assert_eq!(record["global_step"], 192, "3 x 64 <= search_timesteps");
    assert_eq!(record["encoder"], "random");

    // Stopped after the first iteration of the first candidate, then resumed.
    let root = base.path().join("stopped");
    let (outcome, sinks) = run_search(&config, &root, Some("search"));
    assert!(
        matches!(outcome, PipelineOutcome::Interrupted(PipelinePhase::Search)),
        "{outcome:?}"
    );
    assert_eq!(iteration_steps(&sinks, "search"), [32]);
    assert!(!root.join("search/candidate_00/phase.json").exists());
    let (outcome, _) = run_search(&config, &root, None);
    assert!(
        matches!(outcome, PipelineOutcome::PhaseDone(PipelinePhase::Search)),
        "{outcome:?}"
    );
    let resumed = candidates(&root);
    for (a, b) in resumed.iter().zip(&expected) {
        assert_eq!(
            (&a.genotype, a.global_step, a.mean_return_last100),
            (&b.genotype, b.global_step, b.mean_return_last100)
        );
    }
    assert_eq!(
        Genotype::load(root.join("search/genotype.json")).unwrap(),
        chosen
    );

    // A budget below one PPO iteration per candidate is refused before anything trains.
    config.pipeline.search_timesteps = 64;
    let err = pipeline::validate(&config).unwrap_err().to_string();
    assert!(err.contains("num_candidates"), "{err}");
}
