//! rl-darts' Procgen bindings against procgen's own Python wrapper over the same library:
//! every game in easy and hard mode (plus the other modes and the visual options), same
//! options and actions, byte-identical frames, and identical rewards and first flags.

mod common;

use rl_darts::envs::procgen::{DistributionMode, ProcgenOptions, ProcgenVecEnv, GAMES};
use rl_darts::envs::VecEnv;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Must match `action` in tests/oracle/procgen_oracle.py.
fn oracle_action(case_seed: u64, t: u64, i: u64) -> i64 {
    let h = (t.wrapping_mul(1000003))
        .wrapping_add(i.wrapping_mul(7919))
        .wrapping_add(case_seed.wrapping_mul(104729))
        .wrapping_add(12345);
    let h = h
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((h >> 33) % 15) as i64
}

fn mode_from(name: &str) -> DistributionMode {
    DistributionMode::ALL
        .into_iter()
        .find(|m| m.name() == name)
        .expect("known mode")
}

fn options_from(case: &Value) -> ProcgenOptions {
    let b = |k: &str, d: bool| case.get(k).and_then(Value::as_bool).unwrap_or(d);
    let i = |k: &str, d: i32| {
        case.get(k)
            .and_then(Value::as_i64)
            .map(|v| v as i32)
            .unwrap_or(d)
    };
    let d = ProcgenOptions::default();
    ProcgenOptions {
        num_levels: i("num_levels", 0),
        start_level: i("start_level", 0),
        distribution_mode: mode_from(case["mode"].as_str().unwrap()),
        use_sequential_levels: b("use_sequential_levels", false),
        rand_seed: Some(case["seed"].as_i64().unwrap() as i32),
        num_threads: i("num_threads", 4),
        center_agent: b("center_agent", d.center_agent),
        use_backgrounds: b("use_backgrounds", d.use_backgrounds),
        use_monochrome_assets: b("use_monochrome_assets", d.use_monochrome_assets),
        restrict_themes: b("restrict_themes", d.restrict_themes),
        use_generated_assets: b("use_generated_assets", d.use_generated_assets),
        paint_vel_info: b("paint_vel_info", d.paint_vel_info),
        ..d
    }
}

fn cases() -> Vec<Value> {
    let mut cases = Vec::new();
    for (k, game) in GAMES.iter().enumerate() {
        for mode in ["easy", "hard"] {
            cases.push(json!({"game": game.name, "mode": mode, "seed": 11 + k, "num_envs": 2, "steps": 300}));
        }
    }
    // The other modes and every non-default option, so each reaches the library as Python
    // passes it.
    cases.push(
        json!({"game": "starpilot", "mode": "extreme", "seed": 5, "num_envs": 2, "steps": 200}),
    );
    cases.push(json!({"game": "maze", "mode": "memory", "seed": 6, "num_envs": 2, "steps": 200}));
    cases.push(
        json!({"game": "coinrun", "mode": "exploration", "seed": 7, "num_envs": 2, "steps": 200}),
    );
    cases.push(
        json!({"game": "coinrun", "mode": "easy", "seed": 8, "num_envs": 3, "steps": 300,
        "num_levels": 10, "start_level": 5, "use_sequential_levels": true, "num_threads": 1}),
    );
    cases.push(
        json!({"game": "ninja", "mode": "easy", "seed": 9, "num_envs": 2, "steps": 150,
        "center_agent": false, "use_backgrounds": false, "paint_vel_info": true}),
    );
    cases.push(
        json!({"game": "heist", "mode": "hard", "seed": 10, "num_envs": 2, "steps": 150,
        "use_monochrome_assets": true, "restrict_themes": true, "use_generated_assets": true}),
    );
    cases
}

#[test]
fn frames_rewards_and_firsts_match_procgens_python_wrapper() {
    let cases = cases();
    let oracle = common::run_python_oracle(
        "tests/oracle/procgen_oracle.py",
        &Value::Array(cases.clone()),
    );
    let oracle = oracle.as_array().expect("oracle prints a JSON list");
    assert_eq!(oracle.len(), cases.len());

    let mut episodes_seen = 0;
    for (case, expected) in cases.iter().zip(oracle) {
        let num_envs = case["num_envs"].as_u64().unwrap() as usize;
        let steps = case["steps"].as_u64().unwrap();
        let seed = case["seed"].as_u64().unwrap();
        let label = case.to_string();
        let mut env =
            ProcgenVecEnv::new(case["game"].as_str().unwrap(), num_envs, options_from(case))
                .unwrap_or_else(|e| panic!("{label}: {e}"));

        let check = |t: usize, obs: &tch::Tensor, reward: &[f32], first: &[u8]| {
            let bytes = Vec::<u8>::try_from(obs.flatten(0, -1)).unwrap();
            let hash = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                hash,
                expected["obs"][t].as_str().unwrap(),
                "{label}: frames differ at step {t}"
            );
            let want_rew: Vec<f32> = expected["rew"][t]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(
                reward,
                want_rew.as_slice(),
                "{label}: rewards differ at step {t}"
            );
            let want_first: Vec<u8> = expected["first"][t]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(
                first,
                want_first.as_slice(),
                "{label}: first flags differ at step {t}"
            );
        };
        let view = env.observe();
        check(0, view.obs, view.reward, view.first);
        for t in 0..steps {
            let actions: Vec<i64> = (0..num_envs as u64)
                .map(|i| oracle_action(seed, t, i))
                .collect();
            let view = env.step(&actions).unwrap();
            episodes_seen += view.finished.len();
            check(t as usize + 1, view.obs, view.reward, view.first);
        }
    }
    // The comparison covers resets too, not only the first episode of each env.
    assert!(
        episodes_seen > 20,
        "only {episodes_seen} episodes ended across all cases"
    );
}
