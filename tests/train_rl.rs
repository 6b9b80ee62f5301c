//! The PPO training loop end to end: exact resume, NaN stops, corrupt checkpoints, a tiny
//! Procgen run whose TensorBoard files real TensorBoard reads, evaluation, and the CLI.

mod common;

use common::rl::try_train_in;

use std::path::Path;

use rl_darts::envs::gym::{GymEnvKind, GymVecEnv};
use rl_darts::envs::{EnvError, EnvSpec, StepView, VecEnv};
use rl_darts::logging::MemorySink;
use rl_darts::train::rl::{evaluate, EvalOptions, TrainConfig};
use rl_darts::train::run_dir::RunDir;
use rl_darts::train::TrainError;

fn cartpole(total: u64) -> TrainConfig {
    let mut c = TrainConfig::classic_control("cartpole");
    c.device = "cpu".into();
    c.ppo.total_timesteps = total;
    c.checkpoint.every = 2;
    c
}

/// Everything logged except wall-clock measurements.
fn deterministic_log(sink: &MemorySink) -> Vec<(String, i64, u64)> {
    let rec = sink.snapshot();
    let mut out: Vec<(String, i64, u64)> = rec
        .scalars
        .iter()
        .filter(|p| !p.tag.starts_with("perf/") && p.tag != "charts/SPS")
        .map(|p| (p.tag.clone(), p.step, p.value.to_bits()))
        .collect();
    out.sort();
    out
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_run_exactly() {
    tch::set_num_threads(1);
    let config = cartpole(8 * 512);
    let base = tempfile::tempdir().unwrap();

    let straight = RunDir::create_at(&base.path().join("straight")).unwrap();
    let full = MemorySink::new();
    try_train_in(&config, &straight, false, &mut full.clone(), None, None).unwrap();

    let split = RunDir::create_at(&base.path().join("split")).unwrap();
    let first = MemorySink::new();
    let part = try_train_in(&config, &split, false, &mut first.clone(), Some(4), None).unwrap();
    assert_eq!(part.iterations, 4);
    // Resume in a fresh trainer and env, from what is on disk.
    let second = MemorySink::new();
    let done = try_train_in(&config, &split, true, &mut second.clone(), None, None).unwrap();
    assert_eq!(done.iterations, 8);

    let mut joined = deterministic_log(&first);
    joined.extend(deterministic_log(&second));
    joined.sort();
    let straight_log = deterministic_log(&full);
    assert!(straight_log.len() > 50);
    assert_eq!(
        joined, straight_log,
        "resumed logs differ from the uninterrupted run"
    );
    // The HParams dashboard's record is written once, by the process that completes the run.
    assert_eq!(
        (
            full.snapshot().hparams.len(),
            first.snapshot().hparams.len(),
            second.snapshot().hparams.len()
        ),
        (1, 0, 1)
    );
    let (hparams, metrics) = &full.snapshot().hparams[0];
    assert!(hparams.iter().any(|(k, _)| k == "ppo.learning_rate"));
    assert!(metrics
        .iter()
        .all(|m| full.snapshot().scalars.iter().any(|p| &p.tag == m)
            || m == "hparams/normalized_return"));
}

/// CartPole whose rewards turn NaN after a while, to check the NaN stop.
struct NanAfter {
    inner: GymVecEnv,
    steps: usize,
    after: usize,
    nan_rewards: Vec<f32>,
}

impl VecEnv for NanAfter {
    fn spec(&self) -> &EnvSpec {
        self.inner.spec()
    }
    fn observe(&self) -> StepView<'_> {
        self.inner.observe()
    }
    fn step(&mut self, actions: &[i64]) -> Result<StepView<'_>, EnvError> {
        self.steps += 1;
        let poisoned = self.steps > self.after;
        let view = self.inner.step(actions)?;
        if poisoned {
            return Ok(StepView {
                reward: &self.nan_rewards,
                ..view
            });
        }
        Ok(view)
    }
    fn save_state(&self) -> Result<Vec<u8>, EnvError> {
        self.inner.save_state()
    }
    fn load_state(&mut self, state: &[u8]) -> Result<(), EnvError> {
        self.inner.load_state(state)
    }
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let config = cartpole(20 * 512);
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    let env = NanAfter {
        inner: GymVecEnv::new(GymEnvKind::CartPole, 4, 1).unwrap(),
        steps: 0,
        after: 128 * 5, // poisoned during iteration 6
        nan_rewards: vec![f32::NAN; 4],
    };
    let err = try_train_in(
        &config,
        &dir,
        false,
        &mut MemorySink::new(),
        None,
        Some(Box::new(env)),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TrainError::NonFinite { iteration: 6, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("iter_00000004") && msg.contains("--resume"),
        "{msg}"
    );
    let kept: Vec<u64> = dir.checkpoints().unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(kept, [2, 4]);
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_clear_errors() {
    let config = cartpole(2 * 512);
    let base = tempfile::tempdir().unwrap();
    let dir = RunDir::create_at(base.path()).unwrap();
    try_train_in(&config, &dir, false, &mut MemorySink::new(), None, None).unwrap();
    let ckpt = dir.latest_checkpoint().unwrap().unwrap();

    // A mismatched config (other network) is refused, not silently loaded.
    let mut other = config.clone();
    other.ppo.total_timesteps = 4 * 512;
    other.encoder =
        rl_darts::train::rl::EncoderConfig::Mlp(rl_darts::agents::MlpConfig { hidden: vec![32] });
    let err = try_train_in(&other, &dir, true, &mut MemorySink::new(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint") || err.contains("shape"), "{err}");

    // A truncated weights file.
    let weights = ckpt.join("weights.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let mut longer = config.clone();
    longer.ppo.total_timesteps = 4 * 512;
    let err = try_train_in(&longer, &dir, true, &mut MemorySink::new(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights.safetensors"), "{err}");

    // Garbage env state.
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::write(ckpt.join("env_state.bin"), b"not a state").unwrap();
    let err = try_train_in(&longer, &dir, true, &mut MemorySink::new(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("state"), "{err}");

    // Nothing to resume from.
    let empty = RunDir::create_at(&base.path().join("empty")).unwrap();
    let err = try_train_in(&config, &empty, true, &mut MemorySink::new(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no complete checkpoint"), "{err}");
}

fn read_tensorboard_scalars(dir: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
out = {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
out["__texts__"] = acc.Tags().get("tensors", [])
print(json.dumps(out))
"#;
    let out = std::process::Command::new(common::venv_python())
        .args(["-c", script])
        .arg(dir)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap();
    common::assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tiny_procgen_run_has_finite_losses_readable_tensorboard_files_and_evaluates() {
    let base = tempfile::tempdir().unwrap();
    let run_dir = base.path().join("run");
    let out = common::rl_darts()
        .args([
            "train",
            "--env",
            "coinrun",
            "--encoder",
            "impala",
            "--quiet",
            "--device",
            "cpu",
            "--total-steps",
            "512",
        ])
        .args([
            "--set",
            "ppo.num_envs=4",
            "--set",
            "ppo.num_steps=64",
            "--set",
            "ppo.num_minibatches=2",
        ])
        .args(["--set", "procgen.num_threads=1"])
        .arg("--run-dir")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let scalars = read_tensorboard_scalars(&run_dir.join("tb"));
    for tag in [
        "losses/value_loss",
        "losses/policy_loss",
        "losses/entropy",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "charts/SPS",
        "charts/learning_rate",
    ] {
        let values = scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {scalars}"));
        assert_eq!(values.len(), 2, "{tag}");
        assert!(
            values
                .iter()
                .all(|v| v.as_f64().is_some_and(f64::is_finite)),
            "{tag}: {values:?}"
        );
    }
    assert_eq!(
        scalars["charts/learning_rate"][0].as_f64().unwrap(),
        5e-4_f32 as f64
    );
    assert!(scalars["__texts__"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "config"));
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(
        config.contains("num_levels = 200") && config.contains("num_envs = 4"),
        "{config}"
    );

    let result = evaluate(
        &run_dir,
        &EvalOptions {
            env: None,
            num_levels: 0,
            start_level: 0,
            episodes: 4,
            num_envs: 4,
            greedy: false,
            seed: 1,
            video: Some(base.path().join("video")),
            device: "cpu".into(),
        },
    )
    .unwrap();
    assert_eq!(result.episodes, 4);
    assert!(result.mean_normalized_return.is_some());
    assert!(base.path().join("video/episode_00.gif").exists());
}

#[test]
fn cli_rejects_unknown_keys_envs_and_bad_resume() {
    let base = tempfile::tempdir().unwrap();
    let bad = |args: &[&str]| {
        let out = common::rl_darts()
            .args(args)
            .arg("--run-dir")
            .arg(base.path().join("x"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = bad(&[
        "train",
        "--env",
        "cartpole",
        "--set",
        "ppo.learning_rat=1e-3",
    ]);
    assert!(err.contains("learning_rate"), "{err}");
    let err = bad(&["train", "--env", "coinrum", "--total-steps", "512"]);
    assert!(err.contains("did you mean 'coinrun'"), "{err}");
    let err = bad(&["train", "--env", "cartpole", "--encoder", "resnet"]);
    assert!(err.contains("impala") && err.contains("mlp"), "{err}");
    // Values that only validation rejects, for a single run and for the pipeline: the config
    // is resolved and checked before the run directory exists, so nothing is left behind.
    let err = bad(&["train", "--env", "cartpole", "--set", "ppo.num_envs=0"]);
    assert!(err.contains("num_envs"), "{err}");
    let err = bad(&["train", "--quick", "--set", "ppo.num_envs=0"]);
    assert!(err.contains("num_envs"), "{err}");
    if !tch::Cuda::is_available() {
        let err = bad(&["train", "--env", "cartpole", "--device", "cuda"]);
        assert!(err.to_lowercase().contains("cuda"), "{err}");
        let err = bad(&["train", "--quick", "--device", "cuda"]);
        assert!(err.to_lowercase().contains("cuda"), "{err}");
    }
    assert!(
        !base.path().join("x").exists(),
        "a rejected config left its run directory behind"
    );
    let out = common::rl_darts()
        .args(["train", "--resume"])
        .arg(base.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a run directory"));
}

/// A lower layer's error is reported under the config key it is about, and stays reachable as
/// the error's source (not flattened into a string).
#[test]
fn a_lower_layers_error_names_its_key_and_keeps_its_source() {
    let mut config = TrainConfig::default();
    config.ppo.num_envs = 0;
    let err = rl_darts::train::rl::validate(&config).unwrap_err();
    assert!(err.to_string().starts_with("ppo: "), "{err}");
    assert!(
        matches!(err, TrainError::About { context: "ppo", .. }),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("the PPO layer's error is the source");
    assert!(
        source
            .downcast_ref::<rl_darts::agents::AgentError>()
            .is_some(),
        "{source:?}"
    );
}
