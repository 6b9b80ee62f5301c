//! `rl-darts sweep` end to end on this machine, with CartPole PPO runs of a few seconds: plan,
//! the local runner (a failing trial is reported with its log and does not stop the others),
//! idempotent re-runs, collect (the table, the missing list, the PNG), Slurm's array index and
//! script, and an interrupted trial that resumes from its checkpoint.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rl-darts"));
    c.current_dir(repo()).env_remove("SLURM_ARRAY_TASK_ID");
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("start rl-darts");
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CartPole sweep spec in `dir`: seeds x learning rates, `total` steps per run.
fn write_spec(dir: &Path, seeds: &str, lrs: &str, total: u64) -> PathBuf {
    let spec = dir.join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"name = "t"
envs = ["cartpole"]
seeds = [{seeds}]
config = "{config}"
out_dir = "{out}"
[set]
"ppo.total_timesteps" = {total}
"checkpoint.every" = 1
torch_threads = 1
[grid]
"ppo.learning_rate" = [{lrs}]
[resources]
cpus_per_trial = 1
max_parallel = 2
"#,
            config = repo().join("configs/cartpole-ppo.toml").display(),
            out = dir.join("runs").display(),
        ),
    )
    .unwrap();
    spec
}

fn plan(dir: &Path, spec: &Path) -> PathBuf {
    let plan = dir.join("plan.json");
    // --no-check: one test plans a deliberately broken grid value to see trials fail.
    let out = run(bin()
        .args(["sweep", "plan", "--no-check", "--spec"])
        .arg(spec)
        .arg("-o")
        .arg(&plan));
    assert!(out.status.success());
    plan
}

fn trials(plan: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&fs::read(plan).unwrap()).unwrap();
    v["trials"].as_array().unwrap().clone()
}

fn run_dir(trial: &Value) -> PathBuf {
    PathBuf::from(trial["run_dir"].as_str().unwrap())
}

