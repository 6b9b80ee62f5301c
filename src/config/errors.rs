//! Config errors that say where a value came from: the [`Origin`] of a key (file:line or the
//! `--set` argument), the valid keys of its table and the nearest one.

use std::fmt;
use std::path::PathBuf;

use toml::Table;

use super::overrides::get_table;
use super::ConfigFile;

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

/// What is needed to say where a failing key came from.
pub(super) struct Provenance<'a> {
    pub(super) defaults: &'a Table,
    /// Defaults + file + overrides: what was deserialised.
    pub(super) merged: &'a Table,
    pub(super) file: Option<&'a ConfigFile>,
    /// Applied overrides, in application order: (key path, argument).
    pub(super) overrides: &'a [(Vec<String>, String)],
}

impl Provenance<'_> {
    /// The last source that set `keys`: an override on that key or above/below it, else the
    /// file if it has the key, else the defaults.
    pub(super) fn origin(&self, keys: &[String]) -> Origin {
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
    pub(super) fn explain(&self, err: &toml::de::Error) -> ConfigError {
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
