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

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// Name of the resolved config written into each run directory.
pub const RESOLVED_CONFIG_FILE: &str = "config.toml";

/// Where a config value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file; `line` is 1-based, when the key could be located.
    File { path: PathBuf, line: Option<usize> },
    /// A `--set` argument, as given.
    Override(String),
    /// The compiled-in defaults (an error here is a bug in a config type).
    Defaults,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Override(arg) => write!(f, "--set {arg}"),
            Origin::Defaults => write!(f, "built-in defaults"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is not valid TOML; `message` carries toml's line, column and snippet.
    #[error("cannot parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },

    /// `key` (dotted, full path) is not a field of its table. `valid` lists the keys of that
    /// table; `suggestion` is the nearest of them, as a full dotted path.
    #[error(
        "unknown config key `{key}` ({origin}){}{}",
        did_you_mean(.suggestion),
        valid_keys(.key, .valid)
    )]
    UnknownKey {
        key: String,
        origin: Origin,
        valid: Vec<String>,
        suggestion: Option<String>,
    },

    #[error("bad --set {arg:?}: {reason}")]
    BadOverride { arg: String, reason: String },

    /// A value of the wrong type, out of range, or an unknown enum variant (then
    /// `suggestion` is the nearest variant).
    #[error(
        "bad value for config key `{key}` ({origin}): {message}{}",
        did_you_mean(.suggestion)
    )]
    TypeMismatch {
        key: String,
        origin: Origin,
        message: String,
        suggestion: Option<String>,
    },

    /// Any other deserialisation failure (e.g. a missing required field).
    #[error("invalid config{} ({origin}): {message}", at_key(.key))]
    Invalid {
        key: Option<String>,
        origin: Origin,
        message: String,
    },

    /// A config type could not be written as TOML (a bug in the type, e.g. a map with
    /// non-string keys).
    #[error("cannot serialise config as TOML: {0}")]
    Serialize(String),

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

fn valid_keys(key: &str, valid: &[String]) -> String {
    let place = match key.rsplit_once('.') {
        Some((parent, _)) => format!("in `{parent}`"),
        None => "at the top level".to_owned(),
    };
    if valid.is_empty() {
        format!("; no keys are allowed {place}")
    } else {
        format!("; valid keys {place}: {}", valid.join(", "))
    }
}

fn at_key(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" at `{k}`"))
        .unwrap_or_default()
}

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

/// The candidate closest to `word` (case-insensitive Jaro-Winkler), if any is reasonably
/// close. Used for "did you mean" in config errors; also handy for names on the command line.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.to_lowercase()), c))
        // Below ~0.75 the "nearest" key is usually unrelated and the hint misleads.
        .filter(|&(score, _)| score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
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

/// If `table` looks like an adjacently tagged enum (one string, at most one table and
/// nothing else), the key of its string: the variant tag.
fn variant_tag(table: &Table) -> Option<&str> {
    let mut strings = table.iter().filter(|(_, v)| v.is_str());
    let (tag, _) = strings.next()?;
    let tables = table.values().filter(|v| v.is_table()).count();
    (strings.next().is_none() && tables <= 1 && tables + 1 == table.len()).then_some(tag.as_str())
}

/// True when setting `key` to `new` in `table` changes its enum variant.
fn switches_variant(table: &Table, key: &str, new: Option<&Value>) -> bool {
    variant_tag(table) == Some(key)
        && matches!(
            (table.get(key), new),
            (Some(Value::String(old)), Some(Value::String(new))) if old != new
        )
}

/// Merges `overlay` into `base`: tables recursively, everything else replaced.
fn merge(base: &mut Table, overlay: Table) {
    if let Some(tag) = variant_tag(base) {
        if switches_variant(base, tag, overlay.get(tag)) {
            *base = overlay;
            return;
        }
    }
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(new)) => merge(existing, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Splits `a.b.c=value` into its key path and TOML value.
fn parse_override(arg: &str) -> Result<(Vec<String>, Value), ConfigError> {
    let bad = |reason: String| ConfigError::BadOverride {
        arg: arg.to_owned(),
        reason,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. ppo.learning_rate=3e-4".to_owned()))?;
    let keys: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
    for segment in &keys {
        let ok = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(bad(format!(
                "key `{}` must be dot-separated names of letters, digits, '_' or '-'",
                key.trim()
            )));
        }
    }
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(bad(
            "missing value (write KEY=\"\" for an empty string)".to_owned()
        ));
    }
    let value = match toml::from_str::<Table>(&format!("value = {raw}")) {
        // A value like `1\nother = 2` parses, but into two keys: not a single value.
        Ok(mut table) if table.len() == 1 => table.remove("value"),
        Ok(_) => None,
        Err(err) => {
            if raw.starts_with(['[', '{', '"', '\'']) {
                return Err(bad(format!("value is not valid TOML: {}", err.message())));
            }
            None
        }
    };
    Ok((keys, value.unwrap_or_else(|| Value::String(raw.to_owned()))))
}

fn get_table<'a>(mut table: &'a Table, keys: &[String]) -> Option<&'a Table> {
    for key in keys {
        table = table.get(key)?.as_table()?;
    }
    Some(table)
}

fn is_override_switch(tree: &Table, keys: &[String], value: &Value) -> bool {
    let Some((leaf, parents)) = keys.split_last() else {
        return false;
    };
    get_table(tree, parents).is_some_and(|t| switches_variant(t, leaf, Some(value)))
}