#[test]
fn local_runner_reports_failures_collects_and_skips_complete_trials() {
    let tmp = tempfile::tempdir().unwrap();
    // "oops" is not a learning rate: those two trials fail in the child's config validation.
    let plan = plan(
        tmp.path(),
        &write_spec(tmp.path(), "1, 2", "1e-3, \"oops\"", 2048),
    );
    let ts = trials(&plan);
    assert_eq!(ts.len(), 4);
    let names: Vec<&str> = ts.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cartpole__mlp__1__learning_rate-0.001",
            "cartpole__mlp__2__learning_rate-0.001",
            "cartpole__mlp__1__learning_rate-oops",
            "cartpole__mlp__2__learning_rate-oops",
        ]
    );

    let out = run(bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .args(["--jobs", "2", "--quiet"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "failed trials make the sweep fail");
    assert!(stdout.contains("2 of 4 trials complete"), "{stdout}");
    for t in &ts[2..] {
        let log = run_dir(t).join("sweep.log");
        assert!(
            stdout.contains(&format!("{}: FAILED", t["name"].as_str().unwrap())),
            "each failure is reported"
        );
        assert!(
            stdout.contains(&log.display().to_string()),
            "with its log path"
        );
        assert!(fs::read_to_string(&log).unwrap().contains("learning_rate"));
    }
    let mut returns = Vec::new();
    for t in &ts[..2] {
        let summary: Value =
            serde_json::from_slice(&fs::read(run_dir(t).join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["interrupted"], false);
        assert_eq!(summary["global_step"], 2048);
        returns.push(summary["mean_return"].as_f64().unwrap());
    }

    // Complete trials are skipped: nothing is trained again.
    let before = fs::metadata(run_dir(&ts[0]).join("summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let out = run(bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .args(["--indices", "0,1", "--quiet"]));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("already complete")
            .count(),
        2
    );
    let after = fs::metadata(run_dir(&ts[0]).join("summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    let out = run(bin()
        .args(["sweep", "collect"])
        .arg(&plan)
        .args(["--reps", "200"]));
    assert!(out.status.success());
    let c: Value =
        serde_json::from_slice(&fs::read(tmp.path().join("runs/collected.json")).unwrap()).unwrap();
    assert_eq!(c["complete"], 2);
    let rows = c["rows"].as_array().unwrap();
    let ok = rows
        .iter()
        .find(|r| r["method"] == "mlp learning_rate=0.001")
        .unwrap();
    assert_eq!(
        (ok["runs"].as_u64(), ok["expected"].as_u64()),
        (Some(2), Some(2))
    );
    let (mean, std) = (
        ok["metrics"]["train_return"][0].as_f64().unwrap(),
        ok["metrics"]["train_return"][1].as_f64().unwrap(),
    );
    let want_mean = (returns[0] + returns[1]) / 2.0;
    // Sample std of two values: |a - b| / sqrt(2).
    let want_std = (returns[0] - returns[1]).abs() / 2f64.sqrt();
    assert!((mean - want_mean).abs() < 1e-9 && (std - want_std).abs() < 1e-9);
    let bad = rows
        .iter()
        .find(|r| r["method"] == "mlp learning_rate=oops")
        .unwrap();
    assert_eq!(
        (bad["runs"].as_u64(), bad["expected"].as_u64()),
        (Some(0), Some(2))
    );
    // CartPole has no normalised score: nothing to aggregate across games, even with runs
    // missing.
    assert!(c["aggregates"].as_array().unwrap().is_empty(), "{c}");
    let missing = c["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 2);
    for m in missing {
        assert_eq!(m["state"], "failed");
        assert!(Path::new(m["log"].as_str().unwrap()).is_file());
    }
    let md = fs::read_to_string(tmp.path().join("runs/collected.md")).unwrap();
    assert!(
        md.contains("0/2 (incomplete)") && md.contains("Missing or failed trials (2)"),
        "{md}"
    );
    let png = fs::read(tmp.path().join("runs/curves_cartpole.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(c["plot_errors"].as_array().unwrap().is_empty(), "{c}");
}

#[test]
fn plan_checks_trial_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "1", "1e-3, \"oops\"", 1024);
    let out = run(bin()
        .args(["sweep", "plan", "--spec"])
        .arg(&spec)
        .arg("-o")
        .arg(tmp.path().join("p.json")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cartpole__mlp__1__learning_rate-oops") && err.contains("ppo.learning_rate"),
        "{err}"
    );
    assert!(!tmp.path().join("p.json").exists());
    // The quick pipeline's random search needs a search budget of 8 PPO iterations (the
    // preset has exactly that; half of it is refused at plan time).
    let out = run(bin()
        .args([
            "sweep",
            "plan",
            "--quick",
            "--env",
            "coinrun",
            "--seeds",
            "1",
            "--strategy",
            "random",
            "--set",
            "pipeline.search_timesteps=1024",
        ])
        .arg("-o")
        .arg(tmp.path().join("q.json")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_candidates"));
    let out = run(bin()
        .args([
            "sweep",
            "plan",
            "--quick",
            "--env",
            "coinrun,starpilot",
            "--seeds",
            "1..3",
            "--strategy",
            "joint,random",
        ])
        .args([
            "--set",
            "pipeline.search_timesteps=2048",
            "--set",
            "device=cpu",
        ])
        .arg("-o")
        .arg(tmp.path().join("q.json")));
    assert!(out.status.success());
    assert_eq!(trials(&tmp.path().join("q.json")).len(), 8);
}

#[test]
fn slurm_script_and_array_task_index() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = plan(
        tmp.path(),
        &write_spec(tmp.path(), "1, 2", "1e-3, 3e-4", 1024),
    );
    let ts = trials(&plan);
    let script = tmp.path().join("s.sbatch");
    assert!(run(bin()
        .args(["sweep", "slurm"])
        .arg(&plan)
        .arg("-o")
        .arg(&script))
    .status
    .success());
    let text = fs::read_to_string(&script).unwrap();
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --job-name=t",
        "#SBATCH --signal=B:TERM@120",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(!text.contains("--gres"), "no GPUs asked for");
    let exec = format!(
        "exec '{}' sweep run '{}'",
        env!("CARGO_BIN_EXE_rl-darts"),
        plan.display()
    );
    assert!(text.contains(&exec), "{text}");
    assert!(text.contains(&format!("cd '{}'", repo().display())));
    assert!(Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap()
        .success());

    // An array task runs exactly the trial of its index.
    let out = run(bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .env("SLURM_ARRAY_TASK_ID", "2"));
    assert!(out.status.success());
    for (i, t) in ts.iter().enumerate() {
        assert_eq!(
            run_dir(t).join("summary.json").is_file(),
            i == 2,
            "trial {i}"
        );
    }
    let out = run(bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .env("SLURM_ARRAY_TASK_ID", "9"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}

#[test]
fn an_interrupted_trial_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // 100 iterations of 512 steps: long enough to interrupt after the first checkpoint.
    let plan = plan(tmp.path(), &write_spec(tmp.path(), "7", "1e-3", 51_200));
    let dir = run_dir(&trials(&plan)[0]);
    let mut child = bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .args(["--index", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let checkpointed = || {
        fs::read_dir(dir.join("checkpoints"))
            .map(|it| it.flatten().any(|e| e.path().join("COMPLETE").is_file()))
            .unwrap_or(false)
    };
    while !checkpointed() {
        assert!(Instant::now() < deadline, "no checkpoint within 180 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C to the sweep process only: it forwards one interrupt to the trial's own
    // process group, and the trial checkpoints and stops.
    assert!(Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(75),
        "interrupted trials exit with EX_TEMPFAIL"
    );
    let st: Value =
        serde_json::from_slice(&fs::read(dir.join("sweep-status.json")).unwrap()).unwrap();
    assert_eq!(st["status"], "interrupted");
    let summary: Value =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true);
    let stopped_at = summary["global_step"].as_u64().unwrap();
    assert!(stopped_at < 51_200, "stopped early at {stopped_at}");

    let out = run(bin()
        .args(["sweep", "run"])
        .arg(&plan)
        .args(["--index", "0"]));
    assert!(out.status.success());
    let summary: Value =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["interrupted"], false);
    assert_eq!(summary["global_step"], 51_200);
    let log = fs::read_to_string(dir.join("sweep.log")).unwrap();
    let attempts: Vec<&str> = log.lines().filter(|l| l.starts_with("=== ")).collect();
    assert_eq!(attempts.len(), 2, "{log}");
    assert!(
        !attempts[0].contains("--resume") && attempts[1].contains("--resume"),
        "{log}"
    );
}
