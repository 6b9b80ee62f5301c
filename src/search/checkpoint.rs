//! The strategies' checkpoint files: the JSON state (sampler, schedules, counters) each
//! strategy writes beside its alpha optimizer's safetensors, read and written in one place so
//! that every strategy reports a missing or malformed file the same way (path and reason).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::SearchError;

/// Writes `value` as pretty JSON to `dir/file`.
pub(crate) fn save_json<T: Serialize>(
    dir: &Path,
    file: &str,
    value: &T,
) -> Result<(), SearchError> {
    let path = dir.join(file);
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| SearchError::checkpoint(&path, e.to_string()))?;
    std::fs::write(&path, json).map_err(|source| SearchError::Io { path, source })
}

/// Reads what [`save_json`] wrote to `dir/file`.
pub(crate) fn load_json<T: DeserializeOwned>(dir: &Path, file: &str) -> Result<T, SearchError> {
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
