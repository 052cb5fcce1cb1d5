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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wsgiscale")
        .build()
    {
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
