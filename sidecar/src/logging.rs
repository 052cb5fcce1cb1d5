//! Log setup: `tracing` to stderr, plain or JSON, filtered by an EnvFilter directive.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use wsgiscale_core::config::LogFormat;

/// Installs the global subscriber. A bad filter falls back to `info` with a warning.
pub fn init(format: LogFormat, level: &str) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    // var_os: a value that is not UTF-8 is still set (and turns colour off).
    let no_color = std::env::var_os("NO_COLOR").map(|v| v.to_string_lossy().into_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(use_colour(
            std::io::stderr().is_terminal(),
            no_color.as_deref(),
        ));
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(filter = level, error = %e, "invalid log filter, using info");
    }
}

/// Whether plain log lines get ANSI colours: only on a terminal (never in a file, a pipe or a
/// container log), and never when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some(""), false),
            (false, Some("1"), false),
        ];
        for (is_terminal, no_color, want) in cases {
            assert_eq!(
                use_colour(is_terminal, no_color),
                want,
                "is_terminal={is_terminal} NO_COLOR={no_color:?}"
            );
        }
    }
}
