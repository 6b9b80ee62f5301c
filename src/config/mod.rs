//! Configuration loading shared by every command: a TOML file merged onto the compiled-in
//! defaults, `--set a.b.c=value` overrides edited into the TOML tree before deserialising (so
//! they pass the same validation as the file), and errors that name the key, where it came
//! from (file:line or the `--set` argument), the valid keys and the nearest one.
//!
//! Config structs are expected to carry `#[serde(deny_unknown_fields)]` (see
//! [`check_rejects_unknown_keys`] for a test helper); the unknown-key message comes from
//! serde's own field list, so `Option` fields that are `None` by default (and therefore
//! absent from the serialised defaults) still count as valid keys.
//!
//! Merging rules:
//! - tables merge recursively; any other value (arrays included) replaces the default;
//! - a table shaped like an adjacently tagged enum, `{ name = "darts", params = { .. } }`
//!   (one string and at most one table), is replaced rather than merged when the file or a
//!   `--set` changes its string, so switching strategy does not inherit the old strategy's
//!   params. `--set` variant switches are applied before the other overrides, so
//!   `--set s.params.tau=1 --set s.name=snas` works in either order.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

mod errors;
mod overrides;

use errors::Provenance;
pub use errors::{nearest, ConfigError, Origin};
use overrides::{apply_override, is_override_switch, merge, parse_override};

/// Name of the resolved config written into each run directory.
pub const RESOLVED_CONFIG_FILE: &str = "config.toml";

/// A config file read and parsed once; what [`load_config_from`] and
/// [`load_config_with_section`] merge, and what callers peek at (`env`, `encoder.kind`) to
/// pick the defaults before merging.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
    table: Table,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let table: Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
            table,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The string at the dotted `key` (`env`, `encoder.kind`), if the file sets one.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        let mut keys = key.split('.');
        let mut value = self.table.get(keys.next()?)?;
        for k in keys {
            value = value.get(k)?;
        }
        value.as_str()
    }
}

/// Loads a config: the serialised `defaults`, with the file at `path` (if any) merged onto
/// them, then each `--set KEY=VALUE` in `overrides` applied, then deserialised into `T`.
///
/// VALUE is parsed as a TOML value (`3e-4`, `true`, `[1, 2]`, `"text"`, `{ a = 1 }`); a bare
/// word that is not valid TOML (`coinrun`) is taken as a string.
pub fn load_config<T: DeserializeOwned + Serialize>(
    path: Option<&Path>,
    defaults: T,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let file = path.map(ConfigFile::read).transpose()?;
    load_config_from(file.as_ref(), defaults, overrides)
}

/// [`load_config`] on a file already read.
pub fn load_config_from<T: DeserializeOwned + Serialize>(
    file: Option<&ConfigFile>,
    defaults: T,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let merged = Merged::new(to_table(&defaults)?, file, overrides)?;
    merged.deserialize(Value::Table(merged.tree.clone()))
}

/// Loads a config whose top-level table `section` belongs to another type than the rest: `T`
/// from every key but `section`, `S` from `section` (e.g. a pipeline run: the PPO run's
/// config, and `[pipeline]`). One tree is merged and overridden as in [`load_config`], so a
/// `--set section.key=...` and errors that name `section.key` work as for any other key.
pub fn load_config_with_section<T, S>(
    file: Option<&ConfigFile>,
    defaults: T,
    section: &str,
    section_defaults: S,
    overrides: &[String],
) -> Result<(T, S), ConfigError>
where
    T: DeserializeOwned + Serialize,
    S: DeserializeOwned + Serialize,
{
    let mut defaults = to_table(&defaults)?;
    defaults.insert(
        section.to_owned(),
        Value::Table(to_table(&section_defaults)?),
    );
    let merged = Merged::new(defaults, file, overrides)?;
    let mut rest = merged.tree.clone();
    let section_value = rest.remove(section).unwrap_or(Value::Table(Table::new()));
    let main: T = merged.deserialize(Value::Table(rest))?;
    // A one-entry map keyed by the section's name, so that toml's error path starts with it.
    let mut wrapped = Table::new();
    wrapped.insert(section.to_owned(), section_value);
    let mut map: std::collections::BTreeMap<String, S> =
        merged.deserialize(Value::Table(wrapped))?;
    let part = map.remove(section).expect("the section was inserted above");
    Ok((main, part))
}

