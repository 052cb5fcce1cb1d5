//! The one entry point of both ways to run wsgiscale: the standalone binary's `main` and the
//! Python package's console script (through the extension module) call [`main`].

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser};
use wsgiscale_core::config::{without_env, Settings};

use crate::cli::{Cli, Command};
use crate::launch::{self, Launch};
use crate::{logging, server, zygote};

/// Parses `argv` (program name first) and runs the command; returns the exit status.
pub fn main(argv: Vec<OsString>, how: Launch) -> i32 {
    launch::set(how);
    let cli = match parse(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Zygote { control_fd } => zygote::main(control_fd).clamp(0, 255),
        Command::Serve(args) => serve(*args),
        Command::Migrate(args) => crate::migrate::main(args),
    }
}

/// Parses the command line; with `serve --ignore-env`, a second time without the settings'
/// environment twins.
fn parse(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let cli = Cli::try_parse_from(argv.clone())?;
    match &cli.command {
        Command::Serve(args) if args.ignore_env => {
            let command = Cli::command().mut_subcommand("serve", without_env);
            Cli::from_arg_matches(&command.try_get_matches_from(argv)?)
        }
        _ => Ok(cli),
    }
}

fn serve(args: Settings) -> i32 {
    let file = match &args.config {
        Some(path) => match server::load_config_file(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("wsgiscale: {e}");
                return 2;
            }
        },
        None => Default::default(),
    };
    let cfg = match wsgiscale_core::config::resolve(&args.over(&file), launch::virtual_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgiscale: {e}");
            return 2;
        }
    };
    if let Some(venv) = &cfg.python.venv {
        if let Err(e) = check_venv(venv) {
            eprintln!("wsgiscale: {e}");
            return 2;
        }
    }
    logging::init(cfg.log.format, &cfg.log.level);
    let pinned = file.overridden_by(&args);
    if !pinned.is_empty() {
        tracing::warn!(settings = ?pinned, "config file settings overridden by the command line or environment (WSGISCALE_*): changing them in the file has no effect");
    }
    if args.ignore_env {
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        let ignored = Settings::env_vars_in(names.iter().map(String::as_str));
        if !ignored.is_empty() {
            tracing::warn!(
                variables = ?ignored,
                "--ignore-env: these environment variables were ignored; this server's settings come from its command line and config file (its WsgiApp)"
            );
        }
    }
    // One front thread is fastest when the workers need the other cores (the usual case: the
    // front does little per request and cross-thread wake-ups cost more than they save).
    let mut builder = if cfg.front_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.front_threads as usize);
        b
    };
    // The master's sleep is announced to the workers once, when the runtime blocks.
    crate::park::install(&mut builder);
    let runtime = match builder.enable_all().thread_name("wsgiscale").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgiscale: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(server::run(args, cfg)) {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

fn check_venv(venv: &std::path::Path) -> Result<(), String> {
    let version = match launch::get() {
        Launch::Binary => crate::sys::python_version(),
        Launch::Package(p) => Some(p.version),
    };
    match version {
        Some(v) => launch::check_venv(venv, v).map(|_| ()),
        None => Ok(()),
    }
}
