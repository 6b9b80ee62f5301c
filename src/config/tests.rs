//! Unit tests of `config` (kept apart so the module stays one concern).
use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PpoConfig {
    learning_rate: f64,
    num_envs: usize,
    clip_vloss: bool,
    target_kl: Option<f64>,
    hidden: Vec<i64>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            learning_rate: 5e-4,
            num_envs: 64,
            clip_vloss: true,
            target_kl: None,
            hidden: vec![256],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DartsParams {
    arch_lr: f64,
    unrolled: bool,
}

impl Default for DartsParams {
    fn default() -> Self {
        Self {
            arch_lr: 3e-4,
            unrolled: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SnasParams {
    temperature: f64,
}

impl Default for SnasParams {
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "name",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum Strategy {
    Darts(DartsParams),
    Snas(SnasParams),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    env: String,
    seed: u64,
    ppo: PpoConfig,
    strategy: Strategy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            env: "coinrun".to_owned(),
            seed: 1,
            ppo: PpoConfig::default(),
            strategy: Strategy::Darts(DartsParams::default()),
        }
    }
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("preset.toml");
    fs::write(&path, text).unwrap();
    path
}

fn sets(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn defaults_alone_round_trip() {
    let config = load_config(None, Config::default(), &[]).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn partial_file_merges_onto_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "seed = 7\n[ppo]\nnum_envs = 8\ntarget_kl = 0.01\n");
    let config = load_config(Some(&path), Config::default(), &[]).unwrap();
    let expected = Config {
        seed: 7,
        ppo: PpoConfig {
            num_envs: 8,
            target_kl: Some(0.01),
            ..PpoConfig::default()
        },
        ..Config::default()
    };
    assert_eq!(config, expected);
}

#[test]
fn nested_set_overrides_file_and_parses_toml_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[ppo]\nnum_envs = 8\n");
    let overrides = sets(&[
        "ppo.num_envs=16",
        "ppo.learning_rate=1e-3",
        "ppo.clip_vloss=false",
        "ppo.hidden=[32, 64]",
        "ppo.target_kl=0.02",
        "env=bigfish",
        "strategy.params.arch_lr=6e-4",
    ]);
    let config = load_config(Some(&path), Config::default(), &overrides).unwrap();
    assert_eq!(config.env, "bigfish");
    assert_eq!(
        config.ppo,
        PpoConfig {
            learning_rate: 1e-3,
            num_envs: 16,
            clip_vloss: false,
            target_kl: Some(0.02),
            hidden: vec![32, 64],
        }
    );
    assert_eq!(
        config.strategy,
        Strategy::Darts(DartsParams {
            arch_lr: 6e-4,
            unrolled: false
        })
    );
    // The integer 2 is accepted for a float field, as TOML readers expect.
    let config = load_config(None, Config::default(), &sets(&["ppo.learning_rate=2"])).unwrap();
    assert_eq!(config.ppo.learning_rate, 2.0);
}

#[test]
fn unknown_key_in_file_names_line_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "seed = 3\n\n[ppo]\nnum_envs = 8\nlearning_rat = 0.1\n",
    );
    let err = load_config(Some(&path), Config::default(), &[]).unwrap_err();
    match &err {
        ConfigError::UnknownKey {
            key,
            origin,
            valid,
            suggestion,
        } => {
            assert_eq!(key, "ppo.learning_rat");
            assert_eq!(
                origin,
                &Origin::File {
                    path: path.clone(),
                    line: Some(5)
                }
            );
            // serde's list includes target_kl, which the serialised defaults lack.
            assert!(valid.contains(&"target_kl".to_owned()), "{valid:?}");
            assert_eq!(suggestion.as_deref(), Some("ppo.learning_rate"));
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains("preset.toml:5"), "{shown}");
    assert!(
        shown.contains("did you mean `ppo.learning_rate`?"),
        "{shown}"
    );
    assert!(
        shown.contains("valid keys in `ppo`: learning_rate, num_envs"),
        "{shown}"
    );
}

#[test]
fn unknown_top_level_table_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "seed = 3\n[ppoo]\nnum_envs = 8\n");
    let err = load_config(Some(&path), Config::default(), &[]).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("unknown config key `ppoo`"), "{shown}");
    assert!(shown.contains("preset.toml:2"), "{shown}");
    assert!(shown.contains("did you mean `ppo`?"), "{shown}");
    assert!(shown.contains("valid keys at the top level"), "{shown}");
}

