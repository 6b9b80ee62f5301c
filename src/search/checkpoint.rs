//! The strategies' checkpoint files: the alpha optimizer's moments (safetensors) and the JSON
//! state (sampler, schedules, counters) each strategy writes beside them, read and written in
//! one place so that every strategy names its files the same way and reports a missing or
//! malformed file the same way (path and reason).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Adam, SearchError};

/// The alpha optimizer's file in a strategy's checkpoint folder (every strategy with an Adam).
const ARCH_ADAM_FILE: &str = "arch_adam.safetensors";

/// Writes a strategy's checkpoint into `dir`: its alpha optimizer (if it has one) and its JSON
/// `state` as `state_file`. [`load_strategy`] reads it back.
pub(crate) fn save_strategy<T: Serialize>(
    dir: &Path,
    adam: Option<&Adam>,
    state_file: &str,
    state: &T,
) -> Result<(), SearchError> {
    if let Some(adam) = adam {
        save_arch_adam(dir, adam)?;
    }
    save_json(dir, state_file, state)
}

/// Restores the alpha optimizer (if any) from what [`save_strategy`] wrote and returns the
/// JSON state.
pub(crate) fn load_strategy<T: DeserializeOwned>(
    dir: &Path,
    adam: Option<&mut Adam>,
    state_file: &str,
) -> Result<T, SearchError> {
    if let Some(adam) = adam {
        load_arch_adam(dir, adam)?;
    }
    load_json(dir, state_file)
}

/// Writes the alpha optimizer alone (strategies whose only state it is).
pub(crate) fn save_arch_adam(dir: &Path, adam: &Adam) -> Result<(), SearchError> {
    Ok(adam.save(&dir.join(ARCH_ADAM_FILE))?)
}

/// Restores what [`save_arch_adam`] wrote.
pub(crate) fn load_arch_adam(dir: &Path, adam: &mut Adam) -> Result<(), SearchError> {
    Ok(adam.load(&dir.join(ARCH_ADAM_FILE))?)
}

/// Writes `value` as pretty JSON to `dir/file`.
fn save_json<T: Serialize>(dir: &Path, file: &str, value: &T) -> Result<(), SearchError> {
    let path = dir.join(file);
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| SearchError::checkpoint(&path, e.to_string()))?;
    std::fs::write(&path, json).map_err(|source| SearchError::Io { path, source })
}

/// Reads what [`save_json`] wrote to `dir/file`.
fn load_json<T: DeserializeOwned>(dir: &Path, file: &str) -> Result<T, SearchError> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| SearchError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| SearchError::checkpoint(&path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_a_missing_or_bad_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        save_json(dir.path(), "s.json", &(1.5f64, vec![3u64])).unwrap();
        let back: (f64, Vec<u64>) = load_json(dir.path(), "s.json").unwrap();
        assert_eq!(back, (1.5, vec![3]));
        let err = load_json::<u64>(dir.path(), "absent.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.json"), "{err}");
        let err = load_json::<u64>(dir.path(), "s.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.json") && err.contains("checkpoint"),
            "{err}"
        );
    }
}
