//! Fuzzes the eni_conf parser: any bytes as the base file and, after a NUL
//! byte, as a merge patch. The parser must never panic, and every accepted
//! configuration must render and re-validate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terway_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (base, patch) = match text.split_once('\0') {
        Some((b, p)) => (b, Some(p)),
        None => (text, None),
    };
    match Config::parse(base, patch) {
        Ok(loaded) => {
            let json = loaded.config.to_redacted_json();
            assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
            for d in &loaded.warnings {
                let _ = d.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