#[test]
fn unknown_key_in_set_suggests() {
    let err = load_config(None, Config::default(), &sets(&["ppo.num_env=3"])).unwrap_err();
    match err {
        ConfigError::UnknownKey {
            key,
            origin,
            suggestion,
            ..
        } => {
            assert_eq!(key, "ppo.num_env");
            assert_eq!(origin, Origin::Override("ppo.num_env=3".to_owned()));
            assert_eq!(suggestion.as_deref(), Some("ppo.num_envs"));
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    // Inside an adjacently tagged enum serde words it differently; same result.
    let err = load_config(
        None,
        Config::default(),
        &sets(&["strategy.parms.arch_lr=1"]),
    )
    .unwrap_err();
    match err {
        ConfigError::UnknownKey {
            key,
            valid,
            suggestion,
            ..
        } => {
            assert_eq!(key, "strategy.parms");
            assert_eq!(valid, ["name", "params"]);
            assert_eq!(suggestion.as_deref(), Some("strategy.params"));
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    // A missing intermediate table is reported at its own name.
    let err = load_config(None, Config::default(), &sets(&["ppx.num_envs=3"])).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, suggestion: Some(s), .. }
            if key == "ppx" && s == "ppo"),
        "{err}"
    );
}

#[test]
fn type_errors_name_key_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[ppo]\nlearning_rate = \"fast\"\n");
    let err = load_config(Some(&path), Config::default(), &[]).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(&err, ConfigError::TypeMismatch { key, .. } if key == "ppo.learning_rate"),
        "{err:?}"
    );
    assert!(shown.contains("preset.toml:2"), "{shown}");
    assert!(shown.contains("expected f64"), "{shown}");

    let err = load_config(None, Config::default(), &sets(&["ppo.num_envs=-4"])).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("`ppo.num_envs` (--set ppo.num_envs=-4)"),
        "{shown}"
    );
    assert!(shown.contains("expected usize"), "{shown}");

    let err = load_config(None, Config::default(), &sets(&["ppo.clip_vloss=yes"])).unwrap_err();
    assert!(err.to_string().contains("expected a boolean"), "{err}");
}

#[test]
fn unknown_variant_suggests_the_nearest() {
    let err = load_config(None, Config::default(), &sets(&["strategy.name=dartz"])).unwrap_err();
    match err {
        ConfigError::TypeMismatch {
            key, suggestion, ..
        } => {
            assert_eq!(key, "strategy.name");
            assert_eq!(suggestion.as_deref(), Some("darts"));
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn switching_variant_drops_the_old_params() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[strategy]\nname = \"snas\"\n[strategy.params]\ntemperature = 0.5\n",
    );
    let config = load_config(Some(&path), Config::default(), &[]).unwrap();
    assert_eq!(
        config.strategy,
        Strategy::Snas(SnasParams { temperature: 0.5 })
    );

    // Either order on the command line: the switch applies first.
    for args in [
        ["strategy.name=snas", "strategy.params.temperature=2"],
        ["strategy.params.temperature=2", "strategy.name=snas"],
    ] {
        let config = load_config(None, Config::default(), &sets(&args)).unwrap();
        assert_eq!(
            config.strategy,
            Strategy::Snas(SnasParams { temperature: 2.0 })
        );
    }

    // Setting the tag to its current value keeps the params.
    let config = load_config(
        None,
        Config::default(),
        &sets(&["strategy.params.unrolled=true", "strategy.name=darts"]),
    )
    .unwrap();
    assert_eq!(
        config.strategy,
        Strategy::Darts(DartsParams {
            arch_lr: 3e-4,
            unrolled: true
        })
    );
}

#[test]
fn bad_override_syntax() {
    for arg in [
        "ppo.num_envs",
        "=3",
        "ppo..num_envs=3",
        "ppo.num envs=3",
        "seed=",
    ] {
        let err = load_config(None, Config::default(), &sets(&[arg])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadOverride { arg: a, .. } if a == arg),
            "{arg}: {err:?}"
        );
    }
    let err = load_config(None, Config::default(), &sets(&["seed.x=1"])).unwrap_err();
    assert!(err.to_string().contains("`seed` is not a table"), "{err}");
    let err = load_config(None, Config::default(), &sets(&["ppo.hidden=[1, 2"])).unwrap_err();
    assert!(err.to_string().contains("not valid TOML"), "{err}");
}

