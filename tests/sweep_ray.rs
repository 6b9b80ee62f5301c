//! The Ray runner for real: a one-node Ray cluster started by the test (`ray start --head`
//! from the project's .venv, on a private port and temp dir, bounded in time, stopped at the
//! end), and a 4-trial CartPole sweep sent to it with `rl-darts sweep run PLAN --ray ADDRESS`.
//! Skips, saying so, only when Ray is not installed in the .venv.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin(name: &str) -> PathBuf {
    repo().join(".venv/bin").join(name)
}

/// Runs `cmd`, killing it after `limit`; Some(success) or None when it timed out.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<bool> {
    let mut child = cmd.stdin(Stdio::null()).spawn().expect("start");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ray stop` when dropped, also when an assertion fails.
struct RayCluster {
    temp: PathBuf,
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        let _ = run_bounded(
            ray_env(&mut Command::new(venv_bin("ray")))
                .args(["stop", "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            Duration::from_secs(60),
        );
        let _ = fs::remove_dir_all(&self.temp);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ray >= 2.5x turns on token authentication when `ray.init()` starts a local instance and
/// saves the token in ~/.ray; a head started without it then rejects the driver. The test
/// cluster and its driver both run with authentication off, whatever ~/.ray holds.
fn ray_env(cmd: &mut Command) -> &mut Command {
    cmd.env("RAY_AUTH_MODE", "disabled")
        .env("RAY_USAGE_STATS_ENABLED", "0")
}

fn ray_installed() -> bool {
    Command::new(venv_bin("python"))
        .args(["-c", "import ray"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn sweep_runs_as_tasks_on_a_local_ray_cluster() {
    if !ray_installed() {
        eprintln!("SKIPPED: Ray is not installed in .venv (run `make setup`, which installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // A short temp dir: Ray's unix socket paths must stay under 107 bytes.
    let temp = PathBuf::from(format!("/tmp/rlds-ray-{port}"));
    let cluster = RayCluster { temp: temp.clone() };
    let started = run_bounded(
        ray_env(&mut Command::new(venv_bin("ray")))
            .args([
                "start",
                "--head",
                "--port",
                &port.to_string(),
                "--num-cpus",
                "2",
            ])
            .args([
                "--num-gpus",
                "0",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ])
            .arg(format!("--temp-dir={}", temp.display()))
            .stdout(fs::File::create(tmp.path().join("ray-start.out")).unwrap())
            .stderr(fs::File::create(tmp.path().join("ray-start.err")).unwrap()),
        Duration::from_secs(180),
    );
    assert_eq!(
        started,
        Some(true),
        "ray start --head failed or took over 180 s"
    );

    let spec = tmp.path().join("spec.toml");
    fs::write(
        &spec,
        format!(
            r#"name = "ray-test"
envs = ["cartpole"]
seeds = [1, 2]
config = "{}"
out_dir = "{}"
[set]
"ppo.total_timesteps" = 2048
torch_threads = 1
[grid]
"ppo.learning_rate" = [1e-3, 3e-4]
[resources]
cpus_per_trial = 1
"#,
            repo().join("configs/cartpole-ppo.toml").display(),
            tmp.path().join("runs").display()
        ),
    )
    .unwrap();
    let plan = tmp.path().join("plan.json");
    let bin = env!("CARGO_BIN_EXE_rl-darts");
    let ok = run_bounded(
        Command::new(bin)
            .current_dir(repo())
            .args(["sweep", "plan", "--spec"])
            .arg(&spec)
            .arg("-o")
            .arg(&plan),
        Duration::from_secs(30),
    );
    assert_eq!(ok, Some(true));
    let log = tmp.path().join("ray.out");
    let ok = run_bounded(
        ray_env(&mut Command::new(bin))
            .current_dir(repo())
            .args(["sweep", "run"])
            .arg(&plan)
            .args(["--ray", &format!("127.0.0.1:{port}")])
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(tmp.path().join("ray.err")).unwrap()),
        Duration::from_secs(420),
    );
    let out = fs::read_to_string(&log).unwrap_or_default();
    let err = fs::read_to_string(tmp.path().join("ray.err")).unwrap_or_default();
    eprintln!("--- stdout\n{out}\n--- stderr\n{err}");
    assert_eq!(ok, Some(true), "the Ray sweep failed or took over 420 s");
    assert!(out.contains("4 ok, 0 failed"), "{out}");
    assert!(out.contains("4 of 4 trials complete"), "{out}");
    let runs = tmp.path().join("runs");
    let mut complete = 0;
    for entry in fs::read_dir(&runs).unwrap().flatten() {
        let summary = entry.path().join("summary.json");
        if summary.is_file() {
            let v: serde_json::Value =
                serde_json::from_slice(&fs::read(&summary).unwrap()).unwrap();
            assert_eq!(v["global_step"], 2048);
            // Each trial ran as a Ray task: its log names the sweep's per-trial command.
            let log = fs::read_to_string(entry.path().join("sweep.log")).unwrap();
            assert!(log.contains("train --env cartpole"), "{log}");
            complete += 1;
        }
    }
    assert_eq!(complete, 4);
    assert!(
        out.contains("[4/4] #"),
        "one driver line per finished Ray task: {out}"
    );
    drop(cluster);
}
