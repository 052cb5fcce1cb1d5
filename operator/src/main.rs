//! `wsgiscale-operator`: the binary. Parses the command line and hands over to the library.

use clap::Parser;
use wsgiscale_operator::cli::{Cli, Command};
use wsgiscale_operator::{crd, run, simulate, telemetry};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => {
            let text = if args.helm_template {
                crd::crd_helm_template()
            } else {
                crd::crd_yaml()
            };
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
        Command::Simulate(args) => {
            let mut out = std::io::stdout().lock();
            simulate::run_cli(&args, &mut out)?;
            Ok(())
        }
        Command::Run(args) => {
            telemetry::init(args.log_format, &args.log_level)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run::run(args))?;
            Ok(())
        }
    }
}
