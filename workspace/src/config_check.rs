//! `terwayd config check`: validate a ConfigMap before rolling it out.

use std::io::Write;
use std::path::Path;
use terway_config::{Config, ConfigError};

/// Prints the effective configuration (secrets redacted) to `out` and the
/// warnings to `err`, returning true; or prints every error and returns false.
pub fn run(
    file: &Path,
    override_file: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<bool> {
    match Config::load(file, override_file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                writeln!(err, "{w}")?;
            }
            writeln!(out, "{}", loaded.config.to_redacted_json())?;
            Ok(true)
        }
        Err(ConfigError::Invalid {
            origin,
            errors,
            warnings,
        }) => {
            writeln!(err, "{origin}: {} error(s)", errors.len())?;
            for d in errors.iter().chain(&warnings) {
                writeln!(err, "{d}")?;
            }
            Ok(false)
        }
        Err(other) => {
            writeln!(err, "error: {other}")?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(base: &str, patch: Option<&str>) -> (bool, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eni_conf");
        std::fs::write(&file, base).unwrap();
        let patch_file = patch.map(|p| {
            let f = dir.path().join("override.json");
            std::fs::write(&f, p).unwrap();
            f
        });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = run(&file, patch_file.as_deref(), &mut out, &mut err).unwrap();
        (ok, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn upstream_tolerated_values_pass_with_the_adjusted_value_shown() {
        let (ok, out, err) = check(r#"{"max_pool_size":5,"min_pool_size":10,"eni_cap_ratio":0}"#, None);
        assert!(ok, "{err}");
        assert!(
            err.contains("warning: min_pool_size") && err.contains("using 5"),
            "{err}"
        );
        assert!(
            err.contains("warning: eni_cap_ratio") && err.contains("using 1"),
            "{err}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["min_pool_size"].as_u64(), v["eni_cap_ratio"].as_f64()),
            (Some(5), Some(1.0))
        );
    }

    #[test]
    fn prints_effective_config_with_secret_redacted() {
        let (ok, out, _) = check(
            r#"{"access_key":"LTAIkey","access_secret":"topsecret","max_pool_size":5}"#,
            None,
        );
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["max_pool_size"], 5);
        assert_eq!(v["access_secret"], "<redacted>");
        assert!(!out.contains("topsecret"));
    }

    #[test]
    fn reports_every_error() {
        let (ok, out, err) = check(
            r#"{"max_pool_size":-1,"service_cidr":"10.0.0.0/33","ip_stack":"ipv5"}"#,
            None,
        );
        assert!(!ok);
        assert!(out.is_empty());
        assert!(err.contains("3 error(s)"), "{err}");
        assert!(
            err.contains("max_pool_size") && err.contains("service_cidr") && err.contains("ip_stack"),
            "{err}"
        );
    }

    #[test]
    fn applies_the_override() {
        let (ok, out, _) = check(r#"{"max_pool_size":5}"#, Some(r#"{"max_pool_size":7}"#));
        assert!(ok);
        assert!(out.contains("\"max_pool_size\": 7"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = run(Path::new("/nonexistent/eni_conf"), None, &mut out, &mut err).unwrap();
        assert!(!ok);
        assert!(String::from_utf8(err).unwrap().contains("/nonexistent/eni_conf"));
    }
}
