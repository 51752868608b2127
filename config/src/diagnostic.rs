//! Findings about a configuration file, each naming the JSON path and the value.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Dotted JSON path, e.g. `vswitches."cn-shanghai-f"[1]`.
    pub path: String,
    /// The offending value as JSON text (shortened), when there is one to show.
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{tag}: {}: {}", self.path, self.message)?;
        if let Some(value) = &self.value {
            write!(f, " (value: {value})")?;
        }
        Ok(())
    }
}

const MAX_VALUE_CHARS: usize = 120;

/// JSON text of `value`, cut to a readable length.
pub(crate) fn show_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    format!("{cut}…")
}

/// Appends `key` to a dotted path, quoting keys that are not plain identifiers.
pub(crate) fn join_path(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let segment = if plain {
        key.to_owned()
    } else {
        serde_json::Value::String(key.to_owned()).to_string()
    };
    if prefix.is_empty() {
        segment
    } else {
        format!("{prefix}.{segment}")
    }
}

/// Collects findings while a file is read, so all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub items: Vec<Diagnostic>,
}

impl Findings {
    pub fn error(&mut self, path: impl Into<String>, value: Option<&serde_json::Value>, message: impl Into<String>) {
        self.push(Severity::Error, path.into(), value, message.into());
    }

    pub fn warning(&mut self, path: impl Into<String>, value: Option<&serde_json::Value>, message: impl Into<String>) {
        self.push(Severity::Warning, path.into(), value, message.into());
    }

    fn push(&mut self, severity: Severity, path: String, value: Option<&serde_json::Value>, message: String) {
        // The secret's value never goes into a message, even when it is malformed.
        let value = if path == "access_secret" {
            None
        } else {
            value.map(show_value)
        };
        self.items.push(Diagnostic {
            severity,
            path,
            value,
            message,
        });
    }
}
