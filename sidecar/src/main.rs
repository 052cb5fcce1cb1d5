//! `wsgiscale`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use wsgiscale_sidecar::cli::{Cli, Command};
use wsgiscale_sidecar::{logging, server, zygote};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Zygote { control_fd } => {
            ExitCode::from(zygote::main(control_fd).clamp(0, 255) as u8)
        }
        Command::Serve(args) => serve(*args),
    }
}

fn serve(args: wsgiscale_core::config::ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match server::load_config_file(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("wsgiscale: {e}");
                return ExitCode::from(2);
            }
        },
        None => Default::default(),
    };
    let virtual_env = std::env::var_os("VIRTUAL_ENV").map(Into::into);
    let cfg = match wsgiscale_core::config::resolve(&args, &file, virtual_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgiscale: {e}");
            return ExitCode::from(2);
        }
    };
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
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(args, cfg)) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
