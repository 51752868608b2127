//! Go-style durations ("90s", "10m", "1h30m", "1.5h", "250ms"), the format
//! upstream Terway's `eni_conf` uses for every time setting.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string. Negative values are refused:
/// no setting of ours means anything with a negative duration.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_nanos: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() || number == "." {
            return Err(format!("expected a number at {:?}", &s[start..]));
        }
        let value: f64 = number.parse().map_err(|_| format!("bad number {number:?}"))?;
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit after {number:?} (use ns, us, ms, s, m or h)")),
            other => return Err(format!("unknown unit {other:?} (use ns, us, ms, s, m or h)")),
        };
        total_nanos += value * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Formats a duration the way Go prints it, so effective configs read back.
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return trim_float(nanos as f64 / 1e3, "µs");
    }
    if nanos < 1_000_000_000 {
        return trim_float(nanos as f64 / 1e6, "ms");
    }
    let total_secs = d.as_secs();
    let frac = d.subsec_nanos();
    let hours = total_secs / 3600;
    let minutes = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{secs}s"));
    } else {
        out.push_str(&trim_float(secs as f64 + f64::from(frac) / 1e9, "s"));
    }
    out
}

fn trim_float(v: f64, unit: &str) -> String {
    let mut s = format!("{v:.9}");
    while s.ends_with('0') {
        s.pop();
    }
    if s.ends_with('.') {
        s.pop();
    }
    format!("{s}{unit}")
}

/// serde adapter: a `Duration` written as a Go duration string.
pub(crate) mod go_string {
    use super::format_go_duration;
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_go_duration(*d))
    }

    pub mod option {
        use super::format_go_duration;
        use serde::Serializer;
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_str(&format_go_duration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse_go_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_go_duration("2us").unwrap(), Duration::from_micros(2));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration("1h2m3s4ms").unwrap(),
            Duration::from_millis(3_723_004)
        );
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in ["", "10", "ten minutes", "5x", "-5s", "h", "1..2s", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "0s", "90ns", "1.5µs", "250ms", "1m30s", "1h30m0s", "2h0m0s", "10m0s", "1.5s",
        ] {
            let d = parse_go_duration(text).unwrap();
            assert_eq!(format_go_duration(d), text);
        }
    }
}
