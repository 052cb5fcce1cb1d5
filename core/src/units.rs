//! Parsing of the human-friendly sizes and durations used on the command line and in the
//! config file (`64Mi`, `10M`, `1.5s`, `250ms`, `2m`).

use std::time::Duration;

/// A size or duration that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// The text is not a number followed by a known suffix.
    #[error("invalid size {0:?}: expected bytes with an optional K, M, G, Ki, Mi or Gi suffix")]
    Size(String),
    /// The text is not a number of seconds or a number with ms, s, m or h.
    #[error("invalid duration {0:?}: expected seconds, or a number with ms, s, m or h")]
    Duration(String),
}

/// Parses a byte size: `1048576`, `512K`, `64Mi`, `1G` (K/M/G are powers of 1000, Ki/Mi/Gi of
/// 1024, matching Kubernetes quantities).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let err = || UnitError::Size(text.to_string());
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    let value: f64 = num.parse().map_err(|_| err())?;
    if !value.is_finite() || value < 0.0 {
        return Err(err());
    }
    let bytes = value * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: a bare number is seconds (`30`, `0.5`); suffixes `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    let err = || UnitError::Duration(text.to_string());
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let scale = match suffix {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let value: f64 = num.parse().map_err(|_| err())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
}

/// Formats a duration the way [`parse_duration`] reads it back, without losing precision.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("0", Some(0)),
            ("1024", Some(1024)),
            ("10K", Some(10_000)),
            ("64Mi", Some(64 << 20)),
            ("1.5Gi", Some(3 << 29)),
            ("2G", Some(2_000_000_000)),
            ("", None),
            ("-1", None),
            ("12X", None),
            ("Mi", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("30", Some(Duration::from_secs(30))),
            ("0.5", Some(Duration::from_millis(500))),
            ("250ms", Some(Duration::from_millis(250))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("", None),
            ("5 parsecs", None),
            ("-3", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn duration_round_trip() {
        for ms in [0u64, 1, 250, 1000, 90_000, 1_234_567] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
