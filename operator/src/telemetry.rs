//! Logging: `tracing` to stderr, plain or JSON, filtered by an EnvFilter directive.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The directive.
        filter: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging is already initialised")]
    AlreadySet,
}

/// kube-client's request layer logs every failed request at ERROR (`failed with error ...`):
/// during an API server outage, a line per watch retry and per request. The operator logs
/// each failing dependency itself, once per change of state ([`crate::dependency`]), so that
/// layer is silenced unless the filter names `kube_client` itself.
const QUIET_KUBE_CLIENT: &str = "kube_client::client::builder=off";

/// The EnvFilter directives for the user's `filter`. Pure.
pub fn compute_filter(filter: &str) -> String {
    if filter.contains("kube_client") {
        filter.to_string()
    } else if filter.trim().is_empty() {
        format!("info,{QUIET_KUBE_CLIENT}")
    } else {
        format!("{filter},{QUIET_KUBE_CLIENT}")
    }
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter =
        EnvFilter::try_new(compute_filter(filter)).map_err(|source| TelemetryError::Filter {
            filter: filter.to_string(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(wsgiscale_core::colour::stderr_colour());
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_clients_request_errors_are_quiet_unless_asked_for() {
        assert_eq!(
            compute_filter("info"),
            "info,kube_client::client::builder=off"
        );
        assert_eq!(compute_filter(""), "info,kube_client::client::builder=off");
        assert_eq!(
            compute_filter("wsgiscale_operator=debug,kube=info"),
            "wsgiscale_operator=debug,kube=info,kube_client::client::builder=off"
        );
        assert_eq!(compute_filter("kube_client=debug"), "kube_client=debug");
        for f in ["info", "debug", "wsgiscale_operator=debug,kube=info"] {
            assert!(EnvFilter::try_new(compute_filter(f)).is_ok(), "{f}");
        }
    }
}