/// Defaults, file and overrides merged into one tree, with what error messages need.
struct Merged<'f> {
    defaults: Table,
    tree: Table,
    file: Option<&'f ConfigFile>,
    applied: Vec<(Vec<String>, String)>,
}

impl<'f> Merged<'f> {
    fn new(
        defaults: Table,
        file: Option<&'f ConfigFile>,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let mut tree = defaults.clone();
        if let Some(file) = file {
            merge(&mut tree, file.table.clone());
        }
        let mut parsed = Vec::with_capacity(overrides.len());
        for arg in overrides {
            let (keys, value) = parse_override(arg)?;
            parsed.push((arg.as_str(), keys, value));
        }
        // Variant switches first: they drop the old variant's params, which must not erase
        // params given by other overrides.
        let (switches, others): (Vec<_>, Vec<_>) = parsed
            .into_iter()
            .partition(|(_, keys, value)| is_override_switch(&tree, keys, value));
        let mut applied = Vec::new();
        for (arg, keys, value) in switches.into_iter().chain(others) {
            apply_override(&mut tree, &keys, value).map_err(|reason| ConfigError::BadOverride {
                arg: arg.to_owned(),
                reason,
            })?;
            applied.push((keys, arg.to_owned()));
        }
        Ok(Self {
            defaults,
            tree,
            file,
            applied,
        })
    }

    /// Deserialises `value` (the tree or a part of it whose error paths are paths of the
    /// tree), explaining an error with the key's origin.
    fn deserialize<T: DeserializeOwned>(&self, value: Value) -> Result<T, ConfigError> {
        T::deserialize(value).map_err(|err| {
            Provenance {
                defaults: &self.defaults,
                merged: &self.tree,
                file: self.file,
                overrides: &self.applied,
            }
            .explain(&err)
        })
    }
}

/// Writes `value` as `run_dir/config.toml` (creating `run_dir`), atomically: a reader sees
/// either the old file or the complete new one, never half of it.
pub fn save_resolved_config<T: Serialize>(
    value: &T,
    run_dir: &Path,
) -> Result<PathBuf, ConfigError> {
    let text = to_toml_string(value)?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Write { path, source }
    };
    fs::create_dir_all(run_dir).map_err(write_err(run_dir))?;
    let path = run_dir.join(RESOLVED_CONFIG_FILE);
    let tmp = run_dir.join(format!(
        ".{RESOLVED_CONFIG_FILE}.{}.tmp",
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(b"# Resolved configuration of this run (defaults + file + --set).\n")?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(source) = result {
        // Best effort: a leftover temp file is harmless but confusing.
        let _ = fs::remove_file(&tmp);
        return Err(ConfigError::Write { path, source });
    }
    Ok(path)
}

/// `value` as pretty TOML (what `save_resolved_config` writes, without its header line).
pub fn to_toml_string<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(value).map_err(|e| ConfigError::Serialize(e.to_string()))
}

/// `value` as a fenced TOML block, for TensorBoard's text plugin (which renders markdown).
pub fn to_markdown<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    Ok(format!("```toml\n{}```\n", to_toml_string(value)?))
}

/// For tests of config types: tries an unknown key in every table of the serialised
/// `defaults` and returns the dotted paths of the tables that accepted it (root = "").
/// An empty result means every struct rejects unknown keys; a table that is a free-form map
/// shows up here by design.
pub fn check_rejects_unknown_keys<T: DeserializeOwned + Serialize + Clone>(
    defaults: &T,
) -> Result<Vec<String>, ConfigError> {
    let mut paths = Vec::new();
    table_paths(&to_table(defaults)?, &mut Vec::new(), &mut paths);
    let mut accepting = Vec::new();
    for path in paths {
        let key = if path.is_empty() {
            "zz_not_a_key".to_owned()
        } else {
            format!("{path}.zz_not_a_key")
        };
        match load_config(None, defaults.clone(), &[format!("{key}=1")]) {
            Err(ConfigError::UnknownKey { key: reported, .. }) if reported == key => {}
            _ => accepting.push(path),
        }
    }
    Ok(accepting)
}

fn table_paths(table: &Table, prefix: &mut Vec<String>, out: &mut Vec<String>) {
    out.push(prefix.join("."));
    for (key, value) in table {
        if let Value::Table(child) = value {
            prefix.push(key.clone());
            table_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn to_table<T: Serialize>(value: &T) -> Result<Table, ConfigError> {
    Table::try_from(value).map_err(|e| ConfigError::Serialize(e.to_string()))
}

#[cfg(test)]
mod tests;
