//! terway-config: the Terway-compatible `eni_conf` daemon configuration.
//!
//! [`Config`] is the entry type: [`Config::load`] reads a ConfigMap mount or a
//! plain file and applies an optional per-node merge patch; every problem of a
//! file comes back at once, each naming its JSON path and value.
//! [`ConfigWatcher`] reloads it live; [`conflist`] renders the CNI conflist and
//! [`capacity`] computes max pods.

pub mod capacity;
pub mod conflist;
pub mod defaults;
mod diagnostic;
pub mod duration;
mod merge;
mod model;
mod parse;
mod reload;
mod secret;

pub use diagnostic::{Diagnostic, Severity};
pub use merge::merge_patch;
pub use model::*;
pub use reload::{ConfigSource, ConfigWatcher, ReloadEvent};
pub use secret::Secret;

use diagnostic::Findings;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not valid JSON: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin} must be a JSON object, found {found}")]
    NotAnObject { origin: String, found: &'static str },
    #[error("{origin} is invalid ({} error(s)):\n{}", errors.len(), list(errors))]
    Invalid {
        origin: String,
        errors: Vec<Diagnostic>,
        warnings: Vec<Diagnostic>,
    },
}

fn list(items: &[Diagnostic]) -> String {
    items.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}

/// A configuration that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// Reads `path` — a file, or a ConfigMap mount directory holding `eni_conf` —
    /// and applies `override_path` (a JSON merge patch, RFC 7396) over it.
    pub fn load(path: &Path, override_path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let base = read_json(path)?;
        let patch = override_path.map(read_json).transpose()?;
        Self::from_parts(base, patch.as_ref(), &path.display().to_string())
    }

    /// Parses JSON text, with an optional merge-patch text.
    pub fn parse(base: &str, override_text: Option<&str>) -> Result<Loaded, ConfigError> {
        let base = parse_json(base, "config")?;
        let patch = override_text.map(|t| parse_json(t, "override")).transpose()?;
        Self::from_parts(base, patch.as_ref(), "config")
    }

    /// Applies `patch` over `base` and validates the result.
    pub fn from_parts(mut base: Value, patch: Option<&Value>, origin: &str) -> Result<Loaded, ConfigError> {
        if let Some(patch) = patch {
            if !patch.is_object() {
                return Err(ConfigError::NotAnObject {
                    origin: "the node override".into(),
                    found: kind(patch),
                });
            }
            merge_patch(&mut base, patch);
        }
        Self::from_value(&base, origin)
    }

    /// Validates a JSON value into a configuration.
    pub fn from_value(value: &Value, origin: &str) -> Result<Loaded, ConfigError> {
        let Some(obj) = value.as_object() else {
            return Err(ConfigError::NotAnObject {
                origin: origin.into(),
                found: kind(value),
            });
        };
        let mut findings = Findings::default();
        let config = parse::config_from_object(obj, &mut findings);
        let (errors, warnings): (Vec<_>, Vec<_>) =
            findings.items.into_iter().partition(|d| d.severity == Severity::Error);
        if errors.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(ConfigError::Invalid {
                origin: origin.into(),
                errors,
                warnings,
            })
        }
    }

    /// The configuration of a file with every key left out.
    pub fn defaults() -> Config {
        match Self::from_value(&Value::Object(Default::default()), "defaults") {
            Ok(loaded) => loaded.config,
            Err(e) => unreachable!("the empty configuration is valid: {e}"),
        }
    }
}

/// The file that holds the config: `path` itself, or `path/eni_conf` for a ConfigMap mount.
pub fn resolve_config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(defaults::CONFIGMAP_KEY)
    } else {
        path.to_path_buf()
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let file = resolve_config_file(path);
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
        path: file.clone(),
        source,
    })?;
    parse_json(&text, &file.display().to_string())
}

pub(crate) fn parse_json(text: &str, origin: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        origin: origin.into(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
