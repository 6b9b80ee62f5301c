//! Behaviour of the Procgen vec-env: determinism, lifetimes, threads, rendering, level info,
//! bad input, and the `envs` CLI.

mod common;

use rl_darts::envs::procgen::{DistributionMode, ProcgenOptions, ProcgenVecEnv};
use rl_darts::envs::{EnvError, VecEnv};
use tch::Tensor;

fn opts(seed: i32) -> ProcgenOptions {
    ProcgenOptions {
        rand_seed: Some(seed),
        ..Default::default()
    }
}

fn play(env: &mut ProcgenVecEnv, steps: usize) -> (Vec<Tensor>, Vec<f32>) {
    let n = env.spec().num_envs;
    let mut frames = vec![env.observe().obs.copy()];
    let mut rewards = Vec::new();
    for t in 0..steps {
        let actions: Vec<i64> = (0..n).map(|i| ((t * 7 + i * 3) % 15) as i64).collect();
        let view = env.step(&actions).unwrap();
        frames.push(view.obs.copy());
        rewards.extend_from_slice(view.reward);
    }
    (frames, rewards)
}

#[test]
fn same_seed_and_actions_give_identical_frames_other_seeds_differ() {
    let mut a = ProcgenVecEnv::new("starpilot", 3, opts(42)).unwrap();
    let mut b = ProcgenVecEnv::new("starpilot", 3, opts(42)).unwrap();
    let mut c = ProcgenVecEnv::new("starpilot", 3, opts(43)).unwrap();
    let (fa, ra) = play(&mut a, 100);
    let (fb, rb) = play(&mut b, 100);
    let (fc, _) = play(&mut c, 100);
    assert_eq!(ra, rb);
    assert!(fa.iter().zip(&fb).all(|(x, y)| x.equal(y)));
    assert!(fa.iter().zip(&fc).any(|(x, y)| !x.equal(y)));
    assert_eq!(fa[0].size(), [3, 64, 64, 3]);
    assert_eq!(fa[0].kind(), tch::Kind::Uint8);
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn creating_and_dropping_envs_in_a_loop_neither_leaks_nor_crashes() {
    // Warm up: the first creation loads assets once per process.
    drop(ProcgenVecEnv::new("coinrun", 4, opts(0)).unwrap());
    let before = resident_kib();
    for round in 0..60 {
        let game = ["coinrun", "bigfish", "maze"][round % 3];
        let mut env = ProcgenVecEnv::new(game, 4, opts(round as i32)).unwrap();
        env.step(&[1, 2, 3, 4]).unwrap();
    }
    let grown_mib = (resident_kib().saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 150,
        "resident memory grew by {grown_mib} MiB over 60 create/drop rounds"
    );
}

#[test]
fn several_envs_alive_at_once_and_stepped_on_other_threads() {
    let envs: Vec<ProcgenVecEnv> = ["coinrun", "heist", "jumper", "fruitbot"]
        .iter()
        .map(|g| ProcgenVecEnv::new(g, 2, opts(1)).unwrap())
        .collect();
    // ProcgenVecEnv is Send: move each into its own thread and step it there.
    let handles: Vec<_> = envs
        .into_iter()
        .map(|mut env| {
            std::thread::spawn(move || {
                for t in 0..200 {
                    env.step(&[(t % 15) as i64, 4]).unwrap();
                }
                env.observe().obs.sum(tch::Kind::Int64).int64_value(&[])
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap() > 0);
    }
}

#[test]
fn render_human_gives_512_frames() {
    let mut env = ProcgenVecEnv::new(
        "coinrun",
        2,
        ProcgenOptions {
            render_human: true,
            ..opts(3)
        },
    )
    .unwrap();
    env.step(&[7, 7]).unwrap();
    let frames = env.render_frames().unwrap();
    assert_eq!(frames.size(), [2, 512, 512, 3]);
    assert!(frames.max().int64_value(&[]) > 0);
}

#[test]
fn level_info_respects_num_levels_and_start_level() {
    let mut env = ProcgenVecEnv::new(
        "coinrun",
        8,
        ProcgenOptions {
            num_levels: 5,
            start_level: 100,
            ..opts(4)
        },
    )
    .unwrap();
    let mut seen_episodes = 0;
    // Past coinrun's 1000-step timeout, so every env finishes at least one episode.
    for t in 0..1050 {
        let actions: Vec<i64> = (0..8).map(|i| ((t + i) % 15) as i64).collect();
        let view = env.step(&actions).unwrap();
        assert!(
            view.level.level_seed.iter().all(|s| (100..105).contains(s)),
            "{:?}",
            view.level.level_seed
        );
        for ep in view.finished {
            seen_episodes += 1;
            assert!((100..105).contains(&ep.level_seed.unwrap()));
        }
    }
    assert!(seen_episodes > 0);
}

#[test]
fn bad_options_and_actions_are_errors_not_aborts() {
    let err = ProcgenVecEnv::new("coinrunn", 1, opts(0)).unwrap_err();
    assert!(matches!(err, EnvError::UnknownEnv { .. }));
    let err = ProcgenVecEnv::new(
        "bigfish",
        1,
        ProcgenOptions {
            distribution_mode: DistributionMode::Memory,
            ..opts(0)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("caveflyer"), "{err}");
    assert!(ProcgenVecEnv::new("coinrun", 0, opts(0)).is_err());
    let mut env = ProcgenVecEnv::new("coinrun", 2, opts(0)).unwrap();
    assert!(matches!(env.step(&[1]), Err(EnvError::ActionCount { .. })));
    assert!(matches!(
        env.step(&[1, 15]),
        Err(EnvError::ActionOutOfRange { .. })
    ));
    assert!(matches!(
        env.step(&[-1, 0]),
        Err(EnvError::ActionOutOfRange { .. })
    ));
    // The env still works after rejected input.
    env.step(&[1, 2]).unwrap();
}

#[test]
fn envs_cli_lists_benches_and_records() {
    let out = common::rl_darts().args(["envs", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("starpilot") && text.contains("RIGHT+UP") && text.contains("exploration")
    );

    let out = common::rl_darts()
        .args([
            "envs",
            "bench",
            "--env",
            "coinrun",
            "--num-envs",
            "8",
            "--steps",
            "50",
            "--machine",
        ])
        .output()
        .unwrap();
    common::assert_success(&out);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let sps: f64 = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("steps_per_sec=")
        .parse()
        .unwrap();
    assert!(sps > 0.0);

    let dir = tempfile::tempdir().unwrap();
    let actions = dir.path().join("actions.txt");
    std::fs::write(&actions, "7\n7\n5\n\n1\n").unwrap();
    let out_dir = dir.path().join("rec");
    let out = common::rl_darts()
        .args([
            "envs",
            "record",
            "--env",
            "coinrun",
            "--seed",
            "3",
            "--num-levels",
            "1",
        ])
        .arg("--actions")
        .arg(&actions)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    common::assert_success(&out);
    let frames = Tensor::read_npy(out_dir.join("frames.npy")).unwrap();
    assert_eq!(frames.size(), [5, 64, 64, 3]);
    assert_eq!(frames.kind(), tch::Kind::Uint8);
    assert_eq!(
        Tensor::read_npy(out_dir.join("rewards.npy"))
            .unwrap()
            .size(),
        [5]
    );
    let firsts =
        Vec::<u8>::try_from(Tensor::read_npy(out_dir.join("firsts.npy")).unwrap()).unwrap();
    assert_eq!(firsts[0], 1);
    assert!(out_dir.join("frame_00004.png").exists());
    let gif = std::fs::read(out_dir.join("episode.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    // The recording equals a direct replay of the same actions.
    let mut env = ProcgenVecEnv::new(
        "coinrun",
        1,
        ProcgenOptions {
            num_levels: 1,
            num_threads: 1,
            ..opts(3)
        },
    )
    .unwrap();
    for (t, a) in [7, 7, 5, 1].into_iter().enumerate() {
        let view = env.step(&[a]).unwrap();
        assert!(view.obs.get(0).equal(&frames.get(t as i64 + 1)));
    }

    let bad = common::rl_darts()
        .args([
            "envs",
            "record",
            "--env",
            "coinrun",
            "--random",
            "--steps",
            "3",
            "--distribution-mode",
            "memory",
        ])
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("memory") && err.contains("maze"), "{err}");
}

#[test]
fn saved_state_resumes_the_exact_trajectory() {
    let acts = |t: usize| -> Vec<i64> { (0..4).map(|i| ((t * 5 + i * 2) % 15) as i64).collect() };
    let mut a = ProcgenVecEnv::new("coinrun", 4, opts(5)).unwrap();
    for t in 0..150 {
        a.step(&acts(t)).unwrap();
    }
    let saved = a.save_state().unwrap();
    let mut b = ProcgenVecEnv::new("coinrun", 4, opts(77)).unwrap();
    b.load_state(&saved).unwrap();
    assert!(a.observe().obs.equal(b.observe().obs));
    let mut episodes = (0, 0);
    // Past coinrun's 1000-step timeout, so episodes end (and new levels start) after the restore.
    for t in 150..1100 {
        let va = a.step(&acts(t)).unwrap();
        let (oa, ra, fa) = (va.obs.copy(), va.reward.to_vec(), va.first.to_vec());
        episodes.0 += va.finished.len();
        let vb = b.step(&acts(t)).unwrap();
        episodes.1 += vb.finished.len();
        assert!(oa.equal(vb.obs), "frames diverged at step {t}");
        assert_eq!(
            (ra.as_slice(), fa.as_slice()),
            (vb.reward, vb.first),
            "step {t}"
        );
    }
    assert_eq!(episodes.0, episodes.1);
    assert!(episodes.0 > 0, "no episode ended after the restore");
    let mut other = ProcgenVecEnv::new("maze", 4, opts(5)).unwrap();
    assert!(other.load_state(&saved).is_err());
    assert!(b.load_state(b"garbage").is_err());
}
