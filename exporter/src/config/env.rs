//! `FLOWTEL_<SECTION>_<KEY>` variables over the YAML tree. The accepted names are
//! derived from the default configuration's keys, so a new setting gets its variable
//! (and its documentation line) without anyone keeping a list.
use serde_yaml::{Mapping, Value};

use super::{Config, ConfigError};

/// Variables that are not settings.
const NOT_SETTINGS: [&str; 1] = ["FLOWTEL_CONFIG"];

/// Every setting as (dotted key, variable name).
pub fn settings() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tree = serde_yaml::to_value(Config::default()).unwrap_or(Value::Null);
    collect(&tree, "", &mut out);
    out.into_iter().map(|key| (key.clone(), format!("FLOWTEL_{}", key.replace('.', "_").to_uppercase()))).collect()
}

fn collect(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let k = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
                collect(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

pub fn apply_overrides(tree: &mut Value, vars: &[(String, String)]) -> Result<(), ConfigError> {
    let known = settings();
    for (var, raw) in vars {
        if !var.starts_with("FLOWTEL_") || NOT_SETTINGS.contains(&var.as_str()) {
            continue;
        }
        let Some((key, _)) = known.iter().find(|(_, name)| name == var) else {
            let names: Vec<&str> = known.iter().map(|(_, n)| n.as_str()).collect();
            return Err(ConfigError::Env {
                var: var.clone(),
                reason: format!("not a flowtel setting; known: {}", names.join(", ")),
            });
        };
        // A YAML scalar, so `100`, `true` and `auto` take the type the key expects.
        let value: Value = serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
        set(tree, key, value);
        // Check this one variable now, so an error names it rather than the whole tree.
        if let Err(err) = serde_yaml::from_value::<Config>(tree.clone()) {
            return Err(ConfigError::Env { var: var.clone(), reason: format!("{raw:?} for {key}: {err}") });
        }
    }
    Ok(())
}

fn set(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else { return };
        let k = Value::String(part.to_owned());
        if parts.peek().is_none() {
            map.insert(k, value);
            return;
        }
        node = map.entry(k).or_insert(Value::Mapping(Mapping::new()));
    }
}
