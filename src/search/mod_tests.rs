//! Unit tests of `search` (the strategy config: names, unknown keys, switching kinds).
use super::*;
use crate::config::{check_rejects_unknown_keys, load_config, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Wrapper {
    strategy: StrategyConfig,
}

#[test]
fn every_name_builds_from_config_and_round_trips() {
    for name in STRATEGY_NAMES {
        let config =
            load_config(None, Wrapper::default(), &[format!("strategy.kind={name}")]).unwrap();
        assert_eq!(config.strategy.name(), *name);
        assert_eq!(StrategyConfig::from_name(name).unwrap(), config.strategy);
        let accepting = check_rejects_unknown_keys(&config).unwrap();
        assert!(
            accepting.is_empty(),
            "{name}: tables accepting unknown keys: {accepting:?}"
        );
    }
}

#[test]
fn unknown_strategy_names_and_keys_are_rejected_with_the_valid_list() {
    let err = load_config(
        None,
        Wrapper::default(),
        &["strategy.kind=dartz".to_string()],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::TypeMismatch { .. }), "{text}");
    assert!(STRATEGY_NAMES.iter().all(|n| text.contains(n)), "{text}");
    assert!(text.contains("did you mean `darts`"), "{text}");

    let err = load_config(
        None,
        Wrapper::default(),
        &["strategy.params.ordr=\"second\"".to_string()],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{text}");
    assert!(text.contains("order"), "{text}");

    assert!(StrategyConfig::from_name("gdaz")
        .unwrap_err()
        .to_string()
        .contains("darts, random"));
}

#[test]
fn switching_kind_drops_the_old_params() {
    let config = load_config(
        None,
        Wrapper::default(),
        &[
            "strategy.params.num_candidates=7".to_string(),
            "strategy.kind=random".to_string(),
        ],
    )
    .unwrap();
    match config.strategy {
        StrategyConfig::Random(p) => assert_eq!(p.num_candidates, 7),
        other => panic!("{other:?}"),
    }
}
