//! Log setup: `tracing` to stderr, plain or JSON, filtered by an EnvFilter directive.

use tracing_subscriber::EnvFilter;
use wsgiscale_core::config::LogFormat;

/// Installs the global subscriber. A bad filter falls back to `info` with a warning.
pub fn init(format: LogFormat, level: &str) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(wsgiscale_core::colour::stderr_colour());
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
