//! The one entry point of both ways to run wsgiscale: the standalone binary's `main` and the
//! Python package's console script (through the extension module) call [`main`].

use std::ffi::OsString;

use clap::Parser;
use wsgiscale_core::config::ServeArgs;

use crate::cli::{Cli, Command};
use crate::launch::{self, Launch};
use crate::{logging, server, zygote};

/// Parses `argv` (program name first) and runs the command; returns the exit status.
pub fn main(argv: Vec<OsString>, how: Launch) -> i32 {
    launch::set(how);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Zygote { control_fd } => zygote::main(control_fd).clamp(0, 255),
        Command::Serve(args) => serve(*args),
    }
}

fn serve(args: ServeArgs) -> i32 {
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
    let cfg = match wsgiscale_core::config::resolve(&args, &file, launch::virtual_env()) {
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
    // One front thread is fastest when the workers need the other cores (the usual case: the
    // front does little per request and cross-thread wake-ups cost more than they save).
    let mut builder = if cfg.front_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.front_threads as usize);
        b
    };
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
