//! The `wsgiscale` command line.

use clap::{Parser, Subcommand};
use wsgiscale_core::config::Settings;

/// wsgiscale: a WSGI server with preloaded, forked, GIL-isolated CPython workers that scale
/// with load.
#[derive(Debug, Parser)]
#[command(name = "wsgiscale", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a WSGI application.
    Serve(Box<Settings>),
    /// Print the wsgiscale settings (or a WsgiApp) equivalent to a gunicorn or uWSGI
    /// configuration, with what became of each setting.
    Migrate(crate::migrate::MigrateArgs),
    /// Internal: the fork server, started by `serve`.
    #[command(name = "__zygote", hide = true)]
    Zygote {
        /// The inherited control socket.
        #[arg(long)]
        control_fd: i32,
    },
}
