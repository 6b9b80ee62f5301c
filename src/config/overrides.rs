//! `--set a.b.c=value` overrides and the merge of a file onto the defaults, both edits of the
//! TOML tree before deserialising, so overrides pass the same validation as the file. A table
//! shaped like an adjacently tagged enum is replaced, not merged, when its tag changes.

use toml::{Table, Value};

use super::ConfigError;

/// If `table` looks like an adjacently tagged enum (one string, at most one table and
/// nothing else), the key of its string: the variant tag.
fn variant_tag(table: &Table) -> Option<&str> {
    let mut strings = table.iter().filter(|(_, v)| v.is_str());
    let (tag, _) = strings.next()?;
    let tables = table.values().filter(|v| v.is_table()).count();
    (strings.next().is_none() && tables <= 1 && tables + 1 == table.len()).then_some(tag.as_str())
}

/// True when setting `key` to `new` in `table` changes its enum variant.
pub(super) fn switches_variant(table: &Table, key: &str, new: Option<&Value>) -> bool {
    variant_tag(table) == Some(key)
        && matches!(
            (table.get(key), new),
            (Some(Value::String(old)), Some(Value::String(new))) if old != new
        )
}

/// Merges `overlay` into `base`: tables recursively, everything else replaced.
pub(super) fn merge(base: &mut Table, overlay: Table) {
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
pub(super) fn parse_override(arg: &str) -> Result<(Vec<String>, Value), ConfigError> {
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

pub(super) fn get_table<'a>(mut table: &'a Table, keys: &[String]) -> Option<&'a Table> {
    for key in keys {
        table = table.get(key)?.as_table()?;
    }
    Some(table)
}

pub(super) fn is_override_switch(tree: &Table, keys: &[String], value: &Value) -> bool {
    let Some((leaf, parents)) = keys.split_last() else {
        return false;
    };
    get_table(tree, parents).is_some_and(|t| switches_variant(t, leaf, Some(value)))
}

/// Sets `keys` to `value` in `tree`, creating missing tables on the way (an `Option` field
/// that defaults to None is absent from the tree but still a valid key).
pub(super) fn apply_override(
    tree: &mut Table,
    keys: &[String],
    value: Value,
) -> Result<(), String> {
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