#[test]
fn override_values() {
    let value = |raw: &str| parse_override(&format!("k={raw}")).unwrap().1;
    assert_eq!(value("3"), Value::Integer(3));
    assert_eq!(value("3e-4"), Value::Float(3e-4));
    assert_eq!(value("true"), Value::Boolean(true));
    assert_eq!(value("coinrun"), Value::String("coinrun".to_owned()));
    assert_eq!(value("\"a b\""), Value::String("a b".to_owned()));
    assert_eq!(value("1.2.3"), Value::String("1.2.3".to_owned()));
    assert_eq!(
        value("[1, 2]"),
        Value::Array(vec![Value::Integer(1), Value::Integer(2)])
    );
    // '=' inside the value belongs to the value.
    assert_eq!(value("a=b"), Value::String("a=b".to_owned()));
}

#[test]
fn file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let err = load_config(Some(&missing), Config::default(), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");

    let path = write(&dir, "seed = 1\n[ppo\n");
    let err = load_config(Some(&path), Config::default(), &[]).unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(
        shown.contains("preset.toml") && shown.contains("line 2"),
        "{shown}"
    );
}

#[test]
fn saved_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        seed: 9,
        ppo: PpoConfig {
            target_kl: Some(0.015),
            ..PpoConfig::default()
        },
        strategy: Strategy::Snas(SnasParams { temperature: 0.25 }),
        ..Config::default()
    };
    let run_dir = dir.path().join("runs").join("coinrun__snas__9");
    let path = save_resolved_config(&config, &run_dir).unwrap();
    assert_eq!(path, run_dir.join("config.toml"));
    // Only the final file is left behind.
    assert_eq!(fs::read_dir(&run_dir).unwrap().count(), 1);
    let loaded = load_config(Some(&path), Config::default(), &[]).unwrap();
    assert_eq!(loaded, config);
    // Saving again replaces the file.
    let again = Config { seed: 10, ..config };
    save_resolved_config(&again, &run_dir).unwrap();
    let loaded = load_config(Some(&path), Config::default(), &[]).unwrap();
    assert_eq!(loaded.seed, 10);
    assert!(to_markdown(&again).unwrap().starts_with("```toml\n"));
}

#[test]
fn unknown_key_checker_finds_lenient_structs() {
    assert_eq!(
        check_rejects_unknown_keys(&Config::default()).unwrap(),
        Vec::<String>::new()
    );

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        inner: Lenient,
    }
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Lenient {
        x: i64,
    }
    assert_eq!(
        check_rejects_unknown_keys(&Outer::default()).unwrap(),
        vec!["inner".to_owned()]
    );
}

#[test]
fn nearest_is_case_insensitive_and_refuses_unrelated_words() {
    let keys = ["learning_rate", "num_envs", "clip_coef"];
    assert_eq!(nearest("Num_Env", keys), Some("num_envs"));
    assert_eq!(nearest("clip", keys), Some("clip_coef"));
    assert_eq!(nearest("zzz", keys), None);
}
