//! Unit tests of `options.rs` (kept apart so the module stays one concern).
use super::*;
use std::path::Path;

fn check(env: &str, n: usize, o: &ProcgenOptions) -> Result<Vec<(&'static str, CValue)>, EnvError> {
    validated_c_options(env, n, o, Path::new("/"))
}

#[test]
fn defaults_pass_every_option_explicitly() {
    let c = check(
        "coinrun",
        4,
        &ProcgenOptions {
            rand_seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.len(), 17);
    assert!(c.contains(&("rand_seed", CValue::Int32(3))));
    assert!(c.contains(&("num_actions", CValue::Int32(15))));
    assert!(c.contains(&("resource_root", CValue::Str("/".into()))));
}

#[test]
fn bad_inputs_are_errors_with_the_valid_choices() {
    let d = ProcgenOptions::default();
    let e = check("coinrum", 1, &d).unwrap_err().to_string();
    assert!(e.contains("did you mean 'coinrun'"), "{e}");
    assert!(e.contains("starpilot"), "{e}");
    let e = check(
        "coinrun",
        1,
        &ProcgenOptions {
            distribution_mode: DistributionMode::Extreme,
            ..d.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("chaser, dodgeball, leaper, starpilot"), "{e}");
    let e = check(
        "coinrun",
        1,
        &ProcgenOptions {
            distribution_mode: DistributionMode::Memory,
            ..d.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("caveflyer, dodgeball, heist, jumper, maze, miner"),
        "{e}"
    );
    for bad in [
        ProcgenOptions {
            num_levels: -1,
            ..d.clone()
        },
        ProcgenOptions {
            start_level: -5,
            ..d.clone()
        },
        ProcgenOptions {
            start_level: i32::MAX,
            num_levels: 10,
            ..d.clone()
        },
        ProcgenOptions {
            num_threads: 0,
            ..d.clone()
        },
        ProcgenOptions {
            num_threads: 10_000,
            ..d.clone()
        },
        ProcgenOptions {
            rand_seed: Some(-1),
            ..d.clone()
        },
        ProcgenOptions {
            debug_mode: -1,
            ..d.clone()
        },
        ProcgenOptions {
            distribution_mode: DistributionMode::Exploration,
            num_levels: 5,
            ..d.clone()
        },
    ] {
        assert!(
            matches!(
                check("coinrun", 1, &bad),
                Err(EnvError::InvalidOption { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(check("coinrun", 0, &d).is_err());
    assert!(check(
        "bigfish",
        1,
        &ProcgenOptions {
            distribution_mode: DistributionMode::Exploration,
            ..d
        }
    )
    .is_err());
}

#[test]
fn exploration_fixes_one_level() {
    let o = ProcgenOptions {
        distribution_mode: DistributionMode::Exploration,
        ..Default::default()
    };
    let c = check("maze", 1, &o).unwrap();
    assert!(c.contains(&("num_levels", CValue::Int32(1))));
    assert!(c.contains(&("start_level", CValue::Int32(158988835))));
    assert!(c.contains(&("distribution_mode", CValue::Int32(1))));
}

#[test]
fn mode_tables_match_the_paper() {
    assert_eq!(
        DistributionMode::Extreme.games(),
        ["chaser", "dodgeball", "leaper", "starpilot"]
    );
    assert_eq!(DistributionMode::Exploration.games().len(), 8);
    let coinrun = find_game("coinrun").unwrap();
    assert_eq!(
        normalized_return(coinrun, DistributionMode::Easy, 10.0),
        1.0
    );
    assert_eq!(normalized_return(coinrun, DistributionMode::Easy, 5.0), 0.0);
}