/// Sets `keys` to `value` in `tree`, creating missing tables on the way (an `Option` field
/// that defaults to None is absent from the tree but still a valid key).
fn apply_override(tree: &mut Table, keys: &[String], value: Value) -> Result<(), String> {
    let Some((leaf, parents)) = keys.split_last() else {
        return Err("empty key".to_owned());
    };
    let mut table = tree;
    for (i, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            other => {
                return Err(format!(
                    "`{}` is not a table (its value is of type {})",
                    keys[..=i].join("."),
                    other.type_str()
                ))
            }
        };
    }
    if switches_variant(table, leaf, Some(&value)) {
        table.clear();
    }
    match (table.get_mut(leaf), value) {
        (Some(Value::Table(existing)), Value::Table(new)) => merge(existing, new),
        (_, value) => {
            table.insert(leaf.clone(), value);
        }
    }
    Ok(())
}

/// What is needed to say where a failing key came from.
struct Provenance<'a> {
    defaults: &'a Table,
    /// Defaults + file + overrides: what was deserialised.
    merged: &'a Table,
    file: Option<&'a ConfigFile>,
    /// Applied overrides, in application order: (key path, argument).
    overrides: &'a [(Vec<String>, String)],
}

impl Provenance<'_> {
    /// The last source that set `keys`: an override on that key or above/below it, else the
    /// file if it has the key, else the defaults.
    fn origin(&self, keys: &[String]) -> Origin {
        if keys.is_empty() {
            return match self.file {
                Some(file) => Origin::File {
                    path: file.path.clone(),
                    line: None,
                },
                None => Origin::Defaults,
            };
        }
        let related = |set: &[String]| set.starts_with(keys) || keys.starts_with(set);
        if let Some((_, arg)) = self.overrides.iter().rev().find(|(set, _)| related(set)) {
            return Origin::Override(arg.clone());
        }
        if let Some(file) = self.file {
            let (parents, leaf) = keys.split_at(keys.len() - 1);
            if get_table(&file.table, parents).is_some_and(|t| t.contains_key(&leaf[0])) {
                return Origin::File {
                    path: file.path.clone(),
                    line: key_line(&file.text, keys),
                };
            }
        }
        Origin::Defaults
    }

    /// Turns serde's error into one that names the key, its origin and the alternatives.
    fn explain(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().to_owned();
        let path = error_key_path(err);
        let join = |keys: &[String]| keys.join(".");

        if let Some((field, mut valid)) = unknown_field(&message, get_table(self.merged, &path)) {
            if valid.is_empty() && !message.contains("there are no fields") {
                // Not serde's usual wording: fall back to the keys the defaults have here.
                if let Some(table) = get_table(self.defaults, &path) {
                    valid = table.keys().cloned().collect();
                }
            }
            let mut full = path.clone();
            full.push(field.clone());
            let suggestion = nearest(&field, valid.iter().map(String::as_str)).map(|s| {
                let mut keys = path.clone();
                keys.push(s.to_owned());
                join(&keys)
            });
            return ConfigError::UnknownKey {
                key: join(&full),
                origin: self.origin(&full),
                valid,
                suggestion,
            };
        }

        let origin = self.origin(&path);
        let key = join(&path);
        let value_error = [
            "invalid type",
            "invalid value",
            "invalid length",
            "unknown variant",
        ]
        .iter()
        .any(|p| message.starts_with(p));
        if value_error && !path.is_empty() {
            let suggestion = message
                .strip_prefix("unknown variant `")
                .and_then(|rest| rest.split_once('`'))
                .and_then(|(variant, tail)| {
                    let variants = backticked(tail);
                    nearest(variant, variants.iter().map(String::as_str)).map(str::to_owned)
                });
            return ConfigError::TypeMismatch {
                key,
                origin,
                message,
                suggestion,
            };
        }
        ConfigError::Invalid {
            key: (!path.is_empty()).then_some(key),
            origin,
            message,
        }
    }
}

/// The key path toml attaches to a deserialisation error. toml 0.8 keeps it private but
/// prints it as a final "in `a.b.c`" line after the message.
fn error_key_path(err: &toml::de::Error) -> Vec<String> {
    let shown = err.to_string();
    let rest = shown.strip_prefix(err.message()).unwrap_or(&shown);
    rest.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("in `")?.strip_suffix('`'))
        .map(|keys| keys.split('.').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The unknown key and serde's list of valid ones, if `message` reports an unknown key.
/// Structs say "unknown field `x`, expected one of `a`, `b`"; an adjacently tagged enum with
/// `deny_unknown_fields` says "invalid value: string \"x\", expected \"name\" or \"params\"",
/// which is only an unknown key when `x` really is a key of the table (`table`).
fn unknown_field(message: &str, table: Option<&Table>) -> Option<(String, Vec<String>)> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        return Some((field.to_owned(), backticked(tail)));
    }
    let rest = message.strip_prefix("invalid value: string \"")?;
    let (field, tail) = rest.split_once('"')?;
    if !table?.contains_key(field) {
        return None;
    }
    let valid = tail
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), valid))
}

/// The names between backticks in serde's "expected one of `a`, `b`" lists.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// 1-based line of the deepest key of `keys` found in the TOML `text`.
fn key_line(text: &str, keys: &[String]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for key in keys {
        let Some((k, item)) = table.get_key_value(key) else {
            break;
        };
        span = k.span().or(span);
        match item.as_table_like() {
            Some(child) => table = child,
            None => break,
        }
    }
    let offset = span?.start;
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
